"""The readiness procedure on real parts: `loadgate target` baseline and canary processes, a
real `loadgate agent`, the agents' MeasurementSource (runner_source), wall-clock time.

LOW risk keeps the CPU saturation gate out: on this shared 2-core machine the node running
targets, agent and controller is saturated by design, and that gate would (rightly) fail.
For the same reason two identical target processes do not get identical CPU (a starved one
shows p99 stalls several times the other's): the relative gates here tolerate a 15-point
shift and a 10x p99, and judge the regression (a 40 % shift of the whole distribution) by
the Mann-Whitney test."""
import json
import os
import textwrap
import time

import pytest

from agent_helpers import start_agent
from loadgate.controller import gate_cli
from loadgate.controller.plan import load_plan
from loadgate.controller.readiness import Readiness
from loadgate.controller.runner_source import AgentMeasurementSource
from loadgate.controller.verdict import RunStatus, load
from loadgate.native.target import start_target_process, stop_target_process

BASELINE = ["--latency", "lognormal:4ms:0.3", "--seed", "1"]
HEALTHY = ["--latency", "lognormal:4ms:0.3", "--seed", "2"]
# 40 % slower once the canary sees 100 req/s: the first step (25 % of 600) already does.
REGRESSED = HEALTHY + ["--load-latency", "40%@100rps"]


def write_plan(tmp_path, baseline_url, canary_url):
    marker = tmp_path / "rolled-back"
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: loadgate/v1
        deployment:
          id: DEPLOY-AGENTS-1
          type: FEATURE
          risk: LOW
          environment: DEV
          strategy: CANARY
        targets:
          - {{name: baseline, url: "{baseline_url}", role: baseline}}
          - {{name: canary, url: "{canary_url}", role: canary, weight: 0}}
        load:
          rate: 600
          duration: 3s
          connections: 16
          interval: 500ms
          timeout: 2s
        gates:
          latency: {{p95: 200ms}}
          relative: {{test: mann-whitney, min_effect: 15%, ratios: {{p99: 10}}}}
        canary:
          steps: [25, 50, 100]
          hold: 2s
          max_hold: 30s
        monitoring:
          post_deploy_window: 2s
        hooks:
          rollback: {{command: [sh, -c, 'echo "$LOADGATE_WEIGHT" > {marker}']}}
        """))
    return load_plan(str(path))


def run_readiness(tmp_path, canary_args):
    baseline = start_target_process(BASELINE)
    canary = start_target_process(canary_args)
    agent = start_agent(["--workers", "1"])
    try:
        plan = write_plan(tmp_path, f"http://{baseline[1]}:{baseline[2]}",
                          f"http://{canary[1]}:{canary[2]}")
        source = AgentMeasurementSource(plan, [agent.address], str(tmp_path / "load"))
        readiness = Readiness(plan, tmp_path / "run", source)
        status = readiness.run(lambda: time.sleep(0.25), 2000)
        return readiness, status
    finally:
        agent.stop()
        stop_target_process(canary[0])
        stop_target_process(baseline[0])


def canary_steps(run_dir):
    with open(os.path.join(run_dir, "journal.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return [(r["weight"], r["status"]) for r in records
            if r["kind"] == "step" and r.get("phase") == "canary"]


@pytest.mark.slow
def test_real_agents_promote_a_healthy_canary(tmp_path):
    readiness, status = run_readiness(tmp_path, HEALTHY)
    assert status is RunStatus.PASSED, readiness.reasons
    assert canary_steps(tmp_path / "run") == [(25, "PASS"), (50, "PASS"), (100, "PASS")]
    verdict = load(tmp_path / "run")
    p95 = next(g for g in verdict.gates if g.name == "baseline.latency.p95")
    assert 3.0 < p95.measured <= p95.upper <= 200.0 and p95.samples > 1000
    assert gate_cli.check(str(tmp_path / "run"))[0] == gate_cli.ExitCode.PASS


@pytest.mark.slow
def test_real_agents_roll_back_a_canary_that_slows_under_load(tmp_path):
    readiness, status = run_readiness(tmp_path, REGRESSED)
    assert status is RunStatus.FAILED, readiness.reasons
    assert canary_steps(tmp_path / "run") == [(25, "FAIL")], readiness.reasons
    assert (tmp_path / "rolled-back").read_text().split() == ["0"]
    failed = [g for g in load(tmp_path / "run").gates if g.status.value == "FAIL"]
    assert failed and {g.window for g in failed} == {"canary step 1 (25%)"}
    assert gate_cli.check(str(tmp_path / "run"))[0] == gate_cli.ExitCode.FAIL


def write_slow_plan(tmp_path, baseline_url, canary_url):
    path = tmp_path / "slow.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: loadgate/v1
        deployment:
          id: DEPLOY-SLOW-1
          type: FEATURE
          risk: LOW
          environment: DEV
          strategy: CANARY
        targets:
          - {{name: baseline, url: "{baseline_url}", role: baseline}}
          - {{name: canary, url: "{canary_url}", role: canary, weight: 0}}
        load:
          rate: 800
          duration: 4s
          connections: 128
          interval: 250ms
          timeout: 2s
        gates:
          latency: {{p95: 400ms}}
          throughput: {{min_ratio: 95%}}
        canary:
          steps: [100]
          hold: 3s
          max_hold: 9s
        monitoring:
          post_deploy_window: 3s
        hooks:
          rollback: {{command: [sh, -c, 'echo "$LOADGATE_WEIGHT" > {tmp_path / "rolled-back"}']}}
        """))
    return load_plan(str(path))


@pytest.mark.slow
def test_a_healthy_target_answering_in_100_ms_meets_its_throughput_floor(tmp_path):
    targets = [start_target_process(["--latency", "100ms"]) for _ in range(2)]
    agent = start_agent(["--workers", "1"])
    try:
        plan = write_slow_plan(tmp_path, *(f"http://{t[1]}:{t[2]}" for t in targets))
        source = AgentMeasurementSource(plan, [agent.address], str(tmp_path / "load"))
        readiness = Readiness(plan, tmp_path / "run", source)
        status = readiness.run(lambda: time.sleep(0.25), 400)
    finally:
        agent.stop()
        for target in targets:
            stop_target_process(target[0])
    assert status is RunStatus.PASSED, readiness.reasons
    assert canary_steps(tmp_path / "run") == [(100, "PASS")]
    throughput = [g for g in load(tmp_path / "run").gates if g.name == "throughput.min_ratio"]
    assert throughput and all(g.status.value == "PASS" for g in throughput), throughput
    # The first window starts with the load: its last 100 ms of arrivals are in flight.
    assert throughput[0].window == "performance" and "in flight" in throughput[0].reason
