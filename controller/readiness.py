"""The readiness orchestrator: runs a classified plan's stage graph through the state machine.

``Readiness(plan, run_dir, source, clock=time.time, hooks=None)`` prepares a run (or takes
over the run already journaled in run_dir); ``tick()`` advances it by one step of work and
returns its ``RunStatus``; ``run(advance, max_ticks)`` ticks until the run ends.  Nothing
here sleeps or reads the wall clock: time comes from ``clock()`` and progress from ticks, so
a test drives 24 hours of post-deploy monitoring with a fake clock in a fraction of a second,
and the real runner ticks once per report interval with ``time.time``.

The measuring side is a ``MeasurementSource`` (readiness_protocol: describe, measure_rtt,
start_window, collect, stop); hooks run through ``HookRunner`` on this process only.

Stages, in the order of classify.stage_graph:

- Infrastructure: capacity of the agents' nodes against the plan, every target answering,
  network RTT p95 against the plan (a gate with the minimum-sample rule).
- Performance: one load window at the plan's rate (after warm-up, optionally a smoke window
  at 10 % first); latency, throughput (+ error rate) and resource gates judge it.
- Monitoring: the metrics endpoint answers, alert rules parse and cover every gate and
  evaluate often enough, the dashboard has panels.
- Deployment: staging evidence (production), manual approval when required (the rollout
  node waits in OZHIDAET until an ``approval`` record is journaled), the rollout by strategy
  (readiness_rollout), then the post-deploy monitoring window.

A failed gate before deployment blocks (ZABLOKIROVANO; verdict FAIL); during or after
deployment it rolls back (AVARIYA -> rollback hook -> OTKAT -> previous SV; FAIL).  Too little
evidence leaves the node NSV and the verdict INCONCLUSIVE.  ``approve``/``abort`` append
who/when/why records another process may write while this one runs.  A killed controller
resumes from run_dir: transitions are replayed through the state machine, finished stages
and canary steps are not repeated, and a canary step in progress goes on with what it had
measured: ``journaled(opened, weights)`` (default: ``JournaledLoad``, the load journals of
earlier controllers in run_dir) gives the measurement of a window opened at ``opened``, so
only the rest of its hold runs (readiness_rollout).
"""
import json
import os
import re
import time

from loadgate.controller import verdict as verdict_module
from loadgate.controller.classify import classify, rollout_node, stage_graph
from loadgate.controller.gates import GateResult, combine
from loadgate.controller.journal import (
    FileJournal, JournalError, RecordKind, StepPhase, read_journal)
from loadgate.controller.merge import Metric, TargetTotals
from loadgate.controller.plan import Plan
from loadgate.controller.plan_model import Environment
from loadgate.controller.plan_units import format_duration
from loadgate.controller.readiness_checks import check_staging_evidence
from loadgate.controller.readiness_hooks import HookRunner
from loadgate.controller.readiness_protocol import TargetWindow, WindowMeasurement
from loadgate.controller.readiness_rollout import RolloutMixin
from loadgate.controller.readiness_stages import PreDeploymentStages
from loadgate.controller.runner_reports import HistogramLayout
from loadgate.controller.runner_resume import journaled_intervals
from loadgate.controller.rundir import JOURNAL as LOAD_JOURNAL
from loadgate.controller.runner_source import _sample as telemetry_sample
from loadgate.controller.states import Node, Stage, State, StateMachine, SubStage
from loadgate.controller.verdict import RunStatus
from loadgate.native.errors import InfrastructureError, LoadgateError

JOURNAL_NAME = "journal.jsonl"
# Each controller of a run measures into a directory of its own: load, load-2, load-3, ...
LOAD_DIR = "load"
_LOAD_DIR_NAME = re.compile(rf"{LOAD_DIR}(-[0-9]+)?")


class _Aborted(Exception):
    pass


def append_decision(run_dir, kind, who, why, clock=time.time):
    """Journals an approval or abort (RecordKind.APPROVAL / ABORT) for the run in run_dir."""
    path = os.path.join(run_dir, JOURNAL_NAME)
    if not os.path.exists(path):
        raise InfrastructureError(f"{run_dir} holds no readiness journal")
    with FileJournal(path) as journal:
        journal.append({"kind": kind.value, "who": who, "why": why, "time": clock()})


def approve(run_dir, who, why, clock=time.time):
    append_decision(run_dir, RecordKind.APPROVAL, who, why, clock)


