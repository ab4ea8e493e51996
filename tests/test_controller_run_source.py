"""The readiness orchestrator's MeasurementSource over real agents (runner_source): windows of
load with given weights and rate, merged per-target histograms, counters and telemetry."""
import time

import pytest

from test_controller_run import FAKE_GPU, real_agents, real_target
from loadgate.controller.plan import parse_plan
from loadgate.controller.runner_session import RunStatus
from loadgate.controller.runner_source import AgentMeasurementSource


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
