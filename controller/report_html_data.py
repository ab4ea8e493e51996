"""What report.html draws, read from a run directory that may be partial.

Two layouts exist: a plain load run (``loadgate run``: journal of reports, ``hlog/``,
``telemetry.jsonl``, ``summary.json``) and a readiness run (journal of transitions and
steps, ``verdict.json``) whose load lives in ``load/`` beside it (the controller service's
layout).  Every file is optional: a run still in progress has no summary or verdict, an
aborted one may have no hlog lines.  What cannot be read becomes a line in ``missing``
rather than an exception, so the report always says what it could not show and why.
"""
import io
import json
import math
import os
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from loadgate.controller import journal as readiness_journal
from loadgate.controller import run_journal
from loadgate.controller.merge import OUTCOME_OF_WIRE, Metric
from loadgate.controller.rundir import HLOG_DIR, JOURNAL, SUMMARY_JSON, TELEMETRY, hlog_name
from loadgate.controller.verdict import SCHEMA_VERSION as VERDICT_SCHEMA
from loadgate.native.errors import LoadgateError
from loadgate.native.hlog import read_hlog
from loadgate.native.outcomes import Outcome
from loadgate.proto.loadgate.v1 import common_pb2

LOAD_SUBDIR = "load"
MAX_POINTS = 600  # per line over time: about one per two pixels of a chart
TIME_PERCENTILES = (50.0, 90.0, 99.0)
VERDICT_JSON = "verdict.json"
_READINESS_KINDS = frozenset(kind.value for kind in readiness_journal.RecordKind)
_RUN_KINDS = frozenset(kind.value for kind in run_journal.RecordKind)


@dataclass
class LatencyPoint:
    """One point of latency over time: an interval, or consecutive intervals added together."""

    start: float  # epoch seconds
    end: float
    count: int
    values: tuple  # µs at TIME_PERCENTILES; empty when count is 0


@dataclass
class TargetIntervals:
    """One target's latency from its hlogs: points over time and the merged histogram.

    Interval histograms are not kept (an hour at 0.5 s holds 7200 of them, ~180 kB each):
    each is read, added to its point's and the total histogram, and let go."""

    points: list = field(default_factory=list)  # LatencyPoint in time order
    total: object = None  # every interval added: the run's merged latency histogram


@dataclass
class IntervalCounts:
    """Requests that ended in one interval, summed over the agents' accepted reports."""

    start: float  # epoch seconds on the controller's clock
    end: float
    intended: int = 0
    by_target: dict = field(default_factory=dict)  # target -> {Outcome: count}


@dataclass
class Window:
    """A judged window of the readiness run (a canary step, the performance window ...)."""

    label: str
    start: float
    end: float
    status: str


@dataclass
class LoadRun:
    """One load run directory: a readiness run resumed by another controller has several."""

    path: str
    run_id: str = None
    summary: dict = None
    status: str = None  # how it ended ("in progress" without a FINISHED record)
    interval_s: float = None


@dataclass
class RunData:
    path: str
    readiness: bool = False  # a readiness journal or verdict.json is there, readable or not
    loads: list = field(default_factory=list)  # LoadRun, oldest first
    verdict: dict = None
    plan: dict = None
    transitions: list = field(default_factory=list)
    windows: list = field(default_factory=list)
    targets: dict = field(default_factory=dict)  # name -> TargetIntervals
    counts: list = field(default_factory=list)  # IntervalCounts in time order
    telemetry: list = field(default_factory=list)  # telemetry.jsonl records
    missing: list = field(default_factory=list)  # what could not be shown, and why

    @property
    def summary(self):
        """summary.json when one load run holds the whole run (else totals come from the
        merged hlogs of every load run)."""
        return self.loads[0].summary if len(self.loads) == 1 else None

    @property
    def origin(self):
        """The instant every time axis counts from (epoch seconds), or None with no times."""
        candidates = [t.points[0].start for t in self.targets.values() if t.points]
        candidates += [c.start for c in self.counts[:1]]
        candidates += [r["time"] for r in self.transitions[:1]]
        candidates += [int(r["unix_ns"]) / 1e9 for r in self.telemetry[:1] if "unix_ns" in r]
        return min(candidates) if candidates else None


def load_run(run_dir, load_dir=None):
    """The RunData of ``run_dir``; ``load_dir`` names the load run when it is not
    ``run_dir/load`` or ``run_dir`` itself.  Never raises for missing or damaged files."""
    path = os.path.abspath(os.fspath(run_dir))
    data = RunData(path)
    kinds = _journal_kinds(os.path.join(path, JOURNAL), data)
    data.readiness = bool(kinds & _READINESS_KINDS) or \
        os.path.exists(os.path.join(path, VERDICT_JSON))
    if data.readiness:
        _read_readiness(data)
    if load_dir is not None:
        paths = [os.path.abspath(os.fspath(load_dir))]
    elif kinds & _RUN_KINDS or os.path.isdir(os.path.join(path, HLOG_DIR)):
        paths = [path]
    else:
        paths = _load_subdirs(path)
    if not paths:
        data.missing.append("no load run in this directory (no hlog/ and no load/): "
                            "no latency, throughput, error or telemetry charts")
    for load in paths:
        _read_load(data, LoadRun(load), len(paths) > 1)
    if not data.readiness:
        data.missing.append("no readiness journal or verdict.json: a plain load run has no "
                            "verdict, gates or stage timeline")
    return data


