"""The plan format: strict validation with locations, round trips, schema agreement, CLI."""
import glob
import io
import json
import os
import textwrap

import jsonschema
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from loadgate.controller import plan_cli
from loadgate.controller.plan import Plan, PlanError, load_plan, parse_plan
from loadgate.controller.plan_format import plan_json_schema
from loadgate.controller.plan_model import Arrival, Risk, Strategy, TargetRole
from loadgate.controller.plan_units import parse_duration, parse_percent, parse_size
from loadgate.native.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml")))

GOOD = textwrap.dedent("""\
    apiVersion: loadgate/v1
    deployment:
      id: DEPLOY-1
      type: FEATURE
      risk: MEDIUM
      environment: DEV
      strategy: CANARY
    targets:
      - name: baseline
        url: http://127.0.0.1:8081
        role: baseline
      - name: canary
        url: http://127.0.0.1:8082
        role: canary
    load:
      rate: 200
      duration: 30s
    """)


def issues_of(text, name="plan.yaml"):
    with pytest.raises(PlanError) as caught:
        parse_plan(text, name)
    return caught.value.issues


def test_a_good_plan_loads_with_enums_and_canonical_units():
    plan = parse_plan(GOOD + "gates:\n  latency: {p99.9: 250ms}\n  error_rate: '0.5%'\n",
                      "good.yaml")
    assert plan.deployment.strategy is Strategy.CANARY
    assert plan.deployment.risk is Risk.MEDIUM
    assert plan.target(TargetRole.CANARY).url == "http://127.0.0.1:8082"
    assert plan.load.duration_s == 30.0 and plan.load.arrival is Arrival.CONSTANT
    assert plan.gates.latency == ((99.9, 0.25),)
    assert plan.gates.error_rate == 0.5


def test_several_errors_are_reported_at_once_with_line_and_key_path():
    text = GOOD.replace("type: FEATURE", "type: FEATUR").replace(
        "  rate: 200", "  rate: -5").replace("duration: 30s", "duration: 30 sec")
    text += textwrap.dedent("""\
        gates:
          latency: {p101: 150ms}
          error_rate: 105%
          colour: red
        canary:
          steps: [5, 50, 25, 100]
        """)
    issues = issues_of(text)
    found = {(i.key_path, i.line) for i in issues}
    assert ("deployment.type", 4) in found
    assert ("load.rate", 16) in found
    assert ("load.duration", 17) in found
    assert ("gates.latency.p101", 19) in found
    assert ("gates.error_rate", 20) in found
    assert ("gates.colour", 21) in found
    assert ("canary.steps[2]", 23) in found
    assert all(i.file == "plan.yaml" and i.column > 0 for i in issues)
    text_form = str(PlanError(issues))
    assert "plan.yaml:19:" in text_form and "p101" in text_form
    assert "canary weights must increase: 25% follows 50%" in text_form


def test_an_unknown_key_suggests_the_known_one():
    issues = issues_of(GOOD.replace("  rate: 200", "  rat: 200"))
    assert any(i.key_path == "load.rat" and "did you mean 'rate'" in i.message for i in issues)


@pytest.mark.parametrize("replacement, key, words", [
    ("  rate: 200", "load.rate", "greater than 0"),
    ("  duration: 30s", "load.duration", "expected a duration"),
    ("    url: http://127.0.0.1:8081", "targets[0].url", "does not match"),
    ("  risk: MEDIUM", "deployment.risk", "expected one of HIGH, MEDIUM, LOW"),
])
def test_wrong_types_and_impossible_values(replacement, key, words):
    bad = {"  rate: 200": "  rate: -1", "  duration: 30s": "  duration: [30]",
           "    url: http://127.0.0.1:8081": "    url: ftp://x",
           "  risk: MEDIUM": "  risk: EXTREME"}[replacement]
    issues = issues_of(GOOD.replace(replacement, bad))
    assert any(i.key_path == key and words in i.message for i in issues), issues


