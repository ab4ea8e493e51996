"""`loadgate approve` / `loadgate abort`: against a run directory (the journal record the
orchestrator reads) and against a controller (the Approve/Abort RPCs of a real service)."""
import threading

import pytest

from loadgate.controller import cli
from loadgate.controller.plan import load_plan
from loadgate.controller.readiness import Readiness
from loadgate.controller.service import ControllerService
from loadgate.controller.states import Node, Stage, State, SubStage
from loadgate.controller.verdict import RunStatus, load
from loadgate.proto.loadgate.v1 import controller_pb2
from test_readiness_support import FakeClock, Profile, SyntheticSource, canary_plan
from test_service_support import (RUN_TIMEOUT_S, SYNTHETIC_URLS, Served, high_risk_plan_text,
                                  journal_records, synthetic_sources)

APPROVERS = """\
    monitoring:
      post_deploy_window: 1m
    overrides:
      - key: monitoring.post_deploy_window
        reason: test cluster
    approval:
      approvers: [alice]
    """


def waiting_run(tmp_path):
    clock = FakeClock()
    plan = load_plan(canary_plan(tmp_path, risk="HIGH", extra=APPROVERS))
    source = SyntheticSource(clock, {"baseline": Profile(), "canary": Profile()})
    readiness = Readiness(plan, tmp_path / "run", source, clock)
    assert readiness.run(lambda: clock.advance(5.0), 5000) is RunStatus.WAITING
    return readiness, clock


def decide(*argv):
    return cli.main(list(argv))


def test_approve_against_a_run_dir_lets_the_run_go_on(tmp_path, capsys):
    readiness, clock = waiting_run(tmp_path)
    run_dir = str(tmp_path / "run")
    assert decide("approve", run_dir, "--who", "alice", "--reason", "CAB-42") == 0
    assert "approval recorded" in capsys.readouterr().out
    assert readiness.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED
    decisions = load(run_dir).decisions
    assert [(d["kind"], d["who"], d["why"]) for d in decisions] == [
        ("approval", "alice", "CAB-42")]


def test_approve_by_someone_off_the_approver_list_is_refused_and_not_journaled(tmp_path,
                                                                              capsys):
    readiness, clock = waiting_run(tmp_path)
    run_dir = str(tmp_path / "run")
    assert decide("approve", run_dir, "--who", "mallory", "--reason", "lgtm") == 3
    assert "mallory is not an approver" in capsys.readouterr().err
    assert not [r for r in journal_records(run_dir) if r["kind"] == "approval"]
    clock.advance(60.0)
    assert readiness.tick() is RunStatus.WAITING


def test_abort_against_a_run_dir_ends_the_run_and_a_decided_run_refuses_more(tmp_path,
                                                                             capsys):
    readiness, clock = waiting_run(tmp_path)
    run_dir = str(tmp_path / "run")
    assert decide("abort", run_dir, "--who", "bob", "--reason", "freeze") == 0
    assert readiness.run(lambda: clock.advance(5.0), 5000) is RunStatus.ABORTED
    staging = readiness.machine.state(Node(Stage.DEPLOYMENT, SubStage.STAGING))
    assert staging is not State.RAZVERNUTO
    assert decide("approve", run_dir, "--who", "alice", "--reason", "late") == 3
    assert "the run is over" in capsys.readouterr().err


def test_approve_of_something_that_is_not_a_run_dir_is_a_usage_error(tmp_path, capsys):
    assert decide("approve", str(tmp_path / "nothing"), "--who", "a", "--reason", "b") == 3
    assert "--controller" in capsys.readouterr().err


@pytest.mark.slow
def test_approve_and_abort_through_a_controller(tmp_path, capsys):
    served = Served(ControllerService(tmp_path / "runs", synthetic_sources))
    try:
        info = served.submit(high_risk_plan_text(*SYNTHETIC_URLS))
        managed = served.service.find(info.run_id)
        assert decide("approve", info.run_id, "--who", "alice", "--reason", "early",
                      "--controller", served.address) == 3
        assert "not waiting" in capsys.readouterr().err
        request = controller_pb2.GetRunRequest(run_id=info.run_id)
        for _ in range(RUN_TIMEOUT_S * 10):
            now = served.stub.GetRun(request)
            if now.waiting_for_approval or now.finished:
                break
            threading.Event().wait(0.1)
        assert now.waiting_for_approval, now
        assert decide("approve", info.run_id, "--who", "alice", "--reason", "CAB-7",
                      "--controller", served.address) == 0
        assert decide("abort", info.run_dir, "--who", "bob", "--reason", "enough",
                      "--controller", served.address) == 0
        assert managed.wait(RUN_TIMEOUT_S) is RunStatus.ABORTED
        kinds = [(r["kind"], r.get("who")) for r in journal_records(info.run_dir)
                 if r["kind"] in ("approval", "abort")]
        assert kinds == [("approval", "alice"), ("abort", "bob")]
    finally:
        served.close()
