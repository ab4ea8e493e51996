"""The run directory: everything a distributed run leaves behind.

    RUN_DIR/
      run.json              the run: id, definition, agents and their shards (for --resume)
      journal.jsonl         every report received, fsynced before it was merged
      hlog/TARGET.METRIC.hlog   merged interval histograms (HdrHistogram interval log)
      telemetry.jsonl       every telemetry sample, one JSON object per line
      summary.json          the result (schema: docs/summary-json.md)
      summary.txt           the same as a table for people
      agents/agent-N.log    output of agents the controller started itself

The journal is the source of truth; every other file can be rebuilt from it (``--resume``
does so before carrying on).
"""
import contextlib
import json
import math
import os
import re

from google.protobuf import json_format

from loadgate.controller.merge import Metric
from loadgate.controller.run_journal import RunDirWriteError, RunJournal
from loadgate.controller.runner_spec import RunDefinition
from loadgate.native.errors import InfrastructureError
from loadgate.native.hlog import HlogWriter

JOURNAL = "journal.jsonl"
RUN_FILE = "run.json"
TELEMETRY = "telemetry.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_TEXT = "summary.txt"
HLOG_DIR = "hlog"
AGENT_LOG_DIR = "agents"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# What one interval costs on disk, generously: a journaled report (base64) per agent and
# target, its telemetry, and the merged hlog lines per target.  A run refused on a nearly
# full disk is better than one that dies in the middle with its load already sent.
BYTES_PER_AGENT_INTERVAL = 2048
BYTES_PER_REPORT_TARGET = 2048
BYTES_PER_HLOG_INTERVAL = 2048
BYTES_FIXED = 256 << 10


def hlog_name(target, metric):
    """The file name of one target's merged histograms of one metric."""
    return f"{_UNSAFE.sub('_', target)}.{metric.value}.hlog"


class RunDir:
    """A run directory being written.  ``resume=True`` reopens one a crashed run left."""

    def __init__(self, path, resume=False):
        self.path = os.path.abspath(os.fspath(path))
        journal = os.path.join(self.path, JOURNAL)
        if resume and not os.path.exists(journal):
            raise InfrastructureError(f"{self.path} has no {JOURNAL} to resume from")
        if not resume and os.path.exists(journal) and os.path.getsize(journal):
            raise InfrastructureError(f"{self.path} already holds a run (use --resume)")
        try:
            os.makedirs(os.path.join(self.path, HLOG_DIR), exist_ok=True)
        except OSError as exc:
            raise InfrastructureError(f"cannot create run directory {self.path}: {exc}") from None
        self.journal = RunJournal(journal)
        self._hlogs = {}  # (target, Metric) -> (file, HlogWriter)
        self._start_s = 0.0
        self._telemetry = None

    def file(self, name):
        return os.path.join(self.path, name)

    def agent_log(self, index):
        os.makedirs(self.file(AGENT_LOG_DIR), exist_ok=True)
        return os.path.join(self.path, AGENT_LOG_DIR, f"agent-{index}.log")

    def write_run(self, description):
        """Writes run.json, once the file system is known to have room for the whole run
        (the runner calls this before any agent prepares)."""
        definition = RunDefinition.from_dict(description["definition"])
        self.check_space(
            math.ceil((definition.duration_s + definition.timeout_s) / definition.interval_s) + 2,
            len(description["agents"]), len(definition.targets))
        _write_atomically(self.file(RUN_FILE), json.dumps(description, indent=2) + "\n")

    def check_space(self, intervals, agents, targets):
        """InfrastructureError unless the file system has room for a run of ``intervals``
        intervals from ``agents`` agents over ``targets`` targets."""
        needed = BYTES_FIXED + intervals * (
            agents * (BYTES_PER_AGENT_INTERVAL + targets * BYTES_PER_REPORT_TARGET)
            + targets * BYTES_PER_HLOG_INTERVAL)
        try:
            stat = os.statvfs(self.path)
        except OSError as exc:
            raise InfrastructureError(f"cannot check the space in {self.path}: {exc}") from None
        free = stat.f_bavail * stat.f_frsize
        if free < needed:
            raise InfrastructureError(
                f"not enough space in {self.path}: {free} bytes free, the run needs about "
                f"{needed} ({intervals} intervals from {agents} agent(s))")

    def read_run(self):
        try:
            with open(self.file(RUN_FILE)) as f:
                return json.load(f)
        except (OSError, ValueError) as exc:
            raise InfrastructureError(f"cannot read {self.file(RUN_FILE)}: {exc}") from None

    def open_outputs(self, target_names, start_s):
        """Starts the hlog and telemetry files afresh (a resume rebuilds them from the journal)."""
        self.close_outputs()
        self._start_s = start_s
        for target in target_names:
            for metric in Metric:
                f = open(os.path.join(self.path, HLOG_DIR, hlog_name(target, metric)), "w")
                self._hlogs[target, metric] = (f, HlogWriter(f, start_time=start_s,
                                                             base_time=start_s))
        self._telemetry = open(self.file(TELEMETRY), "w")

    def write_interval(self, merged):
        """Appends a merged interval to the hlogs and its telemetry to telemetry.jsonl;
        RunDirWriteError if the disk refuses."""
        # An agent's clock offset is known to within half a round trip, so the first interval
        # may seem to begin a hair before the run; HdrHistogram's log readers skip intervals
        # that start before the log's base time.
        start_s = max(merged.start_ns / 1e9, self._start_s)
        end_s = max(merged.end_ns / 1e9, start_s)
        path = self.path
        try:
            for name, totals in merged.targets.items():
                for metric, histogram in totals.histograms.items():
                    f, writer = self._hlogs[name, metric]
                    path = f.name
                    writer.write_interval(histogram, start_s, end_s)
            path = self._telemetry.name
            for agent_id, sample in merged.telemetry:
                record = {"agent_id": agent_id, "interval_index": merged.index,
                          **json_format.MessageToDict(sample, preserving_proto_field_name=True)}
                self._telemetry.write(json.dumps(record, separators=(",", ":")) + "\n")
            for f, _ in self._hlogs.values():
                path = f.name
                f.flush()
            path = self._telemetry.name
            self._telemetry.flush()
        except OSError as exc:
            raise RunDirWriteError(path, exc) from None

    def write_summary(self, summary, text):
        """Writes summary.json and summary.txt; RunDirWriteError if the disk refuses."""
        _write_atomically(self.file(SUMMARY_JSON), json.dumps(summary, indent=2) + "\n")
        _write_atomically(self.file(SUMMARY_TEXT), text)

    def close_outputs(self):
        """Closes the hlog and telemetry files, every one of them even if some cannot flush
        what they hold; then RunDirWriteError for the first that could not."""
        files = [f for f, _ in self._hlogs.values()] + [self._telemetry] * bool(self._telemetry)
        self._hlogs.clear()
        self._telemetry = None
        failure = None
        for f in files:
            try:
                f.close()
            except OSError as exc:
                failure = failure or RunDirWriteError(f.name, exc)
        if failure:
            raise failure

    def close(self):
        self.close_outputs()
        self.journal.close()


def _write_atomically(path, text):
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise RunDirWriteError(path, exc) from None