def _load_subdirs(path):
    """load/, load-2/, load-3/ ...: each controller that resumed the run measured anew."""
    found = []
    try:
        names = os.listdir(path)
    except OSError:
        return found
    for name in names:
        head, _, number = name.partition("-")
        if head == LOAD_SUBDIR and (not number or number.isdigit()) and \
                os.path.isdir(os.path.join(path, name)):
            found.append((int(number or 1), os.path.join(path, name)))
    return [p for _, p in sorted(found)]


def _journal_kinds(path, data):
    kinds = set()
    try:
        with open(path, "rb") as handle:
            for line in handle:
                try:
                    kinds.add(json.loads(line).get("kind"))
                except (ValueError, AttributeError):
                    continue
                break
    except FileNotFoundError:
        pass
    except OSError as exc:
        data.missing.append(f"{JOURNAL}: {exc.strerror}")
    return kinds


def _read_json(path, data, what, where=""):
    """The JSON object in path, or None with the reason added to ``missing``."""
    name = where + os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        data.missing.append(f"no {name}: {what}")
        return None
    except (OSError, ValueError) as exc:
        data.missing.append(f"{name} is unreadable ({exc}): {what}")
        return None
    if not isinstance(value, dict):
        data.missing.append(f"{name} does not hold a JSON object: {what}")
        return None
    return value


def _read_readiness(data):
    data.verdict = _read_json(os.path.join(data.path, VERDICT_JSON), data,
                              "the run has no verdict yet (still running, or it was killed)")
    if data.verdict is not None and data.verdict.get("schema_version") != VERDICT_SCHEMA:
        data.missing.append(f"{VERDICT_JSON} has schema_version "
                            f"{data.verdict.get('schema_version')!r}, not {VERDICT_SCHEMA}: "
                            "its verdict and gates are not shown")
        data.verdict = None
    try:
        records = list(readiness_journal.read_journal(os.path.join(data.path, JOURNAL)))
    except LoadgateError as exc:
        data.missing.append(f"the readiness journal is damaged: {exc}")
        records = []
    kind = readiness_journal.RecordKind
    data.transitions = [r for r in records if r.get("kind") == kind.TRANSITION.value]
    plans = [r["plan"] for r in records if r.get("kind") == kind.PLAN.value and "plan" in r]
    data.plan = (data.verdict or {}).get("plan") or (plans[-1] if plans else None)
    data.windows = _windows(records)


def _windows(records):
    """Each judged window from its step record; it began when its first evaluation did."""
    step, evaluation = readiness_journal.RecordKind.STEP.value, \
        readiness_journal.StepPhase.EVALUATION.value
    phase = readiness_journal.StepPhase
    skipped = (evaluation, phase.APPROVAL.value, phase.RESUMED.value)
    began = {}
    last_change = None
    windows = []
    for record in records:
        if record.get("kind") == readiness_journal.RecordKind.TRANSITION.value:
            last_change = record["time"]
        if record.get("kind") != step:
            continue
        label = record.get("window")
        if record.get("phase") == phase.OPENED.value:
            began[label] = record["time"]
            continue
        if record.get("phase") == evaluation:
            began.setdefault(label, record["time"] - record.get("elapsed", 0.0))
            continue
        if record.get("phase") in skipped or "summary" in record:
            continue  # the knee search's closing summary spans no window of its own
        start = began.pop(label, last_change if last_change is not None else record["time"])
        windows.append(Window(label or record.get("phase"), start, record["time"],
                              record.get("status", "")))
    return windows


def _read_load(data, load, several):
    where = f"{os.path.basename(load.path)}/" if several else ""
    data.loads.append(load)
    load.summary = _read_json(os.path.join(load.path, SUMMARY_JSON), data,
                              "the load run has not finished (no totals; figures below come "
                              "from the intervals merged so far)", where)
    run = _read_json(os.path.join(load.path, "run.json"), data, "target names and the "
                     "interval length are taken from the hlog files instead", where)
    names = [t["name"] for t in (run or {}).get("definition", {}).get("targets", ())]
    if run:
        load.run_id = run.get("run_id")
        load.interval_s = run.get("definition", {}).get("interval_s")
    if not names and load.summary:
        names = list(load.summary.get("targets", {}))
    if not names:
        suffix = f".{Metric.LATENCY.value}.hlog"
        try:
            names = sorted(n[:-len(suffix)] for n in os.listdir(os.path.join(load.path,
                                                                                HLOG_DIR))
                           if n.endswith(suffix))
        except OSError:
            names = []
    firsts = [_read_target(load.path, name, data.targets.setdefault(name, TargetIntervals()),
                           data, where) for name in names]
    _read_counts(data, load, min(filter(None, firsts), default=0.0), where)
    _read_telemetry(data, load.path, where)


