"""Exact merging of agents' interval reports, by interval index.

Agents start at one agreed instant and report deltas per interval, so interval ``i`` of the
run is the sum of every agent's interval ``i``: histograms are added bucket by bucket (the
merged histogram is the histogram of all samples; percentiles are never averaged) and counters
are summed.  Reports arrive here checked (runner_reports.AgentStream) with their histograms
still encoded; they are decoded straight into the sums, and a histogram that does not decode
is rolled back with everything else of its report, so a refused report leaves every total
exactly as it was.
"""
import enum
from dataclasses import dataclass, field

from loadgate.native._hdr import Histogram
from loadgate.native.errors import EncodingError, HistogramError
from loadgate.native.outcomes import Outcome
from loadgate.proto.loadgate.v1 import common_pb2

# Outcome as it travels (proto enum number) -> the engine's enum, matched by name.
OUTCOME_OF_WIRE = {
    number: Outcome[common_pb2.Outcome.Name(number).removeprefix("OUTCOME_")]
    for number in common_pb2.Outcome.values()
    if number != common_pb2.OUTCOME_UNSPECIFIED
}
WIRE_OF_OUTCOME = {outcome: number for number, outcome in OUTCOME_OF_WIRE.items()}


class Metric(enum.Enum):
    """The three histograms every target carries per interval (all in microseconds)."""

    LATENCY = "latency"
    SERVICE_TIME = "service_time"
    SCHEDULE_LAG = "schedule_lag"


@dataclass
class TargetTotals:
    """One target's figures over an interval, an agent's share or a merged sum."""

    histograms: dict  # Metric -> Histogram
    outcomes: dict = field(default_factory=dict)  # Outcome -> int
    sent: int = 0
    late: int = 0
    bytes_read: int = 0

    @classmethod
    def empty(cls, layout):
        return cls({metric: layout.empty() for metric in Metric})

    @property
    def completed(self):
        """Requests that ended in the interval, whatever the outcome, except never-sent ones."""
        return sum(n for outcome, n in self.outcomes.items() if outcome is not Outcome.NOT_SENT)

    @property
    def errors(self):
        return sum(n for outcome, n in self.outcomes.items()
                   if outcome not in (Outcome.OK_2XX, Outcome.REDIRECT_3XX, Outcome.NOT_SENT))

    def add(self, other):
        """Adds another TargetTotals (histograms and counters)."""
        for metric, histogram in other.histograms.items():
            self.histograms[metric].add(histogram)
        self.add_counts(other)
        return self

    def add_counts(self, other):
        """Adds the counters of a TargetTotals or TargetShare."""
        for outcome, n in other.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n
        self.sent += other.sent
        self.late += other.late
        self.bytes_read += other.bytes_read

    def add_encoded(self, share):
        """Decodes a share's histograms into these; on the first that does not decode, takes
        back the ones added and returns why (None when all were added)."""
        added = []
        for metric, data in share.encoded.items():
            try:
                self.histograms[metric].decode_and_add(data)
            except (EncodingError, HistogramError) as exc:
                self.remove_encoded(share, added)
                return f"{metric.value} histogram: {exc}"
            added.append(metric)
        return None

    def remove_encoded(self, share, metrics=None):
        """Takes back histograms ``add_encoded`` added (they decoded then, so they do now)."""
        for metric in share.encoded if metrics is None else metrics:
            self.histograms[metric].subtract(Histogram.decode_binary(share.encoded[metric]))


@dataclass
class TargetShare:
    """One target's part of one agent's report, its histograms still encoded."""

    encoded: dict  # Metric -> bytes (HdrHistogram V2 compressed)
    outcomes: dict  # Outcome -> int
    sent: int = 0
    late: int = 0
    bytes_read: int = 0

    @property
    def completed(self):
        return sum(n for outcome, n in self.outcomes.items() if outcome is not Outcome.NOT_SENT)


