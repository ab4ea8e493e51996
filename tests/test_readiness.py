"""The orchestrator end to end: canary ramps judged by real histograms, approvals, blocking."""
import json
import os
from dataclasses import replace

from loadgate.controller import gate_cli
from loadgate.controller.gates import (
    MIN_RELATIVE_SAMPLES, GateStatus, error_rate_gate, samples_to_pass)
from loadgate.controller.plan import load_plan
from loadgate.controller.plan_types import GatesPlan
from loadgate.controller.readiness import Readiness, abort, approve
from loadgate.controller.readiness_rollout import hold_early_failures
from loadgate.controller.states import Node, Stage, State, SubStage
from loadgate.controller.verdict import RunStatus, VerdictStatus, load
from test_readiness_support import FakeClock, Profile, SyntheticSource, canary_plan

STAGING = Node(Stage.DEPLOYMENT, SubStage.STAGING)
PRODUCTION = Node(Stage.DEPLOYMENT, SubStage.PRODUCTION)


def start(tmp_path, profiles, run="run", seed=1, **plan_args):
    clock = FakeClock()
    plan = load_plan(canary_plan(tmp_path, **plan_args))
    source = SyntheticSource(clock, profiles, seed=seed)
    return Readiness(plan, tmp_path / run, source, clock), clock, source


def records(run_dir, kind=None, phase=None):
    with open(os.path.join(run_dir, "journal.jsonl")) as handle:
        found = [json.loads(line) for line in handle]
    return [r for r in found if (kind is None or r["kind"] == kind)
            and (phase is None or r.get("phase") == phase)]


def test_a_healthy_canary_is_promoted_to_100_percent(tmp_path):
    readiness, clock, source = start(tmp_path, {"baseline": Profile(), "canary": Profile()})
    status = readiness.run(lambda: clock.advance(5.0), 5000)
    assert status is RunStatus.PASSED, readiness.reasons
    steps = records(tmp_path / "run", "step", "canary")
    assert [(s["weight"], s["status"]) for s in steps] == [
        (5, "PASS"), (25, "PASS"), (50, "PASS"), (100, "PASS")]
    canary_shares = [w.get("canary", 0) for _, w, _ in source.windows]
    assert 0.05 in canary_shares and canary_shares.index(1.0) > canary_shares.index(0.5)
    assert readiness.machine.state(STAGING) is State.RAZVERNUTO
    assert readiness.machine.state(Node(Stage.DEPLOYMENT)) is State.ZAVERSHENO
    assert load(tmp_path / "run").status is VerdictStatus.PASS
    assert not os.path.exists(tmp_path / "rollback-called")
    assert source.stopped


def test_a_canary_whose_p99_regresses_30_percent_under_load_is_rolled_back(tmp_path):
    slow = Profile(slowdown=1.3, slow_above_rps=4.0)
    readiness, clock, _ = start(tmp_path, {"baseline": Profile(), "canary": slow}, rate=100)
    status = readiness.run(lambda: clock.advance(5.0), 5000)
    assert status is RunStatus.FAILED
    run = tmp_path / "run"
    steps = records(run, "step", "canary")
    assert [(s["weight"], s["status"]) for s in steps] == [(5, "FAIL")]
    evaluations = records(run, "step", "evaluation")
    step_one = [e for e in evaluations if e["window"].startswith("canary step 1")]
    assert step_one[-1]["status"] == "FAIL"
    assert all(e["status"] == "INCONCLUSIVE" for e in step_one[:-1])
    assert step_one[-1]["samples"]["canary"] >= MIN_RELATIVE_SAMPLES
    failed = [g for g in load(run).gates if g.status.value == "FAIL"]
    assert failed and all(g.window == "canary step 1 (5%)" for g in failed)
    transitions = [(r["node"], r["to"]) for r in records(run, "transition")]
    assert ("deployment.staging", "AVARIYA") in transitions
    assert transitions.index(("deployment.staging", "OTKAT")) > \
        transitions.index(("deployment.staging", "AVARIYA"))
    assert readiness.machine.state(Node(Stage.DEPLOYMENT)) is State.OTKAT
    assert readiness.machine.state(STAGING).perfective
    with open(tmp_path / "rollback-called") as handle:
        assert handle.read().split() == ["0"]
    assert gate_cli.check(str(run))[0] == gate_cli.ExitCode.FAIL


def test_the_same_canary_below_its_load_threshold_passes_the_first_step(tmp_path):
    slow = Profile(slowdown=1.3, slow_above_rps=100.0)
    readiness, clock, _ = start(tmp_path, {"baseline": Profile(), "canary": slow}, rate=600)
    readiness.run(lambda: clock.advance(5.0), 5000)
    steps = records(tmp_path / "run", "step", "canary")
    assert steps[0]["status"] == "PASS" and steps[0]["weight"] == 5
    assert steps[-1]["status"] == "FAIL" and steps[-1]["weight"] == 25