def abort(run_dir, who, why, clock=time.time):
    append_decision(run_dir, RecordKind.ABORT, who, why, clock)


class Readiness(PreDeploymentStages, RolloutMixin):
    def __init__(self, plan, run_dir, source, clock=time.time, hooks=None, journaled=None):
        self.run_dir = os.fspath(run_dir)
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as exc:
            raise InfrastructureError(f"cannot create run directory {run_dir}: "
                                      f"{exc.strerror}") from None
        self.classification = classify(plan)
        self.plan = self.classification.plan
        self.source = source
        self.clock = clock
        self.journaled = journaled or JournaledLoad(self.run_dir, self.plan.targets)
        base = os.path.dirname(os.path.abspath(plan.source)) if os.path.exists(plan.source) \
            else os.getcwd()
        self.base_dir = base
        self.hooks = hooks or HookRunner(plan.deployment.id, cwd=base)
        self.journal = FileJournal(os.path.join(self.run_dir, JOURNAL_NAME))
        self.machine = StateMachine(stage_graph(self.plan), self.journal, clock)
        self.status = RunStatus.RUNNING
        self.windows = {}
        self.steps = []
        self.reasons = []
        self.error = None
        self.approval = None
        self.aborted = None
        self.verdict = None
        self.gpu_unavailable = None
        self.knee = None
        self.started = clock()
        records = list(self.journal.records())
        if records:
            self._restore(records, plan)
        else:
            source = os.path.abspath(plan.source) if os.path.exists(plan.source) else plan.source
            self.journal.append({"kind": RecordKind.PLAN.value, "time": self.started,
                                 "plan": plan.to_dict(), "source": source})
        self._procedure = self._run()

    @classmethod
    def resume(cls, run_dir, source, clock=time.time, hooks=None, journaled=None):
        """The run journaled in run_dir, ready to continue where it stopped."""
        records = list(read_journal(os.path.join(run_dir, JOURNAL_NAME)))
        plans = [r for r in records if r.get("kind") == RecordKind.PLAN.value]
        if not plans:
            raise JournalError(f"{run_dir} holds no readiness journal to resume")
        plan = Plan.from_dict(plans[0]["plan"], plans[0]["source"])
        return cls(plan, run_dir, source, clock, hooks, journaled)

    def _restore(self, records, plan):
        first = records[0]
        if first.get("kind") != RecordKind.PLAN.value or first.get("plan") != plan.to_dict():
            raise JournalError(f"{self.run_dir} holds the journal of another plan")
        self.started = first["time"]
        for record in records[1:]:
            kind = record.get("kind")
            if kind == RecordKind.TRANSITION.value:
                self.machine.replay(record)
            elif kind == RecordKind.STEP.value:
                self._remember_step(record)
            elif kind == RecordKind.VERDICT.value:
                self.status = RunStatus(record["run_status"])
        self._read_decisions(records)

    def _journal_step(self, record):
        self.journal.append(record)
        self._remember_step(record)

    def _remember_step(self, record):
        self.steps.append(record)
        if record.get("summary") is not None and record.get("phase") == StepPhase.KNEE.value:
            self.knee = record["summary"]
        if record.get("gates") is not None:
            self.windows[record["window"]] = [GateResult.from_dict(g) for g in record["gates"]]

    def _read_decisions(self, records=None):
        for record in records if records is not None else self.journal.records():
            kind = record.get("kind")
            if kind == RecordKind.APPROVAL.value and self.approval is None:
                approvers = self.plan.approval.approvers
                if not approvers or record.get("who") in approvers:
                    self.approval = record
            elif kind == RecordKind.ABORT.value and self.aborted is None:
                self.aborted = record

    # -- driving -------------------------------------------------------------------------

    def tick(self):
        """Does the next piece of work (or checks whether a wait is over); returns the status."""
        if self.status.final:
            return self.status
        self._read_decisions()
        try:
            next(self._procedure)
        except StopIteration:
            pass
        return self.status

    def run(self, advance=None, max_ticks=1_000_000):
        """Ticks until the run ends or waits for a person (RunStatus.WAITING); ``advance()``
        runs between ticks (a real runner sleeps one interval, a test moves its fake clock)."""
        for _ in range(max_ticks):
            status = self.tick()
            if status.final or status is RunStatus.WAITING:
                return status
            if advance is not None:
                advance()
        return self.status

    def _pause(self):
        yield
        if self.aborted is not None:
            raise _Aborted()

    def _hold(self, seconds):
        deadline = self.clock() + seconds
        while self.clock() < deadline:
            yield from self._pause()

    def _to(self, node, state, reason, evidence=None):
        if self.machine.state(node) is not state:
            self.machine.transition(node, state, reason, evidence)

    def _run(self):
        try:
            for stage, runner in ((Stage.INFRASTRUCTURE, self._infrastructure),
                                  (Stage.PERFORMANCE, self._performance),
                                  (Stage.MONITORING, self._monitoring),
                                  (Stage.DEPLOYMENT, self._deployment)):
                state = self.machine.state(Node(stage))
                if state.perfective and state is not State.RAZVERNUTO:
                    continue
                if not (yield from runner(Node(stage))):
                    break
            else:
                self._finish(RunStatus.PASSED, None)
        except _Aborted:
            self._on_abort()
        except (LoadgateError, OSError) as exc:
            self._on_lost_measurement(exc)
        finally:
            self.source.stop()

    def _finish(self, status, reason, error=None):
        if reason:
            self.reasons.append(reason)
        if error is not None:
            self.error = error
        self.status = status
        self.verdict = verdict_module.build(self)
        files = verdict_module.write(self.verdict, self.run_dir)
        self.journal.append({"kind": RecordKind.VERDICT.value, "time": self.clock(),
                             "status": self.verdict.status.value, "run_status": status.value,
                             "files": files})

    def _block(self, node, reason, evidence=None, status=RunStatus.FAILED, error=None):
        self._to(node, State.ZABLOKIROVANO, reason, evidence)
        parent = self.machine.parent.get(node)
        if parent is not None:
            self._to(parent, State.ZABLOKIROVANO, f"blocked by {node.title}: {reason}")
        self._finish(status, f"{node.title}: {reason}", error)
        return False

    def _inconclusive(self, reason):
        self._finish(RunStatus.INCONCLUSIVE, reason)
        return False

    def _record_step(self, phase, window, results, measurement=None, **extra):
        record = {"kind": RecordKind.STEP.value, "time": self.clock(), "phase": phase.value,
                  "window": window, "status": combine(results).value,
                  "gates": [r.to_dict() for r in results], **extra}
        if measurement is not None:
            record["measured"] = {name: {"requests": t.requests, "errors": t.errors,
                                         "achieved_rps": t.achieved_rps,
                                         "intended_rps": t.intended_rps}
                                  for name, t in measurement.targets.items()}
        self._journal_step(record)
        return record

    def _deployment(self, stage):
        self._to(stage, State.V_PROTSESSE, "deploying")
        plan = self.plan
        if plan.deployment.environment is Environment.PRODUCTION:
            staging = Node(Stage.DEPLOYMENT, SubStage.STAGING)
            if not self.machine.state(staging).perfective:
                self._to(staging, State.V_PROTSESSE, "checking staging evidence")
                check = check_staging_evidence(self._path(plan.staging_evidence),
                                               plan.deployment.id)
                if not check.ok:
                    return self._block(staging, check.reason, check.evidence, RunStatus.BLOCKED)
                self._to(staging, State.PROVERENO, check.reason, check.evidence)
        rollout = Node(Stage.DEPLOYMENT, rollout_node(plan))
        if not self.machine.state(rollout).perfective:
            if self.classification.approval_required and self.approval is None:
                self.status = RunStatus.WAITING
                self.journal.append({"kind": RecordKind.STEP.value, "time": self.clock(),
                                     "phase": StepPhase.APPROVAL.value, "window": None,
                                     "status": RunStatus.WAITING.value,
                                     "node": rollout.key, "reason": "manual approval required"
                                     f" ({_approval_reason(self.classification)})"})
                while self.approval is None:
                    yield from self._pause()
                self.status = RunStatus.RUNNING
            if not (yield from self.rollout(rollout)):
                return False
        self._to(stage, State.RAZVERNUTO, f"{plan.deployment.strategy.value} rollout complete")
        self._to(stage, State.MONITORITSYA, "monitoring loop after deployment")
        post = Node(Stage.DEPLOYMENT, SubStage.POST_DEPLOY)
        if not self.machine.state(post).perfective:
            if not (yield from self.post_deploy(post, rollout)):
                return False
        self._to(stage, State.ZAVERSHENO, "deployed and monitored for "
                 + format_duration(plan.monitoring.post_deploy_window_s))
        return True

    def _on_lost_measurement(self, exc):
        reason = f"measurement failed: {exc}"
        if self.deploying:
            self.roll_back(reason, {"error": str(exc)}, RunStatus.BLOCKED,
                           verdict_module.ErrorKind.INFRASTRUCTURE)
            return
        running = [n for n in self.machine.nodes() if self.machine.state(n).imperfective]
        for node in sorted(running, key=lambda n: n.sub is None):
            self._to(node, State.ZABLOKIROVANO, reason)
        self._finish(RunStatus.BLOCKED, reason, verdict_module.ErrorKind.INFRASTRUCTURE)

    def entered(self, node, state):
        """When node last entered state, from the journal (None if it never did)."""
        times = [r["time"] for r in self.journal.records()
                 if r.get("kind") == RecordKind.TRANSITION.value and r["node"] == node.key
                 and r["to"] == state.value]
        return times[-1] if times else None

    def _on_abort(self):
        who, why = self.aborted.get("who"), self.aborted.get("why")
        reason = f"aborted by {who}: {why}"
        if self.deploying:
            self.roll_back(reason, {"abort": self.aborted})
        else:
            for node in list(self.machine.nodes()):
                if self.machine.state(node).imperfective:
                    self.machine.transition(node, State.ZABLOKIROVANO, reason)
        self._finish(RunStatus.ABORTED, reason)


