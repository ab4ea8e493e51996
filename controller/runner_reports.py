"""Interval reports as the controller receives them: checked, then merged or refused.

A report passes two gates.  ``AgentStream.check``, as it arrives and before it is journaled,
checks everything but the histogram encodings: run, agent, seq and interval order, target
names, outcome codes, and on an agent's first report the histogram layout.  A report refused
there changes nothing, and the runner asks the agent again from the last good seq.  The
histograms are decoded once, straight into the merge, after the report is journaled
(``IntervalMerger.add``): decoding them a second time, or into staging histograms, to check
them first would double the controller's ingest cost.  One that does not decode is rolled
back and the report discarded with its seq consumed; the agent holds the same bytes, so
asking again would not help.  Rejections are data (``Rejection``), never exceptions.
"""
import enum
from dataclasses import dataclass

from loadgate.controller.merge import OUTCOME_OF_WIRE, Metric, TargetShare
from loadgate.native._hdr import Histogram
from loadgate.native.errors import EncodingError, HistogramError


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
    """The histogram parameters of a run; every agent's histograms must match them."""

    def __init__(self, lowest=1, highest=3_600_000_000, significant_figures=3):
        self.lowest = lowest
        self.highest = highest
        self.significant_figures = significant_figures

    def empty(self):
        return Histogram(self.lowest, self.highest, self.significant_figures)

    def matches(self, histogram):
        return (histogram.lowest == self.lowest and histogram.highest == self.highest
                and histogram.significant_figures == self.significant_figures)


@dataclass
class AgentInterval:
    """One accepted report: an agent's share of one interval (histograms still encoded)."""

    agent_id: str
    seq: int
    index: int
    start_ns: int  # agent wall clock
    end_ns: int
    intended: int
    sent: int
    targets: dict  # name -> TargetShare
    cpu_seconds: float
    max_lag_us: int
    open_connections: int
    saturated: bool
    health: object  # the GeneratorHealth the agent reported, every field of it
    telemetry: list  # TelemetrySample messages
    final: bool
    scheduled_total: int
    refused: str = None  # set by the merge when its histograms did not decode


class AgentStream:
    """The reports of one agent in one run: enforces seq and index order (the first gate)."""

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
        """The report as an AgentInterval, or a Rejection; changes nothing."""
        def reject(reason, message):
            return Rejection(self.agent_id, report.seq, report.interval_index, reason, message)

        if report.run_id != self.run_id:
            return reject(RejectReason.WRONG_RUN,
                          f"report for run {report.run_id!r}, expected {self.run_id!r}")
        if report.agent_id != self.agent_id:
            return reject(RejectReason.WRONG_AGENT,
                          f"report from agent {report.agent_id!r} on {self.agent_id!r}'s stream")
        if report.health.agent_id and report.health.agent_id != self.agent_id:
            return reject(RejectReason.WRONG_AGENT,
                          f"health of agent {report.health.agent_id!r} in {self.agent_id!r}'s "
                          "report")
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
                return reject(*problem)
        health = report.health
        return AgentInterval(
            agent_id=self.agent_id, seq=report.seq, index=report.interval_index,
            start_ns=report.start_unix_ns, end_ns=report.end_unix_ns,
            intended=report.intended, sent=report.sent, targets=targets,
            cpu_seconds=health.cpu_seconds, max_lag_us=health.max_lag_us,
            open_connections=health.open_connections, saturated=health.saturated,
            health=health, telemetry=list(report.telemetry), final=report.final,
            scheduled_total=report.scheduled_total)

    def _check_target(self, target, shares):
        # Returns (reason, message) for a bad target and fills ``shares`` for a good one.
        if target.name not in self.target_names:
            return RejectReason.UNKNOWN_TARGET, f"target {target.name!r} is not in the run"
        if target.name in shares:
            return RejectReason.DUPLICATE_TARGET, f"target {target.name!r} appears twice"
        encoded = {metric: getattr(target, metric.value) for metric in Metric}
        if not self.layout_checked:
            for metric, data in encoded.items():
                problem = self._check_layout(target.name, metric, data)
                if problem:
                    return problem
        outcomes = {}
        for entry in target.outcomes:
            outcome = OUTCOME_OF_WIRE.get(entry.outcome)
            if outcome is None:
                return (RejectReason.BAD_OUTCOME,
                        f"target {target.name!r} has unknown outcome {entry.outcome}")
            outcomes[outcome] = outcomes.get(outcome, 0) + entry.count
        shares[target.name] = TargetShare(encoded, outcomes, target.sent, target.late,
                                          target.bytes_read)
        return None

    def _check_layout(self, name, metric, data):
        # Once per agent: a histogram of another layout would be re-bucketed by the merge,
        # which is no longer exact.
        try:
            histogram = Histogram.decode_binary(data)
        except (EncodingError, HistogramError) as exc:
            return RejectReason.BAD_HISTOGRAM, f"target {name!r} {metric.value} histogram: {exc}"
        if self.layout.matches(histogram):
            return None
        return (RejectReason.HISTOGRAM_LAYOUT,
                f"target {name!r} {metric.value} histogram covers "
                f"{histogram.lowest}..{histogram.highest} at {histogram.significant_figures} "
                f"digits, the run uses {self.layout.lowest}..{self.layout.highest} at "
                f"{self.layout.significant_figures}")

    def commit(self, interval):
        """Advances the stream past a report that passed ``check``."""
        self.last_seq = interval.seq
        self.last_index = interval.index
        self.finished = interval.final
        self.layout_checked = True
