"""One readiness run driven by the controller service, and what it publishes to watchers.

``ManagedRun(run_id, plan, run_dir, source, hooks=None)`` wraps the MeasurementSource, builds
the ``Readiness`` orchestrator (or resumes the one journaled in run_dir; ``hooks`` is its
HookRunner, the plan's own by default) and, once ``start()``ed,
ticks it on a thread of its own.  After every tick it reads the journal records appended
since the last one (its own transitions and steps, and approvals or aborts that
``loadgate approve`` wrote from another process) and publishes each transition to the
run's ``WatchHub``; merged intervals are published from the source's event loop as they are
handed out.  ``approve``/``abort`` journal a decision and wake the thread at once.

A source that drives a DistributedRun exposes it as ``.run`` once its first window started
(runner_source.AgentMeasurementSource does); the run's intervals are followed from then on
(the agents start ``start_lead_s`` later, so no interval is missed).

``AgentSources`` is the default way to get a source for a plan: the service's ``--agents``
(``dns:///`` entries resolved per run), else the plan's, else the plan's local agents
started for the run and stopped with it.
"""
import json
import logging
import os
import threading
import time

from loadgate.controller.discovery import resolve_agents
from loadgate.controller.journal import RecordKind
from loadgate.controller.local_agents import LocalAgents
from loadgate.controller.readiness import JOURNAL_NAME, Readiness, append_decision
from loadgate.controller.service_events import RunView, interval_stats
from loadgate.controller.watch_hub import EventKind, WatchHub

log = logging.getLogger("loadgate.controller.service")


class WatchedSource:
    """A MeasurementSource that reports its traffic split and its run's merged intervals."""

    def __init__(self, inner, on_weights, on_interval, on_run=None):
        self.inner = inner
        self._on_weights = on_weights
        self._on_interval = on_interval
        self._on_run = on_run
        self._followed = None

    def describe(self):
        return self.inner.describe()

    def measure_rtt(self):
        return self.inner.measure_rtt()

    def start_window(self, weights, rate):
        self.inner.start_window(weights, rate)
        self._on_weights(dict(weights))
        run = getattr(self.inner, "run", None)
        if run is not None and run is not self._followed:
            self._followed = run
            run.add_listener(self._on_interval)
            if self._on_run is not None:
                self._on_run(run)

    def collect(self):
        return self.inner.collect()

    def stop(self):
        self.inner.stop()


class JournalTail:
    """The complete records appended to a journal file since the last call."""

    def __init__(self, path):
        self.path = path
        self.offset = 0

    def new_records(self):
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


