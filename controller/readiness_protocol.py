"""What the readiness orchestrator needs from the measuring side, and what it gets back.

The orchestrator (readiness.py) is the judge; a ``MeasurementSource`` is the actor that
offers load and measures.  The run engineer implements it over real agents (gRPC); tests
implement it with real histograms filled from chosen distributions.  The protocol:

``describe() -> Capacity``
    What the load generators' nodes offer (from agent telemetry): CPU cores, memory, GPUs.
``measure_rtt() -> dict[target name, Histogram]``
    Round-trip times (µs) to each target, e.g. TCP connect times from every agent.  Take at
    least 100 per target: the network gate's "RTT p95" claim needs 59 samples at 95 %
    confidence (gates.min_samples_for_percentile) and is INCONCLUSIVE below that.
``start_window(weights: dict[target name, float], rate: float) -> None``
    From now on, offer ``rate`` requests/s split across targets by ``weights`` (fractions
    summing to 1; a canary step of 25 % is {"baseline": 0.75, "canary": 0.25}).  A window
    accumulates until the next ``start_window``; calling it again starts a fresh window.
``collect() -> WindowMeasurement``
    Everything measured since ``start_window`` (cumulative within the window, so the
    orchestrator can judge a step on all its evidence): per-target latency histograms (µs,
    intended-start based, merged across agents), outcome counts, intended and achieved rate,
    telemetry samples.  Cheap enough to call every tick.
``stop() -> None``
    Stop offering load.

Metrics the orchestrator reads from a ``TelemetrySample`` are percents (0..100).
"""
from dataclasses import dataclass, field
from typing import Mapping, Protocol


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class Capacity:
    cpu_cores: int
    memory_bytes: int
    gpus: tuple = ()
    agents: int = 1
    gpu_unavailable_reason: str = None


@dataclass(frozen=True)
class TelemetrySample:
    """One sample of the generator/target nodes; None where not measured."""

    time: float
    cpu: float = None
    gpu_utilization: float = None
    sm_activity: float = None
    gpu_memory: float = None


@dataclass(frozen=True)
class TargetWindow:
    """One target's measurements over a window.  ``latency`` is an HDR Histogram in µs."""

    name: str
    latency: object
    requests: int
    errors: int
    intended_rps: float
    achieved_rps: float
    outcomes: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class WindowMeasurement:
    start: float
    end: float
    targets: Mapping
    telemetry: tuple = ()

    @property
    def duration_s(self):
        return max(0.0, self.end - self.start)

    def total(self):
        """(requests, errors, intended rps, achieved rps) summed over targets."""
        return (sum(t.requests for t in self.targets.values()),
                sum(t.errors for t in self.targets.values()),
                sum(t.intended_rps for t in self.targets.values()),
                sum(t.achieved_rps for t in self.targets.values()))


class MeasurementSource(Protocol):
    def describe(self) -> Capacity: ...

    def measure_rtt(self) -> Mapping: ...

    def start_window(self, weights: Mapping, rate: float) -> None: ...

    def collect(self) -> WindowMeasurement: ...

    def stop(self) -> None: ...
