"""The verdict of a readiness run and the files it is written to.

``verdict.json`` (schema_version 1) holds:

- ``status``: PASS | FAIL | INCONCLUSIVE, and ``recommendation`` (the seed's "DEPLOY" /
  "DO NOT DEPLOY") with ``marker``, the state marker that explains it;
- ``run_status``: how the run ended (passed, failed, blocked, inconclusive, aborted);
- ``deployment`` and ``classification`` (every default: value, disposition, reason,
  override reason), ``overrides`` (the loosened ones);
- ``gates``: every gate of every judged window with name, measured, threshold, unit,
  window, samples, status, reason and confidence bounds;
- ``reasons`` and ``next_steps`` (as the seed's "Recommendation ... Next Steps");
- ``stages``: each node's final state and when it got there; ``transitions`` (the journal's
  transition records), ``steps`` (canary steps, batches, switches) and ``decisions``
  (approvals, aborts);
- ``error``: null, or {kind: plan | infrastructure, message} when the run could not measure;
- ``started``/``finished`` (epoch seconds) and ``plan``, the effective plan (defaults filled);
- ``knee``: null, or {rate, stopped_at, reason} when the plan asked for a knee search.

report.md (report_md) and junit.xml (junit) are rendered from the same object.
"""
import enum
import json
import os
from dataclasses import asdict, dataclass, field

from loadgate.controller import junit, report_md
from loadgate.controller.classify import Disposition
from loadgate.controller.gates import GateResult, GateStatus
from loadgate.controller.journal import RecordKind, StepPhase
from loadgate.controller.plan_model import Environment
from loadgate.controller.states import State
from loadgate.native.errors import InfrastructureError

SCHEMA_VERSION = 1


class VerdictStatus(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


class RunStatus(enum.Enum):
    RUNNING = "running"
    WAITING = "waiting"
    PASSED = "passed"
    FAILED = "failed"
    BLOCKED = "blocked"
    INCONCLUSIVE = "inconclusive"
    ABORTED = "aborted"

    @property
    def final(self):
        return self not in (RunStatus.RUNNING, RunStatus.WAITING)


class ErrorKind(enum.Enum):
    PLAN = "plan"
    INFRASTRUCTURE = "infrastructure"


_STATUS = {RunStatus.PASSED: VerdictStatus.PASS, RunStatus.FAILED: VerdictStatus.FAIL,
           RunStatus.BLOCKED: VerdictStatus.INCONCLUSIVE,
           RunStatus.INCONCLUSIVE: VerdictStatus.INCONCLUSIVE,
           RunStatus.ABORTED: VerdictStatus.INCONCLUSIVE}


@dataclass
class Verdict:
    status: VerdictStatus
    run_status: str
    recommendation: str
    marker: str
    deployment: dict
    classification: list
    overrides: list
    gates: list
    reasons: list
    next_steps: list
    stages: list
    transitions: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    decisions: list = field(default_factory=list)
    error: dict = None
    started: float = None
    finished: float = None
    plan: dict = None
    knee: dict = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self):
        data = asdict(self)
        data["status"] = self.status.value
        data["gates"] = [g.to_dict() for g in self.gates]
        return data

    @classmethod
    def from_dict(cls, data):
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported verdict schema_version {data.get('schema_version')}")
        data = dict(data)
        data["status"] = VerdictStatus(data["status"])
        data["gates"] = [GateResult.from_dict(g) for g in data["gates"]]
        return cls(**data)