@dataclass
class MergedInterval:
    """Interval ``index`` summed over the agents that reported it.

    ``start_ns``/``end_ns`` are on the controller's clock (agents' offsets removed).  A
    ``correction`` carries data that arrived after the interval had already been handed out
    (a reconnected agent's backlog); adding it to the earlier one gives the exact interval.
    """

    index: int
    start_ns: int
    end_ns: int
    intended: int
    sent: int
    targets: dict  # name -> TargetTotals
    cpu_seconds: float
    max_lag_us: int
    open_connections: int
    agents: list  # agent ids that reported it (a tuple once handed out)
    missing: tuple  # agent ids expected but absent when it was handed out
    saturated: tuple  # agent ids whose generator fell behind
    telemetry: list  # (agent_id, TelemetrySample)
    correction: bool = False
    discarded: tuple = ()  # agent ids whose report for it was refused (nothing of it is here)
    reporters: set = field(default_factory=set, repr=False)
    # agent id -> the GeneratorHealth of its report; the runner puts it in agent order, with
    # an empty one for each agent that sent none, as it hands the interval out.
    health: dict = field(default_factory=dict, repr=False)

    @classmethod
    def empty(cls, index, target_names, layout):
        return cls(index, 0, 0, 0, 0, {name: TargetTotals.empty(layout) for name in target_names},
                   0.0, 0, 0, [], (), (), [])

    @property
    def completed(self):
        return sum(t.completed for t in self.targets.values())

    @property
    def errors(self):
        return sum(t.errors for t in self.targets.values())

    def add_agent(self, interval, offset_ns):
        """Adds an agent's report; returns why it was refused (None when added)."""
        done = []
        for name, share in interval.targets.items():
            problem = self.targets[name].add_encoded(share)
            if problem:
                for added, added_share in done:
                    self.targets[added].remove_encoded(added_share)
                self._reported(interval.agent_id)
                self.discarded += (interval.agent_id,)
                return f"target {name!r} {problem}"
            done.append((name, share))
        start, end = interval.start_ns - offset_ns, interval.end_ns - offset_ns
        self.start_ns = start if not self.end_ns else min(self.start_ns, start)
        self.end_ns = max(self.end_ns, end)
        self.intended += interval.intended
        self.sent += interval.sent
        for name, share in interval.targets.items():
            self.targets[name].add_counts(share)
        self.cpu_seconds += interval.cpu_seconds
        self.max_lag_us = max(self.max_lag_us, interval.max_lag_us)
        self.open_connections += interval.open_connections
        self._reported(interval.agent_id)
        if interval.saturated:
            self.saturated += (interval.agent_id,)
        self.telemetry.extend((interval.agent_id, sample) for sample in interval.telemetry)
        known = self.health.get(interval.agent_id)
        if known is None:
            self.health[interval.agent_id] = interval.health
        else:
            # A second report for the same interval (a failed run's final one) updates only
            # the figures it carries.
            known.MergeFrom(interval.health)
        return None

    def _reported(self, agent_id):
        self.agents.append(agent_id)
        self.reporters.add(agent_id)


class IntervalMerger:
    """Sums accepted reports by interval index and hands intervals out in order.

    Interval ``i`` is handed out once every agent still expected to report it has: an agent
    stops being expected after its final report or once it is declared lost.  ``release``
    hands out overdue intervals with the absent agents listed in ``missing``; anything that
    arrives later for them comes out as a correction.
    """

    def __init__(self, target_names, agent_ids, layout, offsets_ns=None, totals=None):
        self.target_names = tuple(target_names)
        self.layout = layout
        self.totals = totals  # RunTotals whose histograms grow by each interval handed out
        self.offsets_ns = dict(offsets_ns or {})
        self._expected = set(agent_ids)
        self._last_index = {}  # agent id -> index of its final report
        self._pending = {}  # index -> MergedInterval
        self._released = 0  # every index below this has been handed out

    def add(self, interval):
        """Merges one checked report; returns the intervals that became complete.  A report
        whose histograms do not decode is refused (``interval.refused`` says why) and still
        counts as the agent's report of its interval, so nobody waits for it."""
        offset = self.offsets_ns.get(interval.agent_id, 0)
        if interval.index < self._released:
            merged = MergedInterval.empty(interval.index, self.target_names, self.layout)
            interval.refused = merged.add_agent(interval, offset)
            merged.agents = tuple(merged.agents)
            merged.correction = True
            self._count(merged)
            ready = [merged]
        else:
            merged = self._pending.get(interval.index)
            if merged is None:
                merged = MergedInterval.empty(interval.index, self.target_names, self.layout)
                self._pending[interval.index] = merged
            interval.refused = merged.add_agent(interval, offset)
            ready = []
        if interval.final:
            self._last_index[interval.agent_id] = interval.index
        return ready + self._take_complete()

    def agent_gone(self, agent_id):
        """Stops waiting for an agent (lost); returns the intervals that became complete."""
        self._expected.discard(agent_id)
        return self._take_complete()

    def agent_back(self, agent_id):
        """Waits for an agent again (it answered after being declared lost)."""
        self._expected.add(agent_id)

    def release(self, up_to_index):
        """Hands out every interval up to ``up_to_index`` whether complete or not."""
        ready = []
        while self._released <= up_to_index:
            ready.append(self._hand_out(self._released))
        return ready + self._take_complete()

    def finish(self):
        """Hands out everything still pending (the run is over)."""
        last = max(self._pending, default=self._released - 1)
        return self.release(last)

    @property
    def pending_indices(self):
        return sorted(self._pending)

    def _owed_by(self, index):
        return [agent for agent in self._expected
                if self._last_index.get(agent, index) >= index]

    def _take_complete(self):
        ready = []
        while self._pending:
            merged = self._pending.get(self._released)
            reported = len(merged.reporters) if merged else 0
            # Every expected agent that has not finished owes the interval; comparing counts
            # first keeps this O(1) per report until the interval may be complete.
            if reported < len(self._expected) - len(self._last_index.keys() & self._expected):
                break
            if set(self._owed_by(self._released)) - (merged.reporters if merged else set()):
                break
            ready.append(self._hand_out(self._released))
        return ready

    def _hand_out(self, index):
        merged = self._pending.pop(index, None)
        if merged is None:
            merged = MergedInterval.empty(index, self.target_names, self.layout)
        merged.missing = tuple(sorted(set(self._owed_by(index)) - merged.reporters))
        merged.agents = tuple(merged.agents)
        self._released = index + 1
        self._count(merged)
        return merged

    def _count(self, merged):
        # The run's histograms add whole intervals, not each agent's share: the same sum,
        # with a ninth of the adds.
        if self.totals is not None:
            for name, totals in merged.targets.items():
                for metric, histogram in totals.histograms.items():
                    self.totals.targets[name].histograms[metric].add(histogram)