class StarvedStart(SyntheticSource):
    """The canary process starved of CPU for the first second of every window (3x slower),
    as a freshly shifted or resumed step sees it; healthy afterwards."""

    def collect(self):
        healthy = self.profiles["canary"]
        if self.clock() - self.start <= 1.0:
            self.profiles = {**self.profiles, "canary": replace(healthy, slowdown=3.0)}
        try:
            return super().collect()
        finally:
            self.profiles = {**self.profiles, "canary": healthy}


def starved_run(tmp_path, canary):
    clock = FakeClock()
    plan = load_plan(canary_plan(tmp_path, extra="""\
        gates:
          relative: {ratios: {p50: 1.2}}
        """))
    source = StarvedStart(clock, {"baseline": Profile(), "canary": canary})
    readiness = Readiness(plan, tmp_path / "run", source, clock)
    return readiness, readiness.run(lambda: clock.advance(1.0), 50000)


def test_a_burst_in_a_steps_first_tick_does_not_fail_it(tmp_path):
    readiness, status = starved_run(tmp_path, Profile())
    assert status is RunStatus.PASSED, readiness.reasons
    steps = records(tmp_path / "run", "step", "canary")
    assert [(s["weight"], s["status"]) for s in steps] == [
        (5, "PASS"), (25, "PASS"), (50, "PASS"), (100, "PASS")]
    first = [e for e in records(tmp_path / "run", "step", "evaluation")
             if e["window"].startswith("canary step 1")]
    # The first look (about 50 starved canary samples) is what used to roll the step back.
    assert first[0]["covered"] <= 1.0 and first[0]["status"] == "INCONCLUSIVE"


def test_a_true_regression_fails_once_half_the_hold_and_a_passs_samples_are_in(tmp_path):
    readiness, status = starved_run(tmp_path, Profile(slowdown=1.3))
    assert status is RunStatus.FAILED
    steps = records(tmp_path / "run", "step", "canary")
    assert [(s["weight"], s["status"]) for s in steps] == [(5, "FAIL")]
    evaluations = [e for e in records(tmp_path / "run", "step", "evaluation")
                   if e["window"].startswith("canary step 1")]
    assert evaluations[-1]["status"] == "FAIL" and 30.0 <= evaluations[-1]["covered"] < 40
    assert all(e["status"] == "INCONCLUSIVE" for e in evaluations[:-1])
    assert evaluations[-1]["samples"]["canary"] >= samples_to_pass(readiness.plan.gates)
    assert "on at least 50% of its hold and the samples a PASS needs" in readiness.reasons[0]


def test_a_failed_gate_held_by_the_fail_rule_says_why():
    gates = GatesPlan(confidence=95.0, latency=((99.0, 0.5),))
    failed = error_rate_gate("canary.error_rate", 9, 10, 5.0, 0.95, "canary step 1 (5%)")
    assert failed.status is GateStatus.FAIL
    held, = hold_early_failures([failed], gates, 2.0, 60.0)
    assert held.status is GateStatus.INCONCLUSIVE
    assert held.reason.endswith("not failed yet: a step fails only after 30s (50% of its hold) "
                                "with 299 samples, it has 2s and 10")
    late, = hold_early_failures([failed], gates, 31.0, 60.0)
    assert late.status is GateStatus.INCONCLUSIVE
    enough = error_rate_gate("canary.error_rate", 290, 300, 5.0, 0.95, "canary step 1 (5%)")
    assert hold_early_failures([enough], gates, 31.0, 60.0) == [enough]


def test_too_few_samples_give_inconclusive(tmp_path):
    readiness, clock, _ = start(tmp_path, {"baseline": Profile(), "canary": Profile()},
                                rate=2, duration="10s")
    status = readiness.run(lambda: clock.advance(5.0), 5000)
    assert status is RunStatus.INCONCLUSIVE
    verdict = load(tmp_path / "run")
    assert verdict.status is VerdictStatus.INCONCLUSIVE
    unsure = [g for g in verdict.gates if g.status.value == "INCONCLUSIVE"]
    assert any("needs" in g.reason for g in unsure)
    assert not any(g.status.value == "PASS" and g.name.endswith("latency.p95") and
                   g.samples < 59 for g in verdict.gates)
    assert readiness.machine.state(Node(Stage.PERFORMANCE, SubStage.LATENCY)) is \
        State.TESTIRUYETSYA
    assert gate_cli.check(str(tmp_path / "run"))[0] == gate_cli.ExitCode.INCONCLUSIVE


