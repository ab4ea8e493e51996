"""The state machine: every pair of states tried, legal ones journaled, illegal ones refused."""
import itertools
import json

import pytest

from loadgate.controller.journal import FileJournal, JournalError, read_journal
from loadgate.controller.states import (
    NSV, SV, TRANSITIONS, IllegalTransition, Node, Rule, Stage, State, StateMachine, SubStage)

GRAPH = ((Stage.INFRASTRUCTURE, (SubStage.CAPACITY, SubStage.ENVIRONMENT)),
         (Stage.PERFORMANCE, (SubStage.LATENCY,)))
PARENT = Node(Stage.INFRASTRUCTURE)
FIRST = Node(Stage.INFRASTRUCTURE, SubStage.CAPACITY)
SUBJECT = Node(Stage.INFRASTRUCTURE, SubStage.ENVIRONMENT)

# How to bring SUBJECT from OZHIDAET to each state by legal transitions.
PATHS = {State.OZHIDAET: ()}
PATHS.update({s: (s,) for s in NSV})
PATHS.update({s: (State.VYPOLNYAETSYA, s) for s in SV})
PATHS[State.ZABLOKIROVANO] = (State.ZABLOKIROVANO,)
PATHS[State.AVARIYA] = (State.VYPOLNYAETSYA, State.AVARIYA)
PATHS[State.OTKAT] = (State.VYPOLNYAETSYA, State.AVARIYA, State.OTKAT)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 1.0
        return self.now


def machine_at(tmp_path, state, name):
    journal = FileJournal(tmp_path / f"{name}.jsonl")
    machine = StateMachine(GRAPH, journal, Clock())
    machine.transition(PARENT, State.V_PROTSESSE, "start")
    machine.transition(FIRST, State.V_PROTSESSE, "start")
    machine.transition(FIRST, State.ZAVERSHENO, "done")
    for step in PATHS[state]:
        machine.transition(SUBJECT, step, f"to {step.value}")
    assert machine.state(SUBJECT) is state
    return machine, journal


def test_the_twelve_states_carry_the_seed_markers():
    assert {s.value for s in State} == {
        "SV:ZAVERSHENO", "SV:PROVERENO", "SV:ODOBRENO", "SV:RAZVERNUTO", "NSV:V_PROTSESSE",
        "NSV:VYPOLNYAETSYA", "NSV:TESTIRUYETSYA", "NSV:MONITORITSYA", "ZABLOKIROVANO",
        "OZHIDAET", "OTKAT", "AVARIYA"}
    assert State.ZAVERSHENO.marker == "[SV:ZAVERSHENO]"


@pytest.mark.parametrize("source, target", list(itertools.product(State, State)))
def test_every_pair_is_either_journaled_or_refused(tmp_path, source, target):
    machine, journal = machine_at(tmp_path, source, "pair")
    before = list(journal.records())
    rule = TRANSITIONS.get((source, target))
    guarded = rule is Rule.CASCADE or (rule is Rule.RESTORE and target is not State.ZAVERSHENO)
    if rule is None or guarded:
        with pytest.raises(IllegalTransition):
            machine.transition(SUBJECT, target, "try")
        assert machine.state(SUBJECT) is source
        assert list(journal.records()) == before
        return
    record = machine.transition(SUBJECT, target, "why", {"p99_ms": 12.5})
    after = list(journal.records())
    assert after[:-1] == before and after[-1] == record
    assert record["from"] == source.value and record["to"] == target.value
    assert record["node"] == SUBJECT.key and record["reason"] == "why"
    assert record["evidence"] == {"p99_ms": 12.5} and record["rule"] == rule.name
    assert record["time"] > 100.0


def test_sequential_progression_is_enforced(tmp_path):
    machine = StateMachine(GRAPH, FileJournal(tmp_path / "j.jsonl"), Clock())
    with pytest.raises(IllegalTransition, match="cannot start while"):
        machine.transition(FIRST, State.V_PROTSESSE, "parent not running")
    machine.transition(PARENT, State.V_PROTSESSE, "go")
    with pytest.raises(IllegalTransition, match="before infrastructure.capacity is SV"):
        machine.transition(SUBJECT, State.V_PROTSESSE, "sibling first")
    with pytest.raises(IllegalTransition, match="before infrastructure is SV"):
        machine.transition(Node(Stage.PERFORMANCE), State.TESTIRUYETSYA, "stage order")
    machine.transition(FIRST, State.V_PROTSESSE, "go")
    with pytest.raises(IllegalTransition, match="are not SV"):
        machine.transition(PARENT, State.ZAVERSHENO, "children unfinished")
    machine.transition(FIRST, State.ZAVERSHENO, "done")
    machine.transition(SUBJECT, State.VYPOLNYAETSYA, "go")
    machine.transition(SUBJECT, State.PROVERENO, "done")
    machine.transition(PARENT, State.ZAVERSHENO, "all children SV")
    machine.transition(Node(Stage.PERFORMANCE), State.TESTIRUYETSYA, "next stage")


