"""The readiness orchestrator's MeasurementSource over real agents (runner_source): windows of
load with given weights and rate, merged per-target histograms, counters and telemetry."""
import time
from dataclasses import replace

import pytest

from test_controller_run import FAKE_GPU, real_agents, real_target
from loadgate.controller.gates import min_samples_for_percentile
from loadgate.controller.plan import parse_plan
from loadgate.controller.readiness import Readiness
from loadgate.controller.runner_session import RunStatus
from loadgate.controller.runner_source import AgentMeasurementSource, rtt_samples
from loadgate.controller.states import Node, Stage, State, SubStage
from loadgate.controller.verdict import RunStatus as ReadinessStatus


def canary_plan(url):
    return parse_plan(f"""
apiVersion: loadgate/v1
deployment: {{id: SOURCE-TEST, type: FEATURE, risk: LOW, environment: DEV, strategy: CANARY}}
targets:
  - {{name: baseline, url: "{url}/", role: baseline}}
  - {{name: canary, url: "{url}/canary", role: canary, weight: 0}}
load: {{rate: 200, duration: 10s, interval: 500ms, connections: 2, timeout: 2s}}
canary: {{steps: [25, 100], hold: 1s}}
""", "source-test.yaml")


def wait_for_requests(source, name, count, timeout=15.0, telemetry=False):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        window = source.collect()
        if window.targets[name].requests >= count and (window.telemetry or not telemetry):
            return window
        time.sleep(0.1)
    raise AssertionError(f"{name} got fewer than {count} requests (or no telemetry) in "
                         f"{timeout} s")


@pytest.mark.slow
def test_windows_of_load_with_weights_and_rates(tmp_path):
    with real_target() as (url, requests_seen), real_agents(2, fake_nvml=FAKE_GPU) as agents:
        source = AgentMeasurementSource(canary_plan(url), [a.address for a in agents],
                                        str(tmp_path / "load"), workers_per_agent=1)
        try:
            capacity = source.describe()
            assert capacity.agents == 2 and capacity.cpu_cores >= 2
            assert [g.name for g in capacity.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
            rtt = source.measure_rtt(samples=5)
            assert rtt["baseline"].total_count == 5 and rtt["canary"].total_count == 5

            source.start_window({"baseline": 0.75, "canary": 0.25}, 200)
            first = wait_for_requests(source, "canary", 20, telemetry=True)
            assert first.targets["baseline"].requests > first.targets["canary"].requests
            baseline = first.targets["baseline"]
            assert baseline.latency.total_count == baseline.requests
            assert baseline.outcomes.get("2xx") == baseline.requests and baseline.errors == 0
            assert first.telemetry and all(s.gpu_utilization == 37 for s in first.telemetry)

            source.start_window({"baseline": 0.0, "canary": 1.0}, 100)
            second = wait_for_requests(source, "canary", 40)
            # A new window starts empty: nothing from before the change is in it.
            assert second.start > first.start
            # (an engine may have handed out a few arrivals under the old split already)
            assert second.targets["baseline"].requests <= 0.05 * second.targets["canary"].requests
            assert second.targets["canary"].intended_rps > 0
            run = source.run
        finally:
            source.stop()
        assert run.status is RunStatus.STOPPED
        summary = run.summary()
        assert summary["load"]["completed"] == requests_seen()
        assert all(a["rate_scale"] == pytest.approx(0.5) for a in summary["agents"])


def network_plan(url, rtt_p95):
    return parse_plan(f"""
apiVersion: loadgate/v1
deployment: {{id: RTT-TEST, type: FEATURE, risk: LOW, environment: DEV, strategy: BIG-BANG}}
targets:
  - {{name: main, url: "{url}/"}}
load: {{rate: 50, duration: 2s, interval: 500ms, connections: 2, timeout: 2s}}
infrastructure: {{network: {{rtt_p95: {rtt_p95}}}}}
downtime_window: {{start: "2025-01-01T00:00:00+00:00", end: "2025-01-01T01:00:00+00:00"}}
""", "rtt-test.yaml")


def judge_network(tmp_path, url, agent, rtt_p95):
    """Ticks a readiness run over the real source until Network Configuration is decided;
    returns (its state, the run's status, its reasons)."""
    plan = network_plan(url, rtt_p95)
    source = AgentMeasurementSource(plan, [agent.address], str(tmp_path / "load"),
                                    workers_per_agent=1)
    readiness = Readiness(plan, tmp_path / "run", source)
    network = Node(Stage.INFRASTRUCTURE, SubStage.NETWORK)
    try:
        for _ in range(20):
            status = readiness.tick()
            if status.final or readiness.machine.state(network) is State.PROVERENO:
                break
    finally:
        source.stop()
    return readiness.machine.state(network), status, readiness.reasons


def test_an_rtt_p95_requirement_is_decided_at_network_configuration(tmp_path):
    """The connect times are enough for the minimum-sample rule: a limit far above loopback's
    round trip passes, one below it fails (blocked), neither is inconclusive."""
    with real_target() as (url, _), real_agents(1) as agents:
        state, status, reasons = judge_network(tmp_path / "loose", url, agents[0], "1s")
        assert state is State.PROVERENO, reasons
        assert status is ReadinessStatus.RUNNING, reasons
        state, status, reasons = judge_network(tmp_path / "tight", url, agents[0], "1us")
        assert state is State.ZABLOKIROVANO, reasons
        assert status is ReadinessStatus.BLOCKED, reasons
        assert "main.rtt.p95" in " ".join(reasons)


@pytest.mark.parametrize("confidence, at_least", [(None, 200), (99.99, 2 * 180)])
def test_rtt_samples_cover_the_minimum_sample_rule(confidence, at_least):
    plan = network_plan("http://127.0.0.1:9", "10ms")
    plan = replace(plan, gates=replace(plan.gates, confidence=confidence))
    needed = min_samples_for_percentile(95.0, (confidence or 95.0) / 100.0)
    assert rtt_samples(plan) >= max(at_least, 2 * needed)
