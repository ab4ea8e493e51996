"""What the engine reports: per-interval snapshots and the run's result.

Merging is exact: histograms are added bucket by bucket and counters summed, so the merge of
the workers' snapshots is what one worker doing all their work would have recorded.
"""
from dataclasses import dataclass, field

from loadgate.native._hdr import Histogram
from loadgate.native.outcomes import ERRORS, Outcome


def _zero_outcomes():
    return {outcome: 0 for outcome in Outcome}


@dataclass
class TargetInterval:
    """One target's share of an interval.  Histograms are in microseconds."""

    latency: Histogram = field(default_factory=Histogram)
    service_time: Histogram = field(default_factory=Histogram)
    schedule_lag: Histogram = field(default_factory=Histogram)
    outcomes: dict = field(default_factory=_zero_outcomes)
    sent: int = 0
    late: int = 0
    bytes_read: int = 0

    def merge(self, other):
        """Adds ``other`` into this one; returns self."""
        self.latency.add(other.latency)
        self.service_time.add(other.service_time)
        self.schedule_lag.add(other.schedule_lag)
        for outcome, count in other.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count
        self.sent += other.sent
        self.late += other.late
        self.bytes_read += other.bytes_read
        return self

    def copy(self):
        return TargetInterval().merge(self)

    @property
    def completed(self):
        """Requests answered with 2xx or 3xx."""
        return self.outcomes[Outcome.OK_2XX] + self.outcomes[Outcome.REDIRECT_3XX]

    @property
    def errors(self):
        """Requests that ended in an error class (4xx, 5xx, connect, reset, parse)."""
        return sum(self.outcomes[o] for o in ERRORS)

    @property
    def timeouts(self):
        return self.outcomes[Outcome.TIMEOUT]

    @property
    def not_sent(self):
        return self.outcomes[Outcome.NOT_SENT]

    @property
    def finished(self):
        """Requests with any outcome at all: the number the schedule accounted for."""
        return sum(self.outcomes.values())


@dataclass
class IntervalSnapshot:
    """One interval of a run (or, in a RunResult, the whole run).

    ``start_ns``/``end_ns`` are wall-clock (time.time_ns); ``intended`` counts arrivals
    dispatched in the interval; ``cpu_seconds`` is the generator's own CPU time.
    """

    index: int
    start_ns: int
    end_ns: int
    intended: int = 0
    sent: int = 0
    targets: dict = field(default_factory=dict)
    cpu_seconds: float = 0.0
    max_lag_us: int = 0
    open_connections: int = 0
    final: bool = False

    def merge(self, other):
        """Adds ``other`` into this one (histograms added, counters summed, the time span
        widened, max_lag_us the larger); returns self."""
        self.start_ns = min(self.start_ns, other.start_ns)
        self.end_ns = max(self.end_ns, other.end_ns)
        self.intended += other.intended
        self.sent += other.sent
        for name, target in other.targets.items():
            if name in self.targets:
                self.targets[name].merge(target)
            else:
                self.targets[name] = target.copy()
        self.cpu_seconds += other.cpu_seconds
        self.max_lag_us = max(self.max_lag_us, other.max_lag_us)
        self.open_connections += other.open_connections
        return self

    def copy(self):
        empty = IntervalSnapshot(self.index, self.start_ns, self.end_ns, final=self.final)
        return empty.merge(self)

    def combined(self):
        """All targets merged into one TargetInterval."""
        total = TargetInterval()
        for target in self.targets.values():
            total.merge(target)
        return total

    @property
    def duration_s(self):
        return max(self.end_ns - self.start_ns, 0) / 1e9


@dataclass
class RunResult:
    """A finished run.  ``totals`` is the merge of every snapshot; ``scheduled`` the arrivals
    the schedule produced (with any live rate changes), each accounted for by exactly one
    outcome.  ``workers`` holds each worker's own totals; ``worker_errors`` describes workers
    that failed instead of finishing.  Per-interval snapshots are not kept here (a long run
    would grow without bound): LoadRun hands each one out as it is merged."""

    totals: IntervalSnapshot
    scheduled: int
    open_loop: bool
    workers: list = field(default_factory=list)
    worker_scheduled: list = field(default_factory=list)
    worker_errors: list = field(default_factory=list)

    @property
    def duration_s(self):
        return self.totals.duration_s