def test_duplicate_keys_and_yaml_syntax_errors_are_located():
    issues = issues_of(GOOD + "load:\n  rate: 1\n")
    assert any(i.key_path == "load" and "duplicate" in i.message and i.line == 18
               for i in issues)
    issues = issues_of(GOOD + "gates: {latency: [\n")
    assert issues[0].message.startswith("YAML syntax")


def test_classification_requirements_are_plan_errors():
    text = GOOD.replace("strategy: CANARY", "strategy: BIG-BANG")
    issues = issues_of(text)
    assert any(i.key_path == "downtime_window" and "BIG-BANG" in i.message for i in issues)
    text = GOOD.replace("strategy: CANARY", "strategy: BLUE-GREEN")
    paths = {i.key_path for i in issues_of(text)}
    assert {"hooks.switch", "hooks.rollback"} <= paths
    text = GOOD.replace("type: FEATURE", "type: MIGRATION")
    assert any(i.key_path == "rollback.script" for i in issues_of(text))


def test_loosening_a_high_risk_default_needs_a_reported_override():
    high = GOOD.replace("risk: MEDIUM", "risk: HIGH")
    loose = high + "monitoring:\n  post_deploy_window: 1h\n"
    issues = issues_of(loose)
    assert any(i.key_path == "monitoring.post_deploy_window" and "overrides" in i.message
               and i.line == 19 for i in issues)
    allowed = loose + ("overrides:\n  - key: monitoring.post_deploy_window\n"
                       "    reason: dev cluster is torn down nightly\n")
    plan = parse_plan(allowed, "p.yaml")
    from loadgate.controller.classify import Disposition, classify
    result = classify(plan)
    loosened = [d for d in result.decisions if d.disposition is Disposition.LOOSENED]
    assert [d.key for d in loosened] == ["monitoring.post_deploy_window"]
    assert loosened[0].override_reason == "dev cluster is torn down nightly"
    assert any("loosened" in w for w in result.warnings)
    tight = parse_plan(high + "monitoring:\n  post_deploy_window: 48h\n", "t.yaml")
    assert classify(tight).plan.monitoring.post_deploy_window_s == 48 * 3600


def test_a_knee_search_must_go_up():
    issues = issues_of(GOOD + "knee: {start: 500, step: 100, max: 200}\n")
    assert any(i.key_path == "knee.max" and "below start" in i.message for i in issues)
    knee = parse_plan(GOOD + "knee: {start: 100, step: 50, max: 400}\n", "k.yaml").knee
    assert (knee.start, knee.step, knee.max, knee.window_s) == (100, 50, 400, 10.0)


def test_an_override_of_something_that_is_not_a_default_is_an_error():
    issues = issues_of(GOOD + "overrides:\n  - {key: load.rate, reason: because}\n")
    assert any(i.key_path == "overrides[0].key" for i in issues)


def test_from_dict_round_trip_is_exact_and_validates():
    for path in EXAMPLES:
        plan = load_plan(path)
        data = plan.to_dict()
        again = Plan.from_dict(json.loads(json.dumps(data)))
        assert again == plan
        assert Plan.from_dict(yaml.safe_load(yaml.safe_dump(data, sort_keys=False))) == plan
    broken = load_plan(EXAMPLES[0]).to_dict()
    broken["load"]["rate"] = "fast"
    with pytest.raises(ConfigError):
        Plan.from_dict(broken)


def test_every_example_is_valid_and_there_is_one_per_strategy():
    strategies = {load_plan(path).deployment.strategy for path in EXAMPLES}
    assert strategies == set(Strategy)
    assert any(os.path.basename(p) == "local-demo.yaml" for p in EXAMPLES)


