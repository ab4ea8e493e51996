"""Structure-aware fuzzing of the plan parser.

test_plan.py throws arbitrary text at the parser, which mostly stops at the YAML layer.  Here
hypothesis starts from every example plan in examples/ and mutates its document tree
(values replaced by other types, hostile numbers, unit strings and deep nesting; keys
dropped, renamed or added) before dumping it back to YAML, so the mutations reach the
plan's validation.  Every result is either a valid Plan or a PlanError whose every issue
names the file and a line in it; anything else (a traceback) fails.  Fixed seed and budget."""
import copy
import glob
import math
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from loadgate.controller.plan import Plan, PlanError, parse_plan

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(HERE), "examples", "*.yaml")))

SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(-2 ** 70, 2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "0", "-1", "1e309", "nan", "5ms", "-5s", "1h", "10%", "200%", "1 GiB",
                     "http://", "http://[::1", "ftp://127.0.0.1/", "CANARY", "canary",
                     "SV:ZAVERSHENO", "p95", "99.999%", "2025-13-45T99:00:00", "\u0000",
                     "a" * 300]),
    st.text(max_size=20),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def paths(node, prefix=()):
    """Every path to a node of a document tree (dict keys and list indexes)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, prefix + (index,))


def parent_of(document, path):
    node = document
    for step in path[:-1]:
        node = node[step]
    return node


@st.composite
def mutated_plans(draw):
    with open(draw(st.sampled_from(EXAMPLES))) as f:
        document = yaml.safe_load(f)
    for _ in range(draw(st.integers(1, 4))):
        candidates = [p for p in paths(document) if p]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = parent_of(document, path)
        action = draw(st.sampled_from(["replace", "drop", "rename", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "drop":
            del parent[path[-1]]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = parent.pop(path[-1])
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(VALUES)
        else:
            parent.append(copy.deepcopy(draw(VALUES)))
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


@settings(derandomize=True, max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated_plans())
def test_mutated_plans_load_or_give_located_errors(text):
    lines = text.count("\n") + 1
    try:
        plan = parse_plan(text, "mutated.yaml")
    except PlanError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.file == "mutated.yaml" and issue.message
            assert 1 <= issue.line <= lines, (issue, text)
    else:
        assert isinstance(plan, Plan)
        assert all(math.isfinite(x) for x in _numbers(plan.load.__dict__))


def _numbers(mapping):
    return [v for v in mapping.values() if isinstance(v, float)]


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_the_unmutated_examples_are_valid(path):
    with open(path) as f:
        assert isinstance(parse_plan(f.read(), path), Plan)


FORBIDDEN = [chr(c) for c in [*range(0, 9), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xFFFE]]


@settings(derandomize=True, max_examples=60, deadline=None, database=None)
@given(data=st.data())
def test_a_character_yaml_forbids_is_located_at_its_line(data):
    """Found by benchmarks/fuzz_long.py (atheris): YAML's reader refuses such characters
    with an error that carries no mark, which became an issue at line 0."""
    with open(data.draw(st.sampled_from(EXAMPLES))) as f:
        text = f.read()
    position = data.draw(st.integers(0, len(text)))
    bad = data.draw(st.sampled_from(FORBIDDEN))
    with pytest.raises(PlanError) as info:
        parse_plan(text[:position] + bad + text[position:], "control.yaml")
    line = text.count("\n", 0, position) + 1
    assert [issue.line for issue in info.value.issues] == [line]