def test_high_risk_waits_in_ozhidaet_for_a_recorded_approval(tmp_path):
    readiness, clock, _ = start(
        tmp_path, {"baseline": Profile(), "canary": Profile()}, risk="HIGH", hold="60s",
        extra="""\
        monitoring:
          post_deploy_window: 1m
        overrides:
          - key: monitoring.post_deploy_window
            reason: test cluster
        """)
    status = readiness.run(lambda: clock.advance(5.0), 5000)
    assert status is RunStatus.WAITING
    assert readiness.machine.state(STAGING) is State.OZHIDAET
    for _ in range(20):
        clock.advance(60.0)
        assert readiness.tick() is RunStatus.WAITING
    assert not records(tmp_path / "run", "step", "canary")
    code, message = gate_cli.check(str(tmp_path / "run"))
    assert code == gate_cli.ExitCode.INCONCLUSIVE and "no verdict yet" in message
    approve(tmp_path / "run", "alice", "change board CAB-42 approved", clock)
    status = readiness.run(lambda: clock.advance(5.0), 5000)
    assert status is RunStatus.PASSED
    verdict = load(tmp_path / "run")
    assert [(d["kind"], d["who"], d["why"]) for d in verdict.decisions] == [
        ("approval", "alice", "change board CAB-42 approved")]
    assert [o["key"] for o in verdict.overrides] == ["monitoring.post_deploy_window"]
    first_step = records(tmp_path / "run", "step", "canary")[0]
    assert first_step["time"] > verdict.decisions[0]["time"]


def test_production_without_staging_evidence_is_blocked(tmp_path):
    extra = """\
        monitoring:
          alert_rules: alerts.yaml
          dashboard: dashboard.json
        """
    write_monitoring(tmp_path)
    readiness, clock, _ = start(tmp_path, {"baseline": Profile(), "canary": Profile()},
                                environment="PRODUCTION", extra=extra)
    status = readiness.run(lambda: clock.advance(5.0), 5000)
    assert status is RunStatus.BLOCKED
    assert readiness.machine.state(STAGING) is State.ZABLOKIROVANO
    assert readiness.machine.state(Node(Stage.DEPLOYMENT)) is State.ZABLOKIROVANO
    assert readiness.machine.state(PRODUCTION) is State.OZHIDAET
    verdict = load(tmp_path / "run")
    assert verdict.status is VerdictStatus.INCONCLUSIVE
    assert verdict.recommendation == "DO NOT DEPLOY" and verdict.marker == "[ZABLOKIROVANO]"
    assert any("Run the STAGING plan" in step for step in verdict.next_steps)


def test_production_proceeds_on_a_passed_staging_run_of_the_same_deployment(tmp_path):
    staging, clock, _ = start(tmp_path, {"baseline": Profile(), "canary": Profile()},
                              run="staging-run")
    assert staging.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED
    write_monitoring(tmp_path)
    extra = f"""\
        monitoring:
          alert_rules: alerts.yaml
          dashboard: dashboard.json
          post_deploy_window: 2m
        staging_evidence: {tmp_path / "staging-run"}
        """
    production, clock, _ = start(tmp_path, {"baseline": Profile(), "canary": Profile()},
                                 run="prod-run", environment="PRODUCTION", extra=extra,
                                 name="prod.yaml", seed=2)
    status = production.run(lambda: clock.advance(5.0), 5000)
    assert status is RunStatus.WAITING
    assert production.machine.state(STAGING) is State.PROVERENO
    approve(tmp_path / "prod-run", "release-manager", "staging passed", clock)
    assert production.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED
    assert production.machine.state(PRODUCTION) is State.RAZVERNUTO


def write_monitoring(tmp_path):
    (tmp_path / "alerts.yaml").write_text("""\
groups:
  - name: deploy
    interval: 30s
    rules:
      - alert: HighLatency
        expr: histogram_quantile(0.95, sum by (le) (rate(lg_latency_bucket[5m]))) > 0.2
      - alert: HighErrorRate
        expr: sum(rate(loadgate_errors_total[5m])) / sum(rate(loadgate_requests_total[5m])) > 0.05
      - alert: LowThroughput
        expr: sum(rate(loadgate_requests_total[5m])) < 50
      - alert: HighCPU
        expr: avg(loadgate_cpu_utilization) > 0.8
""")
    (tmp_path / "dashboard.json").write_text(json.dumps(
        {"dashboard": {"title": "Deploy", "panels": [{"title": "p95"}, {"title": "errors"}]}}))