def _show(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def build(run):
    """The Verdict of a finished Readiness run (readiness.Readiness)."""
    plan, machine = run.plan, run.machine
    records = list(run.journal.records())
    transitions = [r for r in records if r.get("kind") == RecordKind.TRANSITION.value]
    since = {}
    for record in transitions:
        since[record["node"]] = record["time"]
    rolled_back = {r["node"] for r in transitions if r["to"] == "OTKAT"}
    stages = [{"node": node.key, "title": node.title, "state": machine.state(node).value,
               "since": since.get(node.key), "rolled_back": node.key in rolled_back,
               "parent": machine.parent[node].key if node in machine.parent else None}
              for node in machine.nodes()]
    gates = [result for results in run.windows.values() for result in results]
    status = _STATUS[run.status]
    d = plan.deployment
    classification = [{"key": c.key, "default": _show(c.default), "value": _show(c.value),
                       "shown": c.shown(c.value), "shown_default": c.shown(c.default),
                       "disposition": c.disposition.name, "reason": c.reason,
                       "override_reason": c.override_reason}
                      for c in run.classification.decisions]
    verdict = Verdict(
        status=status, run_status=run.status.value,
        recommendation="DEPLOY" if status is VerdictStatus.PASS else "DO NOT DEPLOY",
        marker=_marker(stages, status),
        deployment={"id": d.id, "type": d.type.value, "risk": d.risk.value,
                    "environment": d.environment.value, "strategy": d.strategy.value,
                    "requested_by": d.requested_by, "description": d.description},
        classification=classification,
        overrides=[c for c in classification
                   if c["disposition"] == Disposition.LOOSENED.name],
        gates=gates, reasons=list(run.reasons), next_steps=[], stages=stages,
        transitions=transitions,
        steps=[{k: v for k, v in s.items() if k not in ("gates", "results")}
               for s in run.steps if s.get("phase") != StepPhase.OPENED.value],
        decisions=[r for r in records if r.get("kind") in (RecordKind.APPROVAL.value,
                                                            RecordKind.ABORT.value)],
        error=None if run.error is None else {"kind": run.error.value,
                                              "message": "; ".join(run.reasons)},
        started=run.started, finished=run.clock(), plan=plan.to_dict(), knee=run.knee)
    verdict.next_steps = next_steps(verdict, plan)
    return verdict


def _marker(stages, status):
    states = [State(s["state"]) for s in stages]
    for special in (State.AVARIYA, State.OTKAT, State.ZABLOKIROVANO):
        if special in states:
            return special.marker
    if status is VerdictStatus.PASS:
        return State.RAZVERNUTO.marker
    active = [s for s in states if s.imperfective]
    return active[-1].marker if active else State.OZHIDAET.marker


def next_steps(verdict, plan):
    """The seed-style numbered next steps for a verdict."""
    steps = []
    failed = [g for g in verdict.gates if g.status is GateStatus.FAIL]
    unsure = [g for g in verdict.gates if g.status is GateStatus.INCONCLUSIVE]
    states = {s["node"]: s for s in verdict.stages}
    if verdict.status is VerdictStatus.PASS:
        if plan.deployment.environment is Environment.STAGING:
            steps.append(f"Name this run as staging_evidence in the PRODUCTION plan of "
                         f"{plan.deployment.id} → [SV:PROVERENO]")
        steps.append("Keep the alert rules and dashboard live: monitoring continues "
                      "→ [NSV:MONITORITSYA]")
        return steps
    for gate in failed:
        steps.append(f"Fix {gate.name}: {gate.measured:.4g} {gate.unit} against "
                     f"{gate.threshold:g} {gate.unit} in {gate.window} → [SV:PROVERENO]")
    if any(s["state"] == State.OTKAT.value for s in verdict.stages):
        steps.append("Investigate the rolled-back version with the step's report and "
                     "histograms before re-deploying → [SV:PROVERENO]")
    if any(s["state"] == State.AVARIYA.value for s in verdict.stages):
        steps.append("The rollback did not complete: restore the previous version by hand "
                     "→ [OTKAT]")
    for gate in unsure if verdict.status is VerdictStatus.INCONCLUSIVE else ():
        steps.append(f"Collect more evidence for {gate.name} ({gate.reason}): raise "
                     f"load.rate or the hold → [SV:PROVERENO]")
    staging = states.get("deployment.staging")
    if staging and staging["state"] == State.ZABLOKIROVANO.value and \
            plan.deployment.environment is Environment.PRODUCTION:
        steps.append(f"Run the STAGING plan of {plan.deployment.id} and name its verdict as "
                     "staging_evidence → [SV:PROVERENO]")
    if verdict.run_status == RunStatus.ABORTED.value:
        steps.append("Resolve the reason for the abort, then start a new run")
    if verdict.error and verdict.error["kind"] == ErrorKind.INFRASTRUCTURE.value:
        steps.append("Provide the capacity and reachability the plan requires "
                     "→ [SV:ZAVERSHENO]")
    steps.append("Re-run the readiness check → [SV:ODOBRENO] before scheduling deployment")
    return steps


def write(verdict, run_dir):
    """Writes verdict.json, report.md and junit.xml into run_dir; returns their names."""
    outputs = {"verdict.json": json.dumps(verdict.to_dict(), indent=2, sort_keys=True,
                                          default=_show, allow_nan=False) + "\n",
               "report.md": report_md.render(verdict),
               "junit.xml": junit.render(verdict)}
    for name, text in outputs.items():
        path = os.path.join(run_dir, name)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    return sorted(outputs)


def write_error(run_dir, kind, message, deployment=None):
    """Writes the verdict of a run that could not start (an ErrorKind with its message), so
    ``loadgate gate check`` reports 3 (plan) or 4 (infrastructure); returns the file names."""
    verdict = Verdict(
        status=VerdictStatus.INCONCLUSIVE, run_status=RunStatus.BLOCKED.value,
        recommendation="DO NOT DEPLOY", marker=State.ZABLOKIROVANO.marker,
        deployment=deployment or {"id": "-"}, classification=[], overrides=[], gates=[],
        reasons=[message], next_steps=[f"Fix the {kind.value} error, then run again"],
        stages=[], error={"kind": kind.value, "message": message})
    return write(verdict, run_dir)


def load(run_dir):
    """The Verdict in run_dir/verdict.json; InfrastructureError if missing or unreadable."""
    path = os.path.join(run_dir, "verdict.json") if os.path.isdir(run_dir) else run_dir
    try:
        with open(path, encoding="utf-8") as handle:
            return Verdict.from_dict(json.load(handle))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InfrastructureError(f"no readable verdict at {path}: {exc}") from None

