"""Exact merging of agents' interval reports, by interval index.

Agents start at one agreed instant and report deltas per interval, so interval ``i`` of the
run is the sum of every agent's interval ``i``: histograms are added bucket by bucket (the
merged histogram is the histogram of all samples; percentiles are never averaged) and counters
are summed.  A report is checked completely before anything it carries is merged, and a
rejected report leaves every total exactly as it was: rejections are data (``Rejection``), so
the ingest path never raises on hostile input.

Ingest has three steps the runner keeps in order: ``AgentStream.check`` (decode and validate,
no state changes), journal the accepted report, then ``AgentStream.commit`` and
``IntervalMerger.add``.
"""
import enum
from dataclasses import dataclass, field

from loadgate.native._hdr import Histogram
from loadgate.native.errors import EncodingError, HistogramError
from loadgate.native.outcomes import Outcome
from loadgate.proto.loadgate.v1 import common_pb2

# Outcome as it travels (proto enum number) -> the engine's enum, matched by name.
_OUTCOME_OF_WIRE = {
    number: Outcome[common_pb2.Outcome.Name(number).removeprefix("OUTCOME_")]
    for number in common_pb2.Outcome.values()
    if number != common_pb2.OUTCOME_UNSPECIFIED
}
WIRE_OF_OUTCOME = {outcome: number for number, outcome in _OUTCOME_OF_WIRE.items()}


class Metric(enum.Enum):
    """The three histograms every target carries per interval (all in microseconds)."""

    LATENCY = "latency"
    SERVICE_TIME = "service_time"
    SCHEDULE_LAG = "schedule_lag"


class RejectReason(enum.Enum):
    """Why a report was not merged."""

    MALFORMED = "malformed"
    WRONG_RUN = "wrong_run"
    WRONG_AGENT = "wrong_agent"
    SEQ_REPEAT = "seq_repeat"
    SEQ_GAP = "seq_gap"
    AFTER_FINAL = "after_final"
    INTERVAL_ORDER = "interval_order"
    UNKNOWN_TARGET = "unknown_target"
    DUPLICATE_TARGET = "duplicate_target"
    BAD_OUTCOME = "bad_outcome"
    BAD_HISTOGRAM = "bad_histogram"
    HISTOGRAM_LAYOUT = "histogram_layout"


@dataclass(frozen=True)
class Rejection:
    """A report that was refused, with enough to find it again in the agent's log."""

    agent_id: str
    seq: int
    interval_index: int
    reason: RejectReason
    message: str

    def to_dict(self):
        return {"agent_id": self.agent_id, "seq": self.seq,
                "interval_index": self.interval_index, "reason": self.reason.value,
                "message": self.message}


class HistogramLayout:
    """The histogram parameters of a run, and a pool of empty histograms of that layout.

    Reports are decoded into pooled histograms (``Histogram.decode_and_add``): a fresh
    histogram per decode costs a 188 KB allocation whose page faults outweigh the decode.
    """

    SPARE_LIMIT = 4096  # pooled histograms kept after a burst (about 0.8 GB at most)

    def __init__(self, lowest=1, highest=3_600_000_000, significant_figures=3):
        self.lowest = lowest
        self.highest = highest
        self.significant_figures = significant_figures
        self._spare = []

    def empty(self):
        return Histogram(self.lowest, self.highest, self.significant_figures)

    def matches(self, histogram):
        return (histogram.lowest == self.lowest and histogram.highest == self.highest
                and histogram.significant_figures == self.significant_figures)

    def take(self):
        """An empty histogram of this layout, from the pool when there is one."""
        return self._spare.pop() if self._spare else self.empty()

    def give(self, histograms):
        """Returns histograms to the pool (they are emptied)."""
        for histogram in histograms:
            if len(self._spare) < self.SPARE_LIMIT and self.matches(histogram):
                histogram.reset()
                self._spare.append(histogram)


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
        for metric, histogram in other.histograms.items():
            self.histograms[metric].add(histogram)
        for outcome, n in other.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n
        self.sent += other.sent
        self.late += other.late
        self.bytes_read += other.bytes_read
        return self