def test_an_abort_during_the_ramp_rolls_back_and_is_journaled(tmp_path):
    readiness, clock, _ = start(tmp_path, {"baseline": Profile(), "canary": Profile()})
    for _ in range(400):
        readiness.tick()
        clock.advance(5.0)
        if records(tmp_path / "run", "step", "canary"):
            break
    abort(tmp_path / "run", "bob", "incident INC-7 in progress", clock)
    assert readiness.run(lambda: clock.advance(5.0), 100) is RunStatus.ABORTED
    verdict = load(tmp_path / "run")
    assert verdict.status is VerdictStatus.INCONCLUSIVE
    assert verdict.decisions[0]["who"] == "bob"
    assert readiness.machine.state(Node(Stage.DEPLOYMENT)) is State.OTKAT
    assert os.path.exists(tmp_path / "rollback-called")


def test_only_a_listed_approver_can_approve(tmp_path):
    readiness, clock, _ = start(
        tmp_path, {"baseline": Profile(), "canary": Profile()}, risk="HIGH", extra="""\
        approval:
          approvers: [alice]
        monitoring:
          post_deploy_window: 1m
        overrides:
          - key: monitoring.post_deploy_window
            reason: test cluster
        """)
    assert readiness.run(lambda: clock.advance(5.0), 5000) is RunStatus.WAITING
    approve(tmp_path / "run", "mallory", "looks fine to me", clock)
    assert readiness.run(lambda: clock.advance(5.0), 50) is RunStatus.WAITING
    assert readiness.machine.state(STAGING) is State.OZHIDAET
    approve(tmp_path / "run", "alice", "CAB-43", clock)
    assert readiness.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED
    assert load(tmp_path / "run").decisions[-1]["who"] == "alice"


class LosingSource(SyntheticSource):
    """Loses its agents (an InfrastructureError, as the agent source raises) on demand."""

    lost = False

    def collect(self):
        if self.lost:
            from loadgate.native.errors import InfrastructureError
            raise InfrastructureError("every agent stopped answering")
        return super().collect()


def test_losing_the_measurement_mid_ramp_rolls_back_as_an_infrastructure_error(tmp_path):
    clock = FakeClock()
    source = LosingSource(clock, {"baseline": Profile(), "canary": Profile()})
    readiness = Readiness(load_plan(canary_plan(tmp_path)), tmp_path / "run", source, clock)
    while not records(tmp_path / "run", "step", "canary"):
        readiness.tick()
        clock.advance(5.0)
    source.lost = True
    assert readiness.run(lambda: clock.advance(5.0), 100) is RunStatus.BLOCKED
    assert readiness.machine.state(Node(Stage.DEPLOYMENT)) is State.OTKAT
    assert os.path.exists(tmp_path / "rollback-called")
    code, message = gate_cli.check(str(tmp_path / "run"))
    assert code == gate_cli.ExitCode.INFRASTRUCTURE_ERROR and "stopped answering" in message


def test_losing_the_measurement_before_deploying_blocks_the_running_stage(tmp_path):
    clock = FakeClock()
    source = LosingSource(clock, {"baseline": Profile(), "canary": Profile()})
    source.lost = True
    readiness = Readiness(load_plan(canary_plan(tmp_path)), tmp_path / "run", source, clock)
    assert readiness.run(lambda: clock.advance(5.0), 100) is RunStatus.BLOCKED
    assert readiness.machine.state(Node(Stage.PERFORMANCE)) is State.ZABLOKIROVANO
    assert readiness.machine.state(Node(Stage.PERFORMANCE, SubStage.LATENCY)) is \
        State.ZABLOKIROVANO
    assert gate_cli.check(str(tmp_path / "run"))[0] == gate_cli.ExitCode.INFRASTRUCTURE_ERROR


def test_the_knee_search_finds_the_highest_rate_meeting_the_gates(tmp_path):
    knee_plan = """\
        knee: {start: 200, step: 200, max: 1000, window: 10s}
        """
    slows_down = Profile(slowdown=10.0, slow_above_rps=700.0)
    readiness, clock, source = start(tmp_path, {"baseline": slows_down, "canary": Profile()},
                                     rate=500, extra=knee_plan)
    assert readiness.run(lambda: clock.advance(5.0), 5000) is RunStatus.PASSED, \
        readiness.reasons
    knee = records(tmp_path / "run", "step", "knee")
    assert knee[-1]["summary"]["rate"] == 600
    assert [(p["rate"], p["status"]) for p in knee[:-1]] == [
        (200, "PASS"), (400, "PASS"), (600, "PASS"), (800, "FAIL")]
    verdict = load(tmp_path / "run")
    assert verdict.knee["rate"] == 600 and verdict.knee["stopped_at"] == 800
    assert not [g for g in verdict.gates if g.window.startswith("knee")]
    assert "**Highest rate meeting the latency and error-rate gates**: 600 req/s" in \
        (tmp_path / "run" / "report.md").read_text()
    assert [rate for _, _, rate in source.windows][2:6] == [200, 400, 600, 800]
