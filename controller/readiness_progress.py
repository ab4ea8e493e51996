"""Live progress of a readiness run in the terminal (rich), redrawn after every tick.

It shows each stage with the seed's state marker, what the run is doing now (the last
transition's node, state and reason), the window being judged (canary step, traffic split,
rate, covered seconds, the gates' combined status) and, per target, the window's evidence as
the gates see it: requests, errors, achieved rate, samples, p95 and p99.

``TrackedSource`` wraps the MeasurementSource so the display shows exactly what the
orchestrator last collected, without a second measurement.  Where stderr is no terminal the
transitions are printed as plain lines instead, one per transition.
"""
import threading
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgate.controller.journal import RecordKind, StepPhase
from loadgate.controller.readiness import JOURNAL_NAME
from loadgate.controller.service_runs import JournalTail
from loadgate.controller.states import State

_STYLE = {State.AVARIYA: "bold red", State.OTKAT: "red", State.ZABLOKIROVANO: "red",
          State.OZHIDAET: "yellow"}


class TrackedSource:
    """A MeasurementSource that remembers the current window and its last collection."""

    def __init__(self, inner):
        self.inner = inner
        self.weights = {}
        self.rate = None
        self.window_started = None
        self.last = None
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def run(self):
        """The inner source's DistributedRun (if any), for whoever follows its intervals."""
        return getattr(self.inner, "run", None)

    def describe(self):
        return self.inner.describe()

    def measure_rtt(self):
        return self.inner.measure_rtt()

    def start_window(self, weights, rate):
        self.inner.start_window(weights, rate)
        with self._lock:
            self.weights, self.rate = dict(weights), rate
            self.window_started, self.last = time.time(), None

    def collect(self):
        measurement = self.inner.collect()
        with self._lock:
            self.last = measurement
        return measurement

    def stop(self):
        # The orchestrator stops its source when it ends, and the runner again when it was
        # interrupted: the second call has nothing left to stop.
        if not self._stopped:
            self._stopped = True
            self.inner.stop()


class ReadinessProgress:
    """A context manager; ``update()`` after each tick redraws (or prints new transitions)."""

    def __init__(self, readiness, source, enabled=True, console=None):
        self.readiness = readiness
        self.source = source
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.latest = None
        self.evaluation = None
        self._tail = JournalTail(f"{readiness.run_dir}/{JOURNAL_NAME}")
        self._waiting_told = False
        self._live = Live(console=self.console, auto_refresh=False, transient=False) \
            if self.live else None
        # What a resumed run journaled before is history, not news: only its latest state
        # is shown.
        for record in self._tail.new_records():
            self._take(record, echo=False)

    def __enter__(self):
        if self._live is not None:
            self._live.start()
        self.update()
        return self

    def __exit__(self, *exc):
        self.update()
        if self._live is not None:
            self._live.stop()

    def update(self):
        for record in self._tail.new_records():
            self._take(record, echo=True)
        if self._live is not None:
            self._live.update(self.render(), refresh=True)

    def _take(self, record, echo):
        kind = record.get("kind")
        if kind == RecordKind.TRANSITION.value:
            self.latest = record
            if echo and self.enabled and not self.live:
                self.console.print(_transition_line(record), markup=False, highlight=False,
                                   soft_wrap=True)
        elif kind == RecordKind.STEP.value and record.get("phase") == StepPhase.EVALUATION.value:
            self.evaluation = record
        elif kind == RecordKind.STEP.value and record.get("phase") == StepPhase.APPROVAL.value \
                and not self._waiting_told and self.readiness.approval is None:
            self._waiting_told = True
            # Said even without progress: the run cannot go on until a person acts.
            self.console.print(f"waiting for approval: loadgate approve "
                               f"{self.readiness.run_dir} --who NAME --reason WHY",
                               markup=False, highlight=False, soft_wrap=True)

    def render(self):
        readiness = self.readiness
        machine = readiness.machine
        elapsed = time.time() - readiness.started
        header = Text.assemble((f"{readiness.plan.deployment.id} ", "bold"),
                               f"{readiness.status.value}  {elapsed:5.0f} s  ",
                               (readiness.run_dir, "dim"))
        stages = Table.grid(padding=(0, 2))
        for node in machine.nodes():
            if node.sub is None:
                state = machine.state(node)
                stages.add_row(node.title, Text(state.marker, _STYLE.get(
                    state, "green" if state.perfective else "cyan")))
        parts = [header, stages]
        if self.latest is not None:
            parts.append(Text(_transition_line(self.latest), overflow="ellipsis",
                              no_wrap=True))
        window = self._window_table()
        if window is not None:
            parts.append(window)
        return Group(*parts)

    def _window_table(self):
        source = self.source
        measurement, weights, rate = source.last, source.weights, source.rate
        if measurement is None:
            return None
        evaluation = self.evaluation or {}
        if source.window_started is None or evaluation.get("time", 0) < source.window_started:
            evaluation = {}  # the window just opened: its first judgement is still to come
        title = Text(f"{evaluation.get('window', 'new window')}: {rate:g} req/s offered, "
                     f"{measurement.duration_s:.1f} s covered, gates "
                     f"{evaluation.get('status', '-')}")
        table = Table(box=None, pad_edge=False)
        for column in ("target", "share", "req/s", "requests", "errors", "p95 ms", "p99 ms"):
            table.add_column(column, justify="left" if column == "target" else "right")
        for name, target in measurement.targets.items():
            share = weights.get(name, 0.0)
            latency = target.latency
            p95, p99 = (latency.percentiles([95.0, 99.0]) if latency.total_count
                        else (None, None))
            table.add_row(name, f"{share * 100:.0f}%", f"{target.achieved_rps:.0f}",
                          str(target.requests), str(target.errors), _ms(p95), _ms(p99))
        return Group(title, table)


def _transition_line(record):
    when = time.strftime("%H:%M:%S", time.localtime(record["time"]))
    return f"{when} {record['node']}: {record.get('from')} -> {record['to']}: " \
           f"{record.get('reason', '')}"


def _ms(value_us):
    return "-" if value_us is None else f"{value_us / 1000:.2f}"