@dataclass
class AgentInterval:
    """One accepted report, decoded: an agent's share of one interval."""

    agent_id: str
    seq: int
    index: int
    start_ns: int  # agent wall clock
    end_ns: int
    intended: int
    sent: int
    targets: dict  # name -> TargetTotals
    cpu_seconds: float
    max_lag_us: int
    open_connections: int
    saturated: bool
    telemetry: list  # TelemetrySample messages
    final: bool
    scheduled_total: int

    def release(self, layout):
        """Hands the decoded histograms back to the pool once they are merged."""
        for totals in self.targets.values():
            layout.give(totals.histograms.values())
        self.targets = {}


class AgentStream:
    """The reports of one agent in one run: decodes them and enforces seq and index order."""

    def __init__(self, run_id, agent_id, target_names, layout):
        self.run_id = run_id
        self.agent_id = agent_id
        self.target_names = frozenset(target_names)
        self.layout = layout
        self.last_seq = 0
        self.last_index = -1
        self.finished = False
        self.layout_checked = False

    def check(self, report):
        """The decoded report (AgentInterval) or a Rejection; changes nothing."""
        def reject(reason, message):
            return Rejection(self.agent_id, report.seq, report.interval_index, reason, message)

        if report.run_id != self.run_id:
            return reject(RejectReason.WRONG_RUN,
                          f"report for run {report.run_id!r}, expected {self.run_id!r}")
        if report.agent_id != self.agent_id:
            return reject(RejectReason.WRONG_AGENT,
                          f"report from agent {report.agent_id!r} on {self.agent_id!r}'s stream")
        if self.finished:
            return reject(RejectReason.AFTER_FINAL,
                          f"seq {report.seq} after the final report (seq {self.last_seq})")
        if report.seq <= self.last_seq:
            return reject(RejectReason.SEQ_REPEAT,
                          f"seq {report.seq} repeats (last accepted {self.last_seq})")
        if report.seq != self.last_seq + 1:
            return reject(RejectReason.SEQ_GAP,
                          f"seq {report.seq} skips {report.seq - self.last_seq - 1} report(s) "
                          f"after {self.last_seq}")
        if report.interval_index < self.last_index:
            return reject(RejectReason.INTERVAL_ORDER,
                          f"interval {report.interval_index} after interval {self.last_index}")
        targets = {}
        for target in report.targets:
            problem = self._check_target(target, targets)
            if problem:
                for totals in targets.values():
                    self.layout.give(totals.histograms.values())
                return reject(*problem)
        health = report.health
        return AgentInterval(
            agent_id=self.agent_id, seq=report.seq, index=report.interval_index,
            start_ns=report.start_unix_ns, end_ns=report.end_unix_ns,
            intended=report.intended, sent=report.sent, targets=targets,
            cpu_seconds=health.cpu_seconds, max_lag_us=health.max_lag_us,
            open_connections=health.open_connections, saturated=health.saturated,
            telemetry=list(report.telemetry), final=report.final,
            scheduled_total=report.scheduled_total)

    def _check_target(self, target, decoded):
        # Returns (reason, message) for a bad target and fills ``decoded`` for a good one.
        if target.name not in self.target_names:
            return RejectReason.UNKNOWN_TARGET, f"target {target.name!r} is not in the run"
        if target.name in decoded:
            return RejectReason.DUPLICATE_TARGET, f"target {target.name!r} appears twice"
        histograms = {}
        for metric in Metric:
            problem = self._decode(target.name, metric, getattr(target, metric.value),
                                   histograms)
            if problem:
                self.layout.give(histograms.values())
                return problem
        outcomes = {}
        for entry in target.outcomes:
            outcome = _OUTCOME_OF_WIRE.get(entry.outcome)
            if outcome is None:
                self.layout.give(histograms.values())
                return (RejectReason.BAD_OUTCOME,
                        f"target {target.name!r} has unknown outcome {entry.outcome}")
            outcomes[outcome] = outcomes.get(outcome, 0) + entry.count
        decoded[target.name] = TargetTotals(histograms, outcomes, target.sent, target.late,
                                            target.bytes_read)
        return None

    def _decode(self, name, metric, data, histograms):
        # The first report of a stream is decoded on its own so its layout can be checked;
        # later ones go straight into a pooled histogram of the run's layout.
        if not self.layout_checked:
            try:
                histogram = Histogram.decode_binary(data)
            except (EncodingError, HistogramError) as exc:
                return RejectReason.BAD_HISTOGRAM, f"target {name!r} {metric.value} histogram: {exc}"
            if not self.layout.matches(histogram):
                return (RejectReason.HISTOGRAM_LAYOUT,
                        f"target {name!r} {metric.value} histogram covers "
                        f"{histogram.lowest}..{histogram.highest} at "
                        f"{histogram.significant_figures} digits, the run uses "
                        f"{self.layout.lowest}..{self.layout.highest} at "
                        f"{self.layout.significant_figures}")
        else:
            histogram = self.layout.take()
            try:
                histogram.decode_and_add(data)
            except (EncodingError, HistogramError) as exc:
                self.layout.give([histogram])
                return RejectReason.BAD_HISTOGRAM, f"target {name!r} {metric.value} histogram: {exc}"
        histograms[metric] = histogram
        return None

    def commit(self, interval):
        """Advances the stream past an accepted (and journaled) report."""
        self.last_seq = interval.seq
        self.last_index = interval.index
        self.finished = interval.final
        self.layout_checked = True


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
        start, end = interval.start_ns - offset_ns, interval.end_ns - offset_ns
        self.start_ns = start if not self.agents else min(self.start_ns, start)
        self.end_ns = max(self.end_ns, end)
        self.intended += interval.intended
        self.sent += interval.sent
        for name, totals in interval.targets.items():
            self.targets[name].add(totals)
        self.cpu_seconds += interval.cpu_seconds
        self.max_lag_us = max(self.max_lag_us, interval.max_lag_us)
        self.open_connections += interval.open_connections
        self.agents.append(interval.agent_id)
        if interval.saturated:
            self.saturated += (interval.agent_id,)
        self.telemetry.extend((interval.agent_id, sample) for sample in interval.telemetry)


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
        """Merges one accepted interval; returns the intervals that became complete."""
        offset = self.offsets_ns.get(interval.agent_id, 0)
        if interval.index < self._released:
            merged = MergedInterval.empty(interval.index, self.target_names, self.layout)
            merged.add_agent(interval, offset)
            merged.agents = tuple(merged.agents)
            merged.correction = True
            self._count(merged)
            ready = [merged]
        else:
            merged = self._pending.get(interval.index)
            if merged is None:
                merged = MergedInterval.empty(interval.index, self.target_names, self.layout)
                self._pending[interval.index] = merged
            merged.add_agent(interval, offset)
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
            reported = len(set(merged.agents)) if merged else 0
            # Every expected agent that has not finished owes the interval; comparing counts
            # first keeps this O(1) per report until the interval may be complete.
            if reported < len(self._expected) - len(self._last_index.keys() & self._expected):
                break
            if set(self._owed_by(self._released)) - set(merged.agents if merged else ()):
                break
            ready.append(self._hand_out(self._released))
        return ready

    def _hand_out(self, index):
        merged = self._pending.pop(index, None)
        if merged is None:
            merged = MergedInterval.empty(index, self.target_names, self.layout)
        merged.missing = tuple(sorted(set(self._owed_by(index)) - set(merged.agents)))
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
        """Adds an accepted report's counters (histograms come with its merged interval)."""
        self.intended += interval.intended
        self.sent += interval.sent
        for name, totals in interval.targets.items():
            target = self.targets[name]
            for outcome, n in totals.outcomes.items():
                target.outcomes[outcome] = target.outcomes.get(outcome, 0) + n
            target.sent += totals.sent
            target.late += totals.late
            target.bytes_read += totals.bytes_read
        self.cpu_seconds += interval.cpu_seconds
        self.max_lag_us = max(self.max_lag_us, interval.max_lag_us)
        self.saturated_intervals += bool(interval.saturated)
        self.intervals += 1
        agent = self.per_agent.setdefault(interval.agent_id, AgentTotals())
        agent.add(interval)

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
        self.last_seq = interval.seq
        self.last_index = interval.index
        self.saturated_intervals += bool(interval.saturated)
        self.cpu_seconds += interval.cpu_seconds
        self.max_lag_us = max(self.max_lag_us, interval.max_lag_us)
        if interval.final:
            self.finished = True
            self.scheduled_total = interval.scheduled_total