class RunTotals:
    """The whole run so far: counters of every accepted report, per target and agent, and
    histograms of every interval handed out (so at the end, of everything)."""

    def __init__(self, target_names, layout):
        self.layout = layout
        self.targets = {name: TargetTotals.empty(layout) for name in target_names}
        self.intended = 0
        self.sent = 0
        self.cpu_seconds = 0.0
        self.max_lag_us = 0
        self.saturated_intervals = 0
        self.intervals = 0
        self.per_agent = {}  # agent id -> AgentTotals

    def add(self, interval):
        """Adds a merged report's counters (histograms come with its merged interval)."""
        self.intended += interval.intended
        self.sent += interval.sent
        for name, share in interval.targets.items():
            self.targets[name].add_counts(share)
        self.cpu_seconds += interval.cpu_seconds
        self.max_lag_us = max(self.max_lag_us, interval.max_lag_us)
        self.saturated_intervals += bool(interval.saturated)
        self.intervals += 1
        agent = self.per_agent.setdefault(interval.agent_id, AgentTotals())
        agent.add(interval)

    def discard(self, interval):
        """Notes a refused report: nothing of it is counted, but its agent moved past it."""
        agent = self.per_agent.setdefault(interval.agent_id, AgentTotals())
        agent.pass_over(interval)

    @property
    def completed(self):
        return sum(t.completed for t in self.targets.values())

    def outcomes(self):
        merged = {}
        for totals in self.targets.values():
            for outcome, n in totals.outcomes.items():
                merged[outcome] = merged.get(outcome, 0) + n
        return merged


@dataclass
class AgentTotals:
    """Counters of one agent's accepted reports (histograms live only in the merged totals)."""

    reports: int = 0
    intended: int = 0
    sent: int = 0
    completed: int = 0
    last_seq: int = 0
    last_index: int = -1
    scheduled_total: int = 0
    finished: bool = False
    saturated_intervals: int = 0
    cpu_seconds: float = 0.0
    max_lag_us: int = 0

    def add(self, interval):
        self.reports += 1
        self.intended += interval.intended
        self.sent += interval.sent
        self.completed += sum(t.completed for t in interval.targets.values())
        self.saturated_intervals += bool(interval.saturated)
        self.cpu_seconds += interval.cpu_seconds
        self.max_lag_us = max(self.max_lag_us, interval.max_lag_us)
        self.pass_over(interval)

    def pass_over(self, interval):
        self.last_seq = interval.seq
        self.last_index = interval.index
        if interval.final:
            self.finished = True
            self.scheduled_total = interval.scheduled_total