def _approval_reason(classification):
    return next((d.reason for d in classification.decisions if d.key == "approval.required"),
                "the plan requires it")



class JournaledLoad:
    """What earlier controllers of the run in run_dir measured, read from their load
    journals: ``(opened, weights)`` gives the WindowMeasurement of the window that opened at
    ``opened`` (s, the source's clock) with those weights, or None if nothing of it was
    journaled.

    The window's load is in the directory of the controller that opened it: the last one
    whose run had begun by then.  A later controller's load (its warm-up included) is in a
    directory of its own, so it never counts toward an earlier controller's window."""

    def __init__(self, run_dir, targets):
        self.run_dir = run_dir
        self.target_names = [t.name for t in targets]

    def __call__(self, opened, weights):
        began = {}
        for name in os.listdir(self.run_dir):
            path = os.path.join(self.run_dir, name)
            if _LOAD_DIR_NAME.fullmatch(name) and os.path.isdir(path):
                start = _run_began(path)
                if start is not None and start <= opened * 1e9:
                    began[path] = start
        if not began:
            return None
        _, intervals = journaled_intervals(max(began, key=began.get))
        return window_of(intervals, opened, weights, self.target_names)


def _run_began(path):
    # The run record comes first and is written as the controller prepares the agents, before
    # any window of it opens; the rest of a long journal need not be read to find it.
    try:
        with open(os.path.join(path, LOAD_JOURNAL), "rb") as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError):
        return None
    return first.get("ts_ns") if isinstance(first, dict) else None