def test_rollback_returns_to_the_previous_sv(tmp_path):
    machine, _ = machine_at(tmp_path, State.OTKAT, "rb")
    assert machine.previous_sv(SUBJECT) is State.ZAVERSHENO
    with pytest.raises(IllegalTransition, match="previous SV"):
        machine.transition(SUBJECT, State.RAZVERNUTO, "not the previous one")
    machine.transition(SUBJECT, State.ZAVERSHENO, "restored")


def test_a_blocked_parent_puts_running_children_in_ozhidaet(tmp_path):
    journal = FileJournal(tmp_path / "j.jsonl")
    machine = StateMachine(GRAPH, journal, Clock())
    machine.transition(PARENT, State.V_PROTSESSE, "go")
    machine.transition(FIRST, State.VYPOLNYAETSYA, "go")
    machine.transition(PARENT, State.ZABLOKIROVANO, "capacity missing")
    assert machine.state(FIRST) is State.OZHIDAET
    records = list(journal.records())
    assert [(r["node"], r["to"], r["rule"]) for r in records[-2:]] == [
        ("infrastructure", "ZABLOKIROVANO", "BLOCK"),
        ("infrastructure.capacity", "OZHIDAET", "CASCADE")]
    with pytest.raises(IllegalTransition, match="parent is ZABLOKIROVANO"):
        other = StateMachine(GRAPH, FileJournal(tmp_path / "k.jsonl"), Clock())
        other.transition(PARENT, State.V_PROTSESSE, "go")
        other.transition(FIRST, State.VYPOLNYAETSYA, "go")
        other.transition(FIRST, State.OZHIDAET, "no cascade without a blocked parent")


def test_deployed_goes_on_to_monitoring_only(tmp_path):
    machine, _ = machine_at(tmp_path, State.RAZVERNUTO, "dep")
    for target in State:
        if target not in (State.MONITORITSYA, State.AVARIYA):
            with pytest.raises(IllegalTransition):
                machine.transition(SUBJECT, target, "no")
    machine.transition(SUBJECT, State.MONITORITSYA, "monitoring loop")


def test_replay_rebuilds_the_same_states_and_rejects_a_forged_journal(tmp_path):
    machine, journal = machine_at(tmp_path, State.OTKAT, "replay")
    fresh = StateMachine(GRAPH, FileJournal(tmp_path / "unused.jsonl"), Clock())
    for record in journal.records():
        fresh.replay(record)
    assert fresh.snapshot() == machine.snapshot()
    forged = {"node": SUBJECT.key, "from": "OZHIDAET", "to": "SV:RAZVERNUTO"}
    with pytest.raises(IllegalTransition):
        StateMachine(GRAPH, FileJournal(tmp_path / "f.jsonl"), Clock()).replay(forged)


def test_journal_survives_a_torn_last_line_and_refuses_damage(tmp_path):
    path = tmp_path / "journal.jsonl"
    with FileJournal(path) as journal:
        journal.append({"kind": "transition", "n": 1})
        journal.append({"kind": "transition", "n": 2})
    with open(path, "ab") as handle:
        handle.write(b'{"kind": "transition", "n": 3, "tor')
    assert [r["n"] for r in read_journal(path)] == [1, 2]
    with FileJournal(path) as journal:
        journal.append({"kind": "transition", "n": 4})
        assert [r["n"] for r in journal.records()] == [1, 2, 4]
    lines = path.read_bytes().split(b"\n")
    assert json.loads(lines[2]) == {"kind": "transition", "n": 4}
    path.write_bytes(b'{"n": 1}\nnot json\n{"n": 2}\n')
    with pytest.raises(JournalError, match=":2: damaged"):
        list(read_journal(path))


def test_an_unusable_journal_path_is_an_infrastructure_error(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(JournalError, match="cannot open journal"):
        FileJournal(not_a_directory / "journal.jsonl")


def test_journal_records_are_strict_json(tmp_path):
    with FileJournal(tmp_path / "j.jsonl") as journal:
        journal.append({"kind": "step", "measured": float("nan"), "list": [float("inf"), 1.5]})
        assert list(journal.records()) == [{"kind": "step", "measured": None,
                                            "list": [None, 1.5]}]
    assert "NaN" not in (tmp_path / "j.jsonl").read_text()
