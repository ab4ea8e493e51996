"""The readiness journal: every transition, approval, abort, step and verdict of a run.

``Journal`` is the small protocol the state machine and the orchestrator write through:
``append(record)`` returns once the record is durable, and ``records()`` iterates what was
appended, in order.  ``FileJournal`` is the implementation in a run directory: one JSON
object per line, appended with O_APPEND and fsynced per record, so ``loadgate approve`` in
another process can append while the controller runs.  A crash can leave a torn last line;
reading ignores it and opening for append cuts it off, so the next record starts on a
line of its own.  A bad line anywhere else means the file was damaged: JournalError.
"""
import enum
import json
import math
import os
from typing import Iterator, Protocol

from loadgate.native.errors import InfrastructureError


class RecordKind(enum.Enum):
    TRANSITION = "transition"  # a node changed state (time, node, from, to, reason, evidence)
    APPROVAL = "approval"      # a person approved the deployment (who, when, why)
    ABORT = "abort"            # a person aborted the run (who, when, why)
    STEP = "step"              # a deployment step finished: canary weight, batch, switch
    HOOK = "hook"              # a hook ran: which, arguments, exit status, output tail
    VERDICT = "verdict"        # the final verdict status and where its files are
    PLAN = "plan"              # the plan the run executes (canonical dict)


class StepPhase(enum.Enum):
    """What a ``step`` record closes: a judged window, a wait, or a rollout step."""

    NETWORK = "network"          # RTT gates of the Infrastructure stage
    SMOKE = "smoke"              # the short low-rate window before the performance test
    PERFORMANCE = "performance"  # the performance window's gates
    EVALUATION = "evaluation"    # a window's combined gate status changed
    APPROVAL = "approval"        # the rollout waits for a recorded approval
    CANARY = "canary"            # one canary weight judged
    ROLLING = "rolling"          # one batch of instances judged
    SWITCH = "switch"            # a blue-green or big-bang switch judged
    POST_DEPLOY = "post_deploy"  # the post-deploy monitoring window judged
    KNEE = "knee"                # one rate of the knee search (results, not verdict gates)
    OPENED = "opened"            # a judged window opened: ``opened`` is when its load begins
    RESUMED = "resumed"          # a new controller goes on with a step an earlier one held


class JournalError(InfrastructureError):
    """A journal that cannot be written or read back."""


class Journal(Protocol):
    def append(self, record: dict) -> None:
        """Stores record durably before returning."""

    def records(self) -> Iterator[dict]:
        """Every record appended so far, oldest first."""


class FileJournal:
    """A Journal in an append-only JSON-lines file, fsynced per record."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            self._cut_torn_tail()
        except OSError as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc.strerror}") from None

    def _cut_torn_tail(self):
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return
        start = max(0, size - 65536)
        while True:
            chunk = os.pread(self._fd, size - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0 or start == 0:
                os.ftruncate(self._fd, start + newline + 1 if newline >= 0 else 0)
                os.fsync(self._fd)
                return
            start = max(0, start - 65536)

    def append(self, record):
        """Writes record as one line and fsyncs; JournalError if the disk refuses."""
        line = json.dumps(_finite(record), sort_keys=True, separators=(",", ":"),
                          default=_plain, allow_nan=False)
        data = (line + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(28, "short write")
            os.fsync(self._fd)
        except OSError as exc:
            raise JournalError(f"cannot append to journal {self.path}: {exc.strerror}") \
                from None

    def records(self):
        """Every complete record in the file, oldest first (a torn last line is skipped)."""
        return read_journal(self.path)

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _finite(value):
    # Strict JSON has no NaN or Infinity: a figure that could not be measured is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot journal a {type(value).__name__}")


def read_journal(path):
    """Yields the records of a journal file; JournalError for damage other than a torn tail."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise JournalError(f"cannot read journal {path}: {exc.strerror}") from None
    lines = data.split(b"\n")
    complete = lines[:-1]
    for number, line in enumerate(complete, 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise JournalError(f"{path}:{number}: damaged journal record") from None
        if not isinstance(record, dict):
            raise JournalError(f"{path}:{number}: a journal record must be an object")
        yield record
