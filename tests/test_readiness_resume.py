"""A controller process killed mid-ramp resumes from its run directory at the right step."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from loadgate.controller.classify import classify
from loadgate.controller.journal import JournalError
from loadgate.controller.plan import load_plan
from loadgate.controller.readiness import Readiness
from loadgate.controller.states import Node, Stage, State, SubStage
from loadgate.controller.verdict import RunStatus, VerdictStatus, load
from test_readiness_support import FakeClock, Profile, SyntheticSource, canary_plan

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = textwrap.dedent("""\
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from test_readiness_support import FakeClock, Profile, SyntheticSource
    from loadgate.controller.plan import load_plan
    from loadgate.controller.readiness import Readiness
    clock = FakeClock()
    source = SyntheticSource(clock, {"baseline": Profile(), "canary": Profile()}, seed=3)
    readiness = Readiness(load_plan(sys.argv[2]), sys.argv[3], source, clock)
    def advance():
        clock.advance(5.0)
        time.sleep(0.02)
    readiness.run(advance, 100000)
    """)


def journal(run_dir):
    with open(os.path.join(run_dir, "journal.jsonl"), "rb") as handle:
        lines = handle.read().split(b"\n")[:-1]
    return [json.loads(line) for line in lines]


def passed_steps(records):
    return [r["index"] for r in records if r["kind"] == "step" and r.get("phase") == "canary"
            and r["status"] == "PASS"]


def test_a_controller_killed_mid_ramp_resumes_at_the_next_step(tmp_path):
    plan_path = canary_plan(tmp_path)
    run_dir = str(tmp_path / "run")
    child = subprocess.Popen([sys.executable, "-c", CHILD, HERE, plan_path, run_dir])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(os.path.join(run_dir, "journal.jsonl")) and \
                    len(passed_steps(journal(run_dir))) >= 2:
                break
            assert child.poll() is None, "the controller ended before it was killed"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    before = journal(run_dir)
    done = passed_steps(before)
    assert len(done) >= 2 and done == list(range(len(done)))
    assert not [r for r in before if r["kind"] == "verdict"]
    with open(os.path.join(run_dir, "journal.jsonl"), "ab") as handle:
        handle.write(b'{"kind": "transition", "node": "deployment.sta')

    clock = FakeClock(start=before[-1]["time"] + 1.0)
    source = SyntheticSource(clock, {"baseline": Profile(), "canary": Profile()}, seed=4)
    resumed = Readiness.resume(run_dir, source, clock)
    staging = Node(Stage.DEPLOYMENT, SubStage.STAGING)
    assert resumed.machine.state(staging).imperfective
    assert resumed.machine.state(Node(Stage.PERFORMANCE)) is State.PROVERENO
    status = resumed.run(lambda: clock.advance(5.0), 5000)
    assert status is RunStatus.PASSED, resumed.reasons

    after = journal(run_dir)
    assert after[:len(before)] == before
    assert passed_steps(after) == [0, 1, 2, 3]
    assert len(done) < 4, "killed too late to be mid-ramp"
    first_window = source.windows[0][1]
    steps = classify(load_plan(plan_path)).plan.canary.steps
    assert first_window["canary"] == steps[len(done)] / 100.0
    resumed_transitions = [r for r in after[len(before):] if r["kind"] == "transition"]
    assert not any(r["node"].startswith(("infrastructure", "performance", "monitoring"))
                   for r in resumed_transitions)
    verdict = load(run_dir)
    assert verdict.status is VerdictStatus.PASS
    assert [s["window"] for s in verdict.steps if s.get("phase") == "canary"] == [
        "canary step 1 (5%)", "canary step 2 (25%)", "canary step 3 (50%)",
        "canary step 4 (100%)"]


def test_resume_of_a_finished_run_does_nothing_more(tmp_path):
    clock = FakeClock()
    plan = load_plan(canary_plan(tmp_path))
    first = Readiness(plan, tmp_path / "run", SyntheticSource(clock, {
        "baseline": Profile(), "canary": Profile()}), clock)
    assert first.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED
    length = len(journal(tmp_path / "run"))
    again = Readiness.resume(tmp_path / "run", SyntheticSource(clock, {
        "baseline": Profile(), "canary": Profile()}), clock)
    assert again.tick() is RunStatus.PASSED
    assert len(journal(tmp_path / "run")) == length


def test_a_run_directory_of_another_plan_is_refused(tmp_path):
    clock = FakeClock()
    source = SyntheticSource(clock, {"baseline": Profile(), "canary": Profile()})
    Readiness(load_plan(canary_plan(tmp_path)), tmp_path / "run", source, clock).tick()
    other = load_plan(canary_plan(tmp_path, rate=50, name="other.yaml"))
    with pytest.raises(JournalError, match="another plan"):
        Readiness(other, tmp_path / "run", source, clock)
    with pytest.raises(JournalError, match="no readiness journal"):
        Readiness.resume(tmp_path / "empty", source, clock)


def test_a_resumed_post_deploy_window_only_watches_the_time_left(tmp_path):
    clock = FakeClock()
    profiles = {"baseline": Profile(), "canary": Profile()}
    plan = load_plan(canary_plan(tmp_path, extra="monitoring: {post_deploy_window: 10m}\n"))
    first = Readiness(plan, tmp_path / "run", SyntheticSource(clock, profiles), clock)
    post = Node(Stage.DEPLOYMENT, SubStage.POST_DEPLOY)
    while first.machine.state(post) is not State.MONITORITSYA:
        first.tick()
        clock.advance(5.0)
    began = first.entered(post, State.MONITORITSYA)
    for _ in range(60):
        first.tick()
        clock.advance(5.0)
    del first
    resumed = Readiness.resume(tmp_path / "run", SyntheticSource(clock, profiles, seed=9), clock)
    assert resumed.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED
    assert 600 <= clock() - began <= 600 + 10


def test_a_run_waiting_for_approval_resumes_waiting_and_proceeds_once_approved(tmp_path):
    from loadgate.controller.readiness import approve
    clock = FakeClock()
    profiles = {"baseline": Profile(), "canary": Profile()}
    plan = load_plan(canary_plan(tmp_path, risk="HIGH", extra="""\
        monitoring: {post_deploy_window: 1m}
        overrides: [{key: monitoring.post_deploy_window, reason: short-lived cluster}]
        """))
    first = Readiness(plan, tmp_path / "run", SyntheticSource(clock, profiles), clock)
    assert first.run(lambda: clock.advance(5.0), 5000) is RunStatus.WAITING
    del first
    again = Readiness.resume(tmp_path / "run", SyntheticSource(clock, profiles), clock)
    assert again.run(lambda: clock.advance(5.0), 100) is RunStatus.WAITING
    assert again.machine.state(Node(Stage.DEPLOYMENT, SubStage.STAGING)) is State.OZHIDAET
    approve(tmp_path / "run", "carol", "resumed and approved", clock)
    assert again.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED
    transitions = [r for r in journal(tmp_path / "run") if r["kind"] == "transition"]
    performance = [r for r in transitions if r["node"] == "performance"]
    assert [r["to"] for r in performance] == ["NSV:TESTIRUYETSYA", "SV:PROVERENO"]
