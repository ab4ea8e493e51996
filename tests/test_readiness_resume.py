"""A controller process killed mid-ramp resumes from its run directory at the right step, and
a step it was holding goes on with the hold and the samples it had already served."""
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
from loadgate.native.target import start_target_process, stop_target_process
from test_readiness_run import CLI, TARGET, plan_text
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


FIRST_STEP = "canary step 1 (5%)"


def step_records(run_dir, phase, window=FIRST_STEP):
    return [r for r in journal(run_dir) if r["kind"] == "step" and r.get("phase") == phase
            and r.get("window") == window]


def killed_mid_step(tmp_path, plan_path, ticks):
    """A controller that held the first canary step for ``ticks`` ticks of 5 s, then died;
    returns the clock and what its source had measured of the step."""
    clock = FakeClock()
    profiles = {"baseline": Profile(), "canary": Profile()}
    source = SyntheticSource(clock, profiles, seed=5)
    first = Readiness(load_plan(plan_path), tmp_path / "run", source, clock)
    while not step_records(tmp_path / "run", "opened"):
        assert first.tick() is RunStatus.RUNNING
        clock.advance(5.0)
    for _ in range(ticks):
        assert first.tick() is RunStatus.RUNNING
        clock.advance(5.0)
    served = source.collect()
    del first
    clock.advance(20.0)  # the time no controller ran
    return clock, served


def test_a_resumed_step_holds_only_the_rest_and_judges_every_sample(tmp_path):
    plan_path = canary_plan(tmp_path)
    clock, served = killed_mid_step(tmp_path, plan_path, 6)
    hold = classify(load_plan(plan_path)).plan.canary.hold_s
    assert 0 < served.duration_s < hold
    opened = step_records(tmp_path / "run", "opened")[0]["opened"]
    asked = []

    def journaled(start, weights):
        asked.append((start, weights))
        return served if start == opened else None

    source = SyntheticSource(clock, {"baseline": Profile(), "canary": Profile()}, seed=6)
    resumed = Readiness.resume(tmp_path / "run", source, clock, journaled=journaled)
    status = resumed.run(lambda: clock.advance(5.0), 5000)
    assert status is RunStatus.PASSED, resumed.reasons
    assert asked == [(opened, {"baseline": 0.95, "canary": 0.05})]

    [again] = step_records(tmp_path / "run", "resumed")
    carried = served.targets["canary"].latency.total_count
    assert again["carried_s"] == pytest.approx(served.duration_s)
    assert again["carried_samples"] == carried > 0
    assert again["interrupted_at"] == served.end and again["at"] == served.end + 20.0
    [step] = step_records(tmp_path / "run", "canary")
    assert step["status"] == "PASS" and step["resumed"]["carried_s"] == again["carried_s"]
    # The step held on for the rest of its hold, not for a whole one.
    assert step["time"] - again["at"] < hold - served.duration_s + 5.0
    final = step_records(tmp_path / "run", "evaluation")[-1]
    assert final["covered"] >= hold
    latency = [g for g in step["gates"] if g["name"].startswith("canary.latency")]
    assert latency and all(g["samples"] > carried for g in latency)
    # Nothing of the step's shift was done again: it stayed in TESTIRUYETSYA.
    shifted = [(r["evidence"] or {}).get("step") for r in journal(tmp_path / "run")
               if r["kind"] == "transition" and r["time"] >= again["at"]]
    assert 1 not in shifted and 2 in shifted
    verdict = load(tmp_path / "run")
    assert [s["window"] for s in verdict.steps if s.get("phase") == "resumed"] == [FIRST_STEP]


