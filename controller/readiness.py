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
and canary steps are not repeated, and the step in progress starts a fresh window.
"""
import os
import time

from loadgate.controller import verdict as verdict_module
from loadgate.controller.classify import classify, rollout_node, stage_graph
from loadgate.controller.gates import GateResult, GateStatus, combine, evaluate, latency_gate
from loadgate.controller.journal import FileJournal, JournalError, RecordKind, read_journal
from loadgate.controller.plan import Plan
from loadgate.controller.plan_model import Environment, TargetRole
from loadgate.controller.plan_units import format_duration
from loadgate.controller.readiness_checks import (
    check_alert_rules, check_capacity, check_dashboard, check_metrics, check_staging_evidence)
from loadgate.controller.readiness_hooks import HookRunner
from loadgate.controller.readiness_rollout import RolloutMixin, failed_reasons, inconclusive_reasons
from loadgate.controller.states import Node, Stage, State, StateMachine, SubStage
from loadgate.controller.verdict import RunStatus
from loadgate.native.errors import InfrastructureError

JOURNAL_NAME = "journal.jsonl"


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


class Readiness(RolloutMixin):
    def __init__(self, plan, run_dir, source, clock=time.time, hooks=None):
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
        self.started = clock()
        records = list(self.journal.records())
        if records:
            self._restore(records, plan)
        else:
            self.journal.append({"kind": RecordKind.PLAN.value, "time": self.started,
                                 "plan": plan.to_dict(), "source": plan.source})
        self._procedure = self._run()

    @classmethod
    def resume(cls, run_dir, source, clock=time.time, hooks=None):
        """The run journaled in run_dir, ready to continue where it stopped."""
        records = list(read_journal(os.path.join(run_dir, JOURNAL_NAME)))
        plans = [r for r in records if r.get("kind") == RecordKind.PLAN.value]
        if not plans:
            raise JournalError(f"{run_dir} holds no readiness journal to resume")
        plan = Plan.from_dict(plans[0]["plan"], plans[0]["source"])
        return cls(plan, run_dir, source, clock, hooks)

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

    def _remember_step(self, record):
        self.steps.append(record)
        if record.get("gates") is not None:
            self.windows[record["window"]] = [GateResult.from_dict(g) for g in record["gates"]]

    def _read_decisions(self, records=None):
        for record in records if records is not None else self.journal.records():
            kind = record.get("kind")
            if kind == RecordKind.APPROVAL.value and self.approval is None:
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
                if self.machine.state(Node(stage)).perfective:
                    continue
                if not (yield from runner(Node(stage))):
                    break
            else:
                self._finish(RunStatus.PASSED, None)
        except _Aborted:
            self._on_abort()
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
        record = {"kind": RecordKind.STEP.value, "time": self.clock(), "phase": phase,
                  "window": window, "status": combine(results).value,
                  "gates": [r.to_dict() for r in results], **extra}
        if measurement is not None:
            record["measured"] = {name: {"requests": t.requests, "errors": t.errors,
                                         "achieved_rps": t.achieved_rps,
                                         "intended_rps": t.intended_rps}
                                  for name, t in measurement.targets.items()}
        self.journal.append(record)
        self._remember_step(record)
        return record

    # -- stages --------------------------------------------------------------------------

    def _infrastructure(self, stage):
        self._to(stage, State.V_PROTSESSE, "validating capacity, environment and network")
        capacity_node = Node(Stage.INFRASTRUCTURE, SubStage.CAPACITY)
        if not self.machine.state(capacity_node).perfective:
            self._to(capacity_node, State.V_PROTSESSE, "reading the agents' capacity")
            check = check_capacity(self.plan.infrastructure, self.source.describe())
            if not check.ok:
                return self._block(capacity_node, check.reason, check.evidence,
                                   RunStatus.BLOCKED, verdict_module.ErrorKind.INFRASTRUCTURE)
            self._to(capacity_node, State.ZAVERSHENO, check.reason, check.evidence)
        yield from self._pause()
        rtt = self.source.measure_rtt()
        environment = Node(Stage.INFRASTRUCTURE, SubStage.ENVIRONMENT)
        if not self.machine.state(environment).perfective:
            self._to(environment, State.V_PROTSESSE, "checking every target answers")
            silent = [t.name for t in self.plan.targets
                      if rtt.get(t.name) is None or rtt[t.name].total_count == 0]
            if silent:
                return self._block(environment, f"no answer from {', '.join(silent)}",
                                   {"silent": silent}, RunStatus.BLOCKED,
                                   verdict_module.ErrorKind.INFRASTRUCTURE)
            self._to(environment, State.ZAVERSHENO,
                     f"all {len(self.plan.targets)} targets answer",
                     {name: hist.total_count for name, hist in rtt.items()})
        network = Node(Stage.INFRASTRUCTURE, SubStage.NETWORK)
        if not self.machine.state(network).perfective:
            if not self._network(network, rtt):
                return False
        self._to(stage, State.ZAVERSHENO, "capacity, environment and network validated")
        return True

    def _network(self, node, rtt):
        self._to(node, State.TESTIRUYETSYA, "judging round-trip times to the targets")
        evidence = {name: hist.value_at_percentile(95) / 1000.0 for name, hist in rtt.items()}
        limit = self.plan.infrastructure.rtt_p95_s
        if limit is None:
            self._to(node, State.ZAVERSHENO, "no RTT requirement in the plan; measured p95 "
                     + ", ".join(f"{n} {v:.3f} ms" for n, v in evidence.items()), evidence)
            return True
        confidence = self.plan.gates.confidence / 100.0
        results = [latency_gate(f"{t.name}.rtt.p95", rtt[t.name], 95.0, limit, confidence,
                                "network") for t in self.plan.targets]
        self._record_step("network", "network", results)
        status = combine(results)
        reason = "; ".join(f"{r.name}: {r.reason}" for r in results)
        if status is GateStatus.FAIL:
            return self._block(node, reason, evidence, RunStatus.BLOCKED,
                               verdict_module.ErrorKind.INFRASTRUCTURE)
        if status is GateStatus.INCONCLUSIVE:
            return self._inconclusive(f"{node.title}: {reason}")
        self._to(node, State.PROVERENO, reason, evidence)
        return True

    def static_weights(self):
        """{target: fraction} of the plan's own target weights (performance windows)."""
        total = sum(t.weight for t in self.plan.targets)
        return {t.name: t.weight / total for t in self.plan.targets} if total else \
            {t.name: 1.0 / len(self.plan.targets) for t in self.plan.targets}

    def pair(self, weights):
        """(baseline, canary) names when both carry traffic, else (None, None)."""
        baseline = self.plan.target(TargetRole.BASELINE)
        canary = self.plan.target(TargetRole.CANARY)
        if baseline and canary and weights.get(baseline.name) and weights.get(canary.name):
            return baseline.name, canary.name
        return None, None

    def _performance(self, stage):
        self._to(stage, State.TESTIRUYETSYA, "benchmarking latency, throughput, utilisation")
        latency = Node(Stage.PERFORMANCE, SubStage.LATENCY)
        load = self.plan.load
        if "performance" not in self.windows or not self.machine.state(latency).perfective:
            weights = self.static_weights()
            judged = [name for name, share in weights.items() if share > 0]
            if self.plan.monitoring.smoke:
                self._to(latency, State.V_PROTSESSE, "smoke test at 10% of the rate")
                smoke_s = max(load.interval_s, 5.0)
                status, results, _ = yield from self.judge_window(
                    "smoke", weights, load.rate * 0.1, smoke_s, smoke_s, judged, (None, None),
                    only_errors=True)
                if status is GateStatus.FAIL:
                    return self._block(latency, "smoke test failed: " + failed_reasons(results))
            self._to(latency, State.VYPOLNYAETSYA,
                     f"load at {load.rate:g} req/s for {format_duration(load.duration_s)}")
            if load.warmup_s:
                self.source.start_window(weights, load.rate)
                yield from self._hold(load.warmup_s)
            self._to(latency, State.TESTIRUYETSYA, "measuring the performance window"
                     + (" after warm-up" if load.warmup_s else ""))
            status, results, measurement = yield from self.judge_window(
                "performance", weights, load.rate, load.duration_s, load.duration_s, judged,
                self.pair(weights))
            self._record_step("performance", "performance", results, measurement)
        results = self.windows["performance"]
        groups = ((latency, ".latency.", State.PROVERENO),
                  (Node(Stage.PERFORMANCE, SubStage.THROUGHPUT), ("throughput.", ".error_rate"),
                   State.PROVERENO),
                  (Node(Stage.PERFORMANCE, SubStage.RESOURCES), ("saturation.", "relative."),
                   State.PROVERENO))
        for node, marks, done in groups:
            if self.machine.state(node).perfective:
                continue
            marks = (marks,) if isinstance(marks, str) else marks
            group = [r for r in results if any(m in r.name or r.name.startswith(m)
                                               for m in marks)]
            self._to(node, State.TESTIRUYETSYA, f"judging {len(group)} gates of the "
                                                "performance window")
            status = combine(group)
            if status is GateStatus.FAIL:
                return self._block(node, failed_reasons(group), {"gates": [r.name for r in group]})
            if status is GateStatus.INCONCLUSIVE:
                return self._inconclusive(f"{node.title}: " + inconclusive_reasons(group))
            self._to(node, done, f"{len(group)} gates passed" if group else
                     "no gates of this kind in the plan", {"gates": [r.name for r in group]})
        self._to(stage, State.PROVERENO, "performance gates passed")
        return True

    def _path(self, path):
        return path if not path or os.path.isabs(path) else os.path.join(self.base_dir, path)

    def _monitoring(self, stage):
        self._to(stage, State.V_PROTSESSE, "checking monitoring evidence")
        mon = self.plan.monitoring
        production = self.plan.deployment.environment is Environment.PRODUCTION
        checks = (
            (SubStage.METRICS, mon.metrics_url, lambda: check_metrics(mon.metrics_url)),
            (SubStage.ALERTING, mon.alert_rules or production, lambda: check_alert_rules(
                self._path(mon.alert_rules), self.plan.gates, mon.alert_interval_s)),
            (SubStage.DASHBOARDS, mon.dashboard or production,
             lambda: check_dashboard(self._path(mon.dashboard))))
        for sub, wanted, run_check in checks:
            node = Node(Stage.MONITORING, sub)
            if self.machine.state(node).perfective:
                continue
            self._to(node, State.V_PROTSESSE, f"checking {node.title.lower()}")
            if not wanted:
                self._to(node, State.ZAVERSHENO, "nothing named in the plan; not required for "
                         f"{self.plan.deployment.environment.value}")
                continue
            check = run_check()
            if not check.ok:
                return self._block(node, check.reason, check.evidence)
            self._to(node, State.PROVERENO, check.reason, check.evidence)
            yield from self._pause()
        self._to(stage, State.ODOBRENO, "monitoring evidence verified")
        return True

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
                                     "phase": "approval", "window": None, "status": "WAITING",
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

