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
import os
from dataclasses import dataclass, field

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
VERDICT_JSON = "verdict.json"
_READINESS_KINDS = frozenset(kind.value for kind in readiness_journal.RecordKind)
_RUN_KINDS = frozenset(kind.value for kind in run_journal.RecordKind)


@dataclass
class TargetIntervals:
    """One target's merged intervals from its latency hlog, in time order."""

    starts: list = field(default_factory=list)  # epoch seconds
    ends: list = field(default_factory=list)
    histograms: list = field(default_factory=list)  # Histogram per interval (µs)
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
class RunData:
    path: str
    readiness: bool = False  # a readiness journal or verdict.json is there, readable or not
    load_path: str = None
    summary: dict = None
    verdict: dict = None
    plan: dict = None
    transitions: list = field(default_factory=list)
    windows: list = field(default_factory=list)
    targets: dict = field(default_factory=dict)  # name -> TargetIntervals
    counts: list = field(default_factory=list)  # IntervalCounts by interval index
    interval_s: float = None
    telemetry: list = field(default_factory=list)  # telemetry.jsonl records
    run_id: str = None
    run_status: str = None  # how the load run ended ("in progress" without a FINISHED record)
    missing: list = field(default_factory=list)  # what could not be shown, and why

    @property
    def origin(self):
        """The instant every time axis counts from (epoch seconds), or None with no times."""
        candidates = [t.starts[0] for t in self.targets.values() if t.starts]
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
        data.load_path = os.path.abspath(os.fspath(load_dir))
    elif kinds & _RUN_KINDS or os.path.isdir(os.path.join(path, HLOG_DIR)):
        data.load_path = path
    elif os.path.isdir(os.path.join(path, LOAD_SUBDIR)):
        data.load_path = os.path.join(path, LOAD_SUBDIR)
    if data.load_path is None:
        data.missing.append("no load run in this directory (no hlog/ and no load/): "
                            "no latency, throughput, error or telemetry charts")
    else:
        _read_load(data)
    if not data.readiness:
        data.missing.append("no readiness journal or verdict.json: a plain load run has no "
                            "verdict, gates or stage timeline")
    return data


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


def _read_json(path, data, what):
    """The JSON object in path, or None with the reason added to ``missing``."""
    name = os.path.basename(path)
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
    skipped = (evaluation, readiness_journal.StepPhase.APPROVAL.value)
    began = {}
    last_change = None
    windows = []
    for record in records:
        if record.get("kind") == readiness_journal.RecordKind.TRANSITION.value:
            last_change = record["time"]
        if record.get("kind") != step:
            continue
        label = record.get("window")
        if record.get("phase") == evaluation:
            began.setdefault(label, record["time"] - record.get("elapsed", 0.0))
            continue
        if record.get("phase") in skipped or "summary" in record:
            continue  # the knee search's closing summary spans no window of its own
        start = began.pop(label, last_change if last_change is not None else record["time"])
        windows.append(Window(label or record.get("phase"), start, record["time"],
                              record.get("status", "")))
    return windows


def _read_load(data):
    load = data.load_path
    data.summary = _read_json(os.path.join(load, SUMMARY_JSON), data,
                              "the load run has not finished (no totals; figures below come "
                              "from the intervals merged so far)")
    run = _read_json(os.path.join(load, "run.json"), data, "target names and the interval "
                     "length are taken from the hlog files instead")
    names = [t["name"] for t in (run or {}).get("definition", {}).get("targets", ())]
    if run:
        data.run_id = run.get("run_id")
        data.interval_s = run.get("definition", {}).get("interval_s")
    if not names and data.summary:
        names = list(data.summary.get("targets", {}))
    if not names:
        suffix = f".{Metric.LATENCY.value}.hlog"
        try:
            names = sorted(n[:-len(suffix)] for n in os.listdir(os.path.join(load, HLOG_DIR))
                           if n.endswith(suffix))
        except OSError:
            names = []
    for name in names:
        data.targets[name] = _read_target(load, name, data)
    _read_counts(data)
    _read_telemetry(data)


def _read_target(load, name, data):
    result = TargetIntervals()
    path = os.path.join(load, HLOG_DIR, hlog_name(name, Metric.LATENCY))
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
        # A run still writing may have a torn last line: only complete lines are intervals.
        for _, start, end, histogram in read_hlog(io.StringIO(text[:text.rfind("\n") + 1])):
            result.starts.append(start)
            result.ends.append(end)
            result.histograms.append(histogram)
            result.total = histogram.copy() if result.total is None \
                else result.total.add(histogram)
    except FileNotFoundError:
        data.missing.append(f"no latency hlog for target {name}")
    except (OSError, LoadgateError) as exc:
        data.missing.append(f"latency hlog of {name} is damaged after interval "
                            f"{len(result.starts)}: {exc}")
    return result


def _read_counts(data):
    """Outcome counts per interval from the accepted reports the run journal holds."""
    path = os.path.join(data.load_path, JOURNAL)
    start_ns = None
    by_index = {}
    try:
        for kind, record in run_journal.read_journal(path):
            if kind is run_journal.RecordKind.STARTED:
                start_ns = record["start_ns"]
            elif kind is run_journal.RecordKind.FINISHED:
                data.run_status = record.get("status")
            elif kind is run_journal.RecordKind.REPORT:
                _count_report(by_index, run_journal.report_payload(record))
    except FileNotFoundError:
        data.missing.append("no run journal: no throughput or error counts over time")
        return
    except (OSError, LoadgateError, ValueError, KeyError) as exc:
        data.missing.append(f"the run journal is damaged ({exc}); counts stop there")
    if data.run_status is None:
        data.run_status = "in progress (no finished record)"
    if not by_index:
        return
    interval = data.interval_s or 1.0
    if start_ns is not None:
        origin = start_ns / 1e9
    else:
        firsts = [t.starts[0] for t in data.targets.values() if t.starts]
        origin = min(firsts) if firsts else 0.0
        data.missing.append("the run journal has no start record: intervals are placed "
                            "from the first hlog interval")
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


def _read_telemetry(data):
    path = os.path.join(data.load_path, TELEMETRY)
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    data.telemetry.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line of a run still writing
    except FileNotFoundError:
        data.missing.append("no telemetry.jsonl: no host or GPU telemetry")
    except OSError as exc:
        data.missing.append(f"telemetry.jsonl is unreadable: {exc.strerror}")


def completed(outcomes):
    """Requests that ended, whatever the outcome, except never-sent ones."""
    return sum(n for outcome, n in outcomes.items() if outcome is not Outcome.NOT_SENT)