def group_size(count):
    """How many consecutive intervals one point over time adds up for ``count`` of them."""
    return max(1, math.ceil(count / MAX_POINTS))


def _read_target(load, name, result, data, where):
    """Adds the target's intervals in ``load`` to ``result``; returns the first one's start
    (None if none).  Long logs are grouped: a point's percentiles are read from the exact
    sum of its intervals' histograms, never averaged."""
    path = os.path.join(load, HLOG_DIR, hlog_name(name, Metric.LATENCY))
    read, first, group, group_start, last_end = 0, None, None, None, None
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
        # A run still writing may have a torn last line: only complete lines are intervals.
        text = text[:text.rfind("\n") + 1]
        size = group_size(sum(1 for line in text.splitlines() if line[:1] not in ("", "#", '"')))
        for _, start, end, histogram in read_hlog(io.StringIO(text)):
            first = start if first is None else first
            result.total = histogram.copy() if result.total is None \
                else result.total.add(histogram)
            if group is None:
                group, group_start = histogram, start
            else:
                group.add(histogram)
            read, last_end = read + 1, end
            if read % size == 0:
                result.points.append(_point(group_start, end, group))
                group = None
    except FileNotFoundError:
        data.missing.append(f"{where}no latency hlog for target {name}")
    except (OSError, LoadgateError) as exc:
        data.missing.append(f"{where}latency hlog of {name} is damaged after interval "
                            f"{read}: {exc}")
    if group is not None:
        result.points.append(_point(group_start, last_end, group))
    return first


def _point(start, end, histogram):
    count = histogram.total_count
    return LatencyPoint(start, end, count,
                        tuple(histogram.percentiles(TIME_PERCENTILES)) if count else ())


def _read_counts(data, load, first_hlog_start, where):
    """Outcome counts per interval from the reports the run merged: every journaled REPORT
    that no later DISCARDED record took back."""
    path = os.path.join(load.path, JOURNAL)
    start_ns = None
    reports = {}  # (agent_id, seq) -> REPORT record
    kind = run_journal.RecordKind
    try:
        for what, record in run_journal.read_journal(path):
            if what is kind.STARTED:
                start_ns = record["start_ns"]
            elif what is kind.FINISHED:
                load.status = record.get("status")
            elif what is kind.REPORT:
                reports[record["agent_id"], record["seq"]] = record
            elif what is kind.DISCARDED:
                reports.pop((record["agent_id"], record["seq"]), None)
    except FileNotFoundError:
        data.missing.append(f"{where}no run journal: no throughput or error counts over time")
        return
    except (OSError, LoadgateError, ValueError, KeyError) as exc:
        data.missing.append(f"{where}the run journal is damaged ({exc}); counts stop there")
    by_index = {}
    for (agent_id, seq), record in reports.items():
        try:
            _count_report(by_index, run_journal.report_payload(record))
        except (DecodeError, ValueError):
            data.missing.append(f"{where}report {agent_id}#{seq} in the run journal does not "
                                "decode: its requests are not counted")
    if load.status is None:
        load.status = "in progress (no finished record)"
    if not by_index:
        return
    interval = load.interval_s or 1.0
    if start_ns is not None:
        origin = start_ns / 1e9
    else:
        origin = first_hlog_start
        data.missing.append(f"{where}the run journal has no start record: intervals are "
                            "placed from the first hlog interval")
    for index in range(max(by_index) + 1):
        counts = by_index.get(index) or IntervalCounts(0.0, 0.0)
        counts.start, counts.end = origin + index * interval, origin + (index + 1) * interval
        data.counts.append(counts)


def _count_report(by_index, payload):
    report = common_pb2.IntervalReport.FromString(payload)
    counts = by_index.setdefault(report.interval_index, IntervalCounts(0.0, 0.0))
    counts.intended += report.intended
    for target in report.targets:
        outcomes = counts.by_target.setdefault(target.name, {})
        for item in target.outcomes:
            outcome = OUTCOME_OF_WIRE.get(item.outcome)
            if outcome is not None:
                outcomes[outcome] = outcomes.get(outcome, 0) + item.count


def _read_telemetry(data, load, where):
    path = os.path.join(load, TELEMETRY)
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    data.telemetry.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line of a run still writing
    except FileNotFoundError:
        data.missing.append(f"{where}no telemetry.jsonl: no host or GPU telemetry")
    except OSError as exc:
        data.missing.append(f"{where}telemetry.jsonl is unreadable: {exc.strerror}")


def completed(outcomes):
    """Requests that ended, whatever the outcome, except never-sent ones."""
    return sum(n for outcome, n in outcomes.items() if outcome is not Outcome.NOT_SENT)