def test_published_schema_is_the_generated_one_and_agrees_with_the_validator():
    with open(os.path.join(ROOT, "controller", "schema", "plan.schema.json")) as handle:
        published = json.load(handle)
    assert published == plan_json_schema()
    validator = jsonschema.Draft202012Validator(published)
    for path in EXAMPLES:
        with open(path) as handle:
            assert list(validator.iter_errors(yaml.safe_load(handle))) == []
    for bad in ({"apiVersion": "loadgate/v2"}, {"load": {"rate": -1}},
                {"gates": {"latency": {"p95": "fast"}}}, {"colour": "red"}):
        document = yaml.safe_load(GOOD)
        for key, value in bad.items():
            merge = isinstance(value, dict) and isinstance(document.get(key), dict)
            document[key] = {**document[key], **value} if merge else value
        assert list(validator.iter_errors(document)), bad
        with pytest.raises(PlanError):
            Plan.from_dict(document)


@pytest.mark.parametrize("text, seconds", [("200ms", 0.2), ("30s", 30), ("5m", 300),
                                           ("24h", 86400), ("1h30m", 5400), (2, 2.0),
                                           ("250us", 0.00025)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_percents_and_sizes():
    assert parse_percent("5%") == 5.0 and parse_percent(99.9) == 99.9
    assert parse_size("80GB") == 80 * 10**9 and parse_size("512MiB") == 512 * 2**20
    for bad in ("101%", "-1%", "five"):
        with pytest.raises(ValueError):
            parse_percent(bad)
    with pytest.raises(ValueError):
        parse_duration("-5s")


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) |
                    st.dictionaries(st.sampled_from(["load", "rate", "targets", "gates", "p99",
                                                     "deployment", "id", "x"]), inner,
                                    max_size=4), max_leaves=12))
def test_arbitrary_documents_give_located_errors_never_a_traceback(document):
    base = yaml.safe_load(GOOD)
    if isinstance(document, dict):
        base.update(document)
    text = yaml.safe_dump(base)
    try:
        parse_plan(text, "fuzz.yaml")
    except PlanError as exc:
        assert exc.issues and all(issue.line >= 0 for issue in exc.issues)


def test_plan_validate_and_explain_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("  rate: 200", "  rate: -5"))
    out = io.StringIO()

    class Args:
        files = [EXAMPLES[0], str(bad)]
    assert plan_cli.run_validate(Args, out) == 3
    assert f"{bad}:16:3: load.rate: must be greater than 0" in out.getvalue()
    assert "valid (" in out.getvalue()

    class Explain:
        file = os.path.join(ROOT, "examples", "canary.yaml")
    out = io.StringIO()
    assert plan_cli.run_explain(Explain, out) == 0
    text = out.getvalue()
    for expected in ("Deployment Execution → [SV:RAZVERNUTO]", "waits in [OZHIDAET]",
                     "5% → 25% → 50% → 100%", "monitoring.post_deploy_window = 24h",
                     "why: seed: HIGH gate requirement is manual approval + 24hr monitoring",
                     "gates.latency.p95 = 200ms  [as the default]"):
        assert expected in text, expected


def test_the_load_plan_gives_its_arrival_schedule():
    plan = parse_plan(GOOD.replace("  rate: 200", "  rate: 200\n  arrival: poisson\n  seed: 7"),
                      "s.yaml")
    schedule = plan.load.schedule()
    assert (schedule.rate, schedule.duration_s, schedule.seed) == (200, 30.0, 7)
    assert abs(schedule.total_count() - 6000) < 6 * 6000 ** 0.5
    steps = parse_plan(GOOD.replace("  rate: 200\n", "  arrival: steps\n  steps: "
                                    "[{rate: 10, duration: 5s}, {rate: 20, duration: 2s}]\n"),
                       "s.yaml").load.schedule()
    assert steps.total_count() == 10 * 5 + 20 * 2


def test_a_low_risk_plan_that_asks_for_relative_gates_gets_their_defaults():
    from loadgate.controller.classify import classify
    from loadgate.controller.plan_model import RelativeTest
    low = GOOD.replace("risk: MEDIUM", "risk: LOW")
    assert classify(parse_plan(low, "l.yaml")).plan.gates.relative is None
    asked = classify(parse_plan(low + "gates:\n  relative: {test: ks}\n", "l.yaml")).plan
    assert asked.gates.relative.test is RelativeTest.KS
    assert asked.gates.relative.ratios == ((99.0, 1.2),) and asked.gates.relative.alpha == 1.0