class ManagedRun:
    """A readiness run with a watch hub; see the module docstring."""

    approvable = True  # its plan may ask for a manual approval (service_plain's runs never)

    def __init__(self, run_id, plan, run_dir, source, *, tick_s=0.25, queue_limit=None,
                 clock=time.time, on_finish=None, metrics=None, resume=False, hooks=None):
        self.run_id = run_id
        self.run_dir = os.fspath(run_dir)
        self.tick_s = tick_s
        self.on_finish = on_finish
        self.metrics = metrics
        self.error = None
        self._wake = threading.Event()
        self._closing = False
        self._thread = None
        self._interval_weights = {}
        watched = WatchedSource(source, self._on_weights, self._on_interval, self._on_run)
        if resume:
            self.readiness = Readiness.resume(self.run_dir, watched, clock, hooks)
        else:
            self.readiness = Readiness(plan, self.run_dir, watched, clock, hooks)
        self.plan = self.readiness.plan
        self.view = RunView(run_id, self.run_dir, self.plan, self.readiness.started, live=True)
        self.hub = WatchHub(self.view.run_info, **(
            {"queue_limit": queue_limit} if queue_limit else {}))
        self._tail = JournalTail(os.path.join(self.run_dir, JOURNAL_NAME))
        self._sync()

    # -- driving ---------------------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._drive, name=f"loadgate-run-{self.run_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout=None):
        """Waits for the run to end; returns its RunStatus (RUNNING/WAITING if timed out)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.readiness.status

    @property
    def finished(self):
        return self.view.finished or self.error is not None

    def _drive(self):
        try:
            while True:
                status = self.readiness.tick()
                self._sync()
                if status.final:
                    break
                self._wake.wait(self.tick_s)
                self._wake.clear()
                if self._closing:
                    return
        except Exception as exc:  # a bug must end the run visibly, not hang its watchers
            log.exception("run %s failed", self.run_id)
            self.error = f"{type(exc).__name__}: {exc}"
            try:
                self.readiness.source.stop()
            except Exception:
                log.exception("run %s: stopping the load failed", self.run_id)
        self._sync()
        self.hub.update(self._mark_finished)
        self.hub.finish(self.view.run_info())
        if self.on_finish is not None:
            self.on_finish(self)

    def stop_load(self, timeout_s=60.0):
        """Stops driving the run and its load without deciding it (the controller is going
        away; the journal lets the next one resume)."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.readiness.source.stop()
        if self.on_finish is not None:
            self.on_finish(self)

    def _mark_finished(self):
        self.view.finished = True

    def _sync(self):
        for record in self._tail.new_records():
            self.hub.update(lambda record=record: self._take(record))
            if self.metrics is not None:
                self._export(record)

    def _take(self, record):
        transition = self.view.apply(record)
        return (EventKind.TRANSITION, transition) if transition is not None else None

    def _export(self, record):
        kind = record.get("kind")
        if kind == RecordKind.TRANSITION.value:
            self.metrics.set_stage(record["node"], record["to"])
        elif kind == RecordKind.VERDICT.value:
            self.metrics.set_verdict(record.get("status", ""))

    # -- from the source -------------------------------------------------------------------

    def _on_weights(self, weights):
        self._interval_weights = weights
        self.hub.update(lambda: self.view.set_weights(weights))
        if self.metrics is not None:
            self.metrics.set_canary_weight(self.view.canary_weight)

    def _on_run(self, run):
        if self.metrics is not None:
            self.metrics.follow_run(run, self.plan.deployment.id)

    def _on_interval(self, merged):
        publish_interval(self.hub, merged, self._interval_weights, self.view.phase)

    # -- decisions -------------------------------------------------------------------------

    def approve(self, who, why):
        append_decision(self.run_dir, RecordKind.APPROVAL, who, why)
        self._wake.set()

    def abort(self, who, why):
        append_decision(self.run_dir, RecordKind.ABORT, who, why)
        self._wake.set()


def publish_interval(hub, merged, weights, phase):
    """What a run does with each merged interval for its watchers: nothing when nobody
    watches, else one IntervalStats built once and fanned out.  ``phase()`` names the load."""
    if hub.watching:
        hub.publish(EventKind.INTERVAL, interval_stats(merged, weights, phase()))


class AgentSources:
    """Makes the MeasurementSource of a plan over agents (see the module docstring)."""

    def __init__(self, agents=(), credentials=None, metadata=(), workers_per_agent=0):
        self.agents = tuple(agents)
        self.credentials = credentials
        self.metadata = metadata
        self.workers_per_agent = workers_per_agent

    def __call__(self, plan, run_dir):
        """(source, cleanup) for a run of plan in run_dir; cleanup() after the run."""
        from loadgate.controller.runner_source import AgentMeasurementSource
        entries = self.agents or plan.agents
        local = None
        if entries:
            agents = resolve_agents(entries)
        else:
            local = LocalAgents(plan.local_agents,
                                lambda index: os.path.join(run_dir, f"agent-{index}.log"),
                                workers=self.workers_per_agent or None)
            agents = local.start()
        source = AgentMeasurementSource(plan, agents, _fresh(os.path.join(run_dir, "load")),
                                        workers_per_agent=self.workers_per_agent,
                                        credentials=self.credentials, metadata=self.metadata)
        return source, (local.stop if local is not None else _nothing)


def _fresh(path):
    # A resumed run measures anew: the load of an earlier controller keeps its directory.
    candidate, number = path, 1
    while os.path.exists(candidate):
        number += 1
        candidate = f"{path}-{number}"
    return candidate


def _nothing():
    return None


def journaled_runs(runs_dir):
    """(run_id, run_dir) of every readiness run journaled under runs_dir, by name."""
    try:
        names = sorted(os.listdir(runs_dir))
    except FileNotFoundError:
        return []
    return [(name, os.path.join(runs_dir, name)) for name in names
            if os.path.isfile(os.path.join(runs_dir, name, JOURNAL_NAME))]
