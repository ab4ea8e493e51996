"""The run journal: an append-only, fsynced JSON-lines record of everything a run received.

Every interval report is written here (the protobuf bytes, base64) before it is merged, so a
run directory can always be rebuilt from its journal, and a controller that crashed resumes
from the last report it journaled.  Records are appended in batches with one fsync per batch
(group commit): a batch is the reports that arrived while the previous fsync ran, which keeps
the per-report cost low when many agents report at once without ever merging an unsynced
report.  A torn last line (a crash mid-write) is ignored when reading; any other bad line is
an error.

A write that fails (disk full, I/O error) raises RunDirWriteError, is cut back off so the
journal stays whole, and ends the journal: every later append raises the same error, so the
journal is always a clean prefix of what the run received.
"""
import base64
import contextlib
import enum
import json
import os
import time

from loadgate.native.errors import InfrastructureError

BLOB_FIELD = "report"  # the base64 protobuf bytes of a REPORT (or REJECTED) record


class RunDirWriteError(InfrastructureError):
    """A file of the run directory could not be written; ``path`` and ``errno`` say which
    and why."""

    def __init__(self, path, error):
        super().__init__(f"cannot write {path}: {error}")
        self.path = path
        self.errno = error.errno


class RecordKind(enum.Enum):
    """What a journal line records."""

    RUN = "run"                # the run: id, definition, agents, shard assignment
    CLOCK = "clock"            # an agent's clock offset and round trip
    PREPARED = "prepared"      # an agent accepted its shard
    STARTED = "started"        # the agreed start instant
    REPORT = "report"          # an accepted interval report
    REJECTED = "rejected"      # a report refused as it arrived, and why (never merged)
    DISCARDED = "discarded"    # a journaled REPORT whose histograms did not decode
    AGENT_LOST = "agent_lost"  # an agent stopped answering
    AGENT_BACK = "agent_back"  # a lost agent answered again
    ADJUSTED = "adjusted"      # rate scale or weights changed
    STOPPING = "stopping"      # the controller asked agents to stop
    RESUMED = "resumed"        # a new controller process took the run over
    FINISHED = "finished"      # the run's end and status


class RunJournal:
    """Appends records to ``path``; every ``append`` returns after the data is on disk."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.write_error = None
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            # A torn last line (a crash mid-write) is cut off, or the next record would be
            # glued onto it and the journal would no longer read.
            _cut_torn_tail(self._fd)
        except OSError as exc:
            raise InfrastructureError(f"cannot open journal {self.path}: {exc}") from None

    def append(self, kind, **fields):
        """Writes one record and fsyncs."""
        self.append_many([(kind, fields)])

    def append_many(self, records):
        """Writes ``(kind, fields)`` records with one write and one fsync; RunDirWriteError
        if they are not on disk (then, and after any earlier failure, nothing is written)."""
        if self.write_error is not None:
            raise self.write_error
        now = time.time_ns()
        data = ("\n".join(_line(kind, now, fields) for kind, fields in records) + "\n").encode()
        size = None
        try:
            size = os.fstat(self._fd).st_size
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError as exc:
            self.write_error = RunDirWriteError(self.path, exc)
            if size is not None:
                # Records half on disk would glue onto the next; should the cut fail too, a
                # reopened journal cuts its torn tail itself.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, size)
            raise self.write_error from None

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _cut_torn_tail(fd):
    """Truncates ``fd`` after its last newline; only RunJournal's constructor calls this."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        os.ftruncate(fd, end)
        os.fsync(fd)


def _line(kind, now, fields):
    blob = fields.get(BLOB_FIELD)
    if blob is None:
        return json.dumps({"kind": kind.value, "ts_ns": now, **fields}, separators=(",", ":"))
    # Base64 needs no JSON escaping; splicing it in saves json.dumps scanning kilobytes.
    rest = {k: v for k, v in fields.items() if k != BLOB_FIELD}
    head = json.dumps({"kind": kind.value, "ts_ns": now, **rest}, separators=(",", ":"))
    return f'{head[:-1]},"{BLOB_FIELD}":"{blob}"}}'


def report_fields(agent_id, seq, index, payload):
    """The fields of a REPORT record for a report's serialized bytes."""
    return {"agent_id": agent_id, "seq": seq, "index": index,
            BLOB_FIELD: base64.b64encode(payload).decode("ascii")}


def report_payload(record):
    """The serialized IntervalReport bytes a REPORT record carries."""
    return base64.b64decode(record[BLOB_FIELD])


def accepted_reports(path):
    """The REPORT records of a journal that were merged (every one not DISCARDED later)."""
    records = list(read_journal(path))
    discarded = {(r["agent_id"], r["seq"]) for kind, r in records if kind is RecordKind.DISCARDED}
    return [r for kind, r in records
            if kind is RecordKind.REPORT and (r["agent_id"], r["seq"]) not in discarded]


def read_journal(path):
    """Yields ``(RecordKind, record dict)`` for every complete line of a journal."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # Everything before the last newline was fsynced whole; what follows it is a torn write.
    for number, line in enumerate(lines[:-1], 1):
        try:
            record = json.loads(line)
            kind = RecordKind(record["kind"])
        except (ValueError, KeyError) as exc:
            raise InfrastructureError(f"{path}:{number}: not a journal record ({exc})") from None
        yield kind, record