@pytest.mark.parametrize("risk", ["LOW", "MEDIUM"])
def test_below_high_risk_a_plans_own_ratios_replace_the_default_set(tmp_path, risk):
    from loadgate.controller.classify import Disposition, classify
    text = GOOD.replace("risk: MEDIUM", f"risk: {risk}") + \
        "gates:\n  relative: {ratios: {p50: 1.1}}\n"
    result = classify(parse_plan(text, "r.yaml"))
    assert result.plan.gates.relative.ratios == ((50.0, 1.1),)
    p99 = next(d for d in result.decisions if d.key == "gates.relative.ratios.p99")
    assert p99.disposition is Disposition.REPLACED and p99.value is None
    assert not any("ratios" in w for w in result.warnings)
    path = tmp_path / "r.yaml"
    path.write_text(text)

    class Explain:
        file = str(path)
    out = io.StringIO()
    assert plan_cli.run_explain(Explain, out) == 0
    assert "gates.relative.ratios.p99 = left out  [replaced: below HIGH risk the plan's " \
           "relative.ratios are the whole set (default 1.2)]" in out.getvalue()
    named = classify(parse_plan(text.replace("{p50: 1.1}", "{p50: 1.1, p99: 1.1}"), "n.yaml"))
    assert named.plan.gates.relative.ratios == ((50.0, 1.1), (99.0, 1.1))
    assert classify(parse_plan(text.replace("{p50: 1.1}", "{}"), "e.yaml")).plan.gates \
        .relative.ratios == ((99.0, 1.2),)


def test_at_high_risk_a_plans_own_ratios_keep_the_default_p99_ratio():
    from loadgate.controller.classify import Disposition, classify
    text = GOOD.replace("risk: MEDIUM", "risk: HIGH") + \
        "gates:\n  relative: {ratios: {p50: 1.1}}\n"
    result = classify(parse_plan(text, "h.yaml"))
    assert result.plan.gates.relative.ratios == ((50.0, 1.1), (99.0, 1.2))
    p99 = next(d for d in result.decisions if d.key == "gates.relative.ratios.p99")
    assert p99.disposition is Disposition.FILLED
    loose = text.replace("{p50: 1.1}", "{p50: 1.1, p99: 1.5}")
    assert any(i.key_path == "gates.relative.ratios.p99" and "overrides" in i.message
               for i in issues_of(loose))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abpr: -\n\t{}[]'\"!&*%@,?#|>0123456789.")),
               max_size=80))
def test_arbitrary_text_gives_plan_errors_never_a_traceback(text):
    try:
        parse_plan(GOOD + text, "fuzz.yaml")
    except PlanError as exc:
        assert exc.issues and all(issue.file == "fuzz.yaml" for issue in exc.issues)


@pytest.mark.parametrize("hostile, words", [
    ("x: !!timestamp 2020-99-99\n", "bad value"),
    ("x: &a [*a]\n", "recursive"),
    ("gates: {latency: {p95: .nan}}\n", "finite"),
    ("? [a, b]\n: 1\n", "mapping keys must be scalars"),
    ("".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "x"] * 9) + "]\n"
             for i in range(9)), "larger than"),
])
def test_hostile_yaml_is_a_located_plan_error(hostile, words):
    issues = issues_of(GOOD + hostile)
    assert any(words in issue.message and issue.line >= 18 for issue in issues), issues


def test_the_cli_exits_3_on_a_bad_plan_and_prints_the_schema(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("risk: MEDIUM", "risk: SEVERE"))
    command = [sys.executable, "-m", "loadgate.controller.cli", "plan"]
    done = subprocess.run(command + ["validate", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3 and f"{bad}:5:3: deployment.risk:" in done.stdout
    done = subprocess.run(command + ["schema"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout) == plan_json_schema()