def test_a_resumed_step_that_finds_nothing_journaled_holds_its_whole_hold(tmp_path):
    plan_path = canary_plan(tmp_path)
    clock, _ = killed_mid_step(tmp_path, plan_path, 6)
    hold = classify(load_plan(plan_path)).plan.canary.hold_s
    source = SyntheticSource(clock, {"baseline": Profile(), "canary": Profile()}, seed=6)
    resumed = Readiness.resume(tmp_path / "run", source, clock,
                               journaled=lambda start, weights: None)
    assert resumed.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED, resumed.reasons
    [again] = step_records(tmp_path / "run", "resumed")
    assert again["carried_s"] == 0 and again["carried_samples"] == 0
    [step] = step_records(tmp_path / "run", "canary")
    assert step["time"] - again["at"] >= hold


def test_a_resumed_hook_driven_step_does_not_shift_the_traffic_again(tmp_path):
    shifts = tmp_path / "shifts"
    plan_path = canary_plan(tmp_path)
    with open(plan_path) as handle:
        text = handle.read()
    text = text.replace("canary:\n  hold: 60s\n", "canary:\n  hold: 60s\n  traffic: hook\n")
    text = text.replace("hooks:\n", "hooks:\n  traffic_shift:\n    command: "
                        f"[sh, -c, 'echo \"$LOADGATE_WEIGHT\" >> {shifts}']\n")
    with open(plan_path, "w") as handle:
        handle.write(text)
    clock, served = killed_mid_step(tmp_path, plan_path, 4)
    assert shifts.read_text().split() == ["5"]
    source = SyntheticSource(clock, {"baseline": Profile(), "canary": Profile()}, seed=6)
    resumed = Readiness.resume(tmp_path / "run", source, clock,
                               journaled=lambda start, weights: served)
    assert resumed.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED, resumed.reasons
    assert shifts.read_text().split() == ["5", "25", "50", "100"]
    assert passed_steps(journal(tmp_path / "run")) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def target():
    process, host, port = start_target_process(TARGET)
    try:
        yield f"http://{host}:{port}"
    finally:
        stop_target_process(process)


@pytest.mark.slow
def test_a_killed_loadgate_run_resumes_its_step_with_the_hold_it_had_served(tmp_path, target):
    plan = tmp_path / "plan.yaml"
    hold = 8.0
    plan.write_text(plan_text(target, hold="8s", steps="[50, 100]"))
    run_dir = tmp_path / "run"
    label = "canary step 1 (50%)"
    first = subprocess.Popen(CLI + ["run", str(plan), "--run-dir", str(run_dir), "--workers",
                                    "1", "--no-progress"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and first.poll() is None:
            if os.path.exists(run_dir / "journal.jsonl") and any(
                    r["covered"] >= 3.0 for r in step_records(run_dir, "evaluation", label)):
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(30)
    before = step_records(run_dir, "evaluation", label)
    assert before and before[-1]["covered"] < hold, "killed outside the step's hold"
    assert not step_records(run_dir, "canary", label)

    resumed = subprocess.run(CLI + ["run", "--resume", str(run_dir), "--workers", "1"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [again] = step_records(run_dir, "resumed", label)
    # Every interval the dead controller journaled for the step counts, those it had judged
    # at its last look among them.
    assert again["carried_s"] >= before[-1]["covered"] - 0.5
    assert again["carried_samples"] >= before[-1]["samples"]["canary"] > 0
    [step] = step_records(run_dir, "canary", label)
    assert step["status"] == "PASS" and step["resumed"]["at"] == again["at"]
    # This controller measured only the rest of the hold.
    decided = [r for r in step_records(run_dir, "evaluation", label) if r["time"] >= again["at"]]
    assert decided[-1]["covered"] >= hold
    assert decided[-1]["covered"] - again["carried_s"] < hold - 2.0
    assert decided[-1]["samples"]["canary"] > again["carried_samples"]
    verdict = load(str(run_dir))
    assert verdict.status is VerdictStatus.PASS
    gates = [g for g in verdict.gates if g.window == label and g.name.startswith("canary.")]
    assert gates and max(g.samples for g in gates) > again["carried_samples"]
    assert [s["window"] for s in verdict.steps if s.get("phase") == "resumed"] == [label]