def window_of(intervals, opened, weights, target_names):
    """The WindowMeasurement a window opened at ``opened`` (s) with ``weights`` got from the
    merged ``intervals``: those that started inside it, whole, as the live source adds them
    (runner_source); None when none did."""
    opened_ns = round(opened * 1e9)
    kept = [m for m in intervals if m.start_ns >= opened_ns]
    if not kept:
        return None
    layout = HistogramLayout()
    totals = {name: TargetTotals.empty(layout) for name in target_names}
    for merged in kept:
        for name, figures in merged.targets.items():
            totals[name].add(figures)
    end = max(m.end_ns for m in kept) / 1e9
    seconds = max(1e-9, end - opened)
    intended = sum(m.intended for m in kept)
    total_weight = sum(weights.values()) or 1.0
    targets = {name: TargetWindow(
        name=name, latency=figures.histograms[Metric.LATENCY], requests=figures.completed,
        errors=figures.errors,
        intended_rps=intended * weights.get(name, 0.0) / total_weight / seconds,
        achieved_rps=figures.completed / seconds,
        outcomes={o.label: n for o, n in figures.outcomes.items()})
        for name, figures in totals.items()}
    return WindowMeasurement(start=opened, end=end, targets=targets, telemetry=tuple(
        telemetry_sample(sample) for m in kept for _, sample in m.telemetry))
