"""What the Controller service says about a run, in controller.proto's messages.

``RunView`` mirrors what a watcher sees of one run (stage markers, canary weight, approval
wait, verdict) and is updated from the run's journal records, the same records whichever
process wrote them; ``run_info()`` is the RunInfo of that state.  ``transition_message``
turns a journaled transition into a Transition; ``interval_stats`` turns a merged interval
(merge.MergedInterval) into IntervalStats: percentiles of the merged latency histogram and
the histogram itself, encoded once, never averaged percentiles.
"""
import json
import os

from loadgate.controller.classify import classify, stage_graph
from loadgate.controller.journal import RecordKind, read_journal
from loadgate.controller.merge import WIRE_OF_OUTCOME, Metric
from loadgate.controller.plan import Plan
from loadgate.controller.plan_model import TargetRole
from loadgate.controller.readiness import JOURNAL_NAME
from loadgate.controller.states import Node, State, StateMachine
from loadgate.controller.verdict import RunStatus
from loadgate.proto.loadgate.v1 import common_pb2, controller_pb2

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
_PERCENTILE_FIELDS = ("p50_us", "p90_us", "p95_us", "p99_us", "p999_us")
NS = 1_000_000_000


class RunView:
    """The watched state of one run; mutate it only through the hub's ``apply``."""

    def __init__(self, run_id, run_dir, plan, started_s, live=False):
        self.run_id = run_id
        self.run_dir = os.fspath(run_dir)
        self.plan = plan
        self.deployment_id = plan.deployment.id
        self.canary = next((t.name for t in plan.targets if t.role is TargetRole.CANARY), None)
        self.started_ns = int(started_s * NS)
        effective = classify(plan).plan
        self.nodes = list(StateMachine(stage_graph(effective), None, None).nodes())
        self.steps = tuple(float(w) for w in effective.canary.steps)
        self.states = {node.key: (State.OZHIDAET, self.started_ns) for node in self.nodes}
        self.verdict = ""
        self.canary_weight = 0.0
        self.waiting = False
        self.finished = False
        self.seq = 0  # journal records seen
        # A live run knows the traffic split from its source; a run read back from disk
        # only from the canary steps it journaled.
        self.live = live

    @classmethod
    def from_run_dir(cls, run_dir):
        """The view of a run journaled in run_dir (None if it holds no readiness journal)."""
        records = list(read_journal(os.path.join(run_dir, JOURNAL_NAME)))
        if not records or records[0].get("kind") != RecordKind.PLAN.value:
            return None
        plan = Plan.from_dict(records[0]["plan"], records[0]["source"])
        view = cls(os.path.basename(os.path.normpath(run_dir)), run_dir, plan,
                   records[0]["time"])
        for record in records:
            view.apply(record)
        return view

    def apply(self, record):
        """Takes one journal record into account; returns the Transition it is, or None."""
        self.seq += 1
        kind = record.get("kind")
        if kind == RecordKind.TRANSITION.value:
            self.states[record["node"]] = (State(record["to"]), int(record["time"] * NS))
            return transition_message(record, self.seq)
        if kind == RecordKind.STEP.value:
            if record.get("phase") == "approval" and \
                    str(record.get("status")).lower() == RunStatus.WAITING.value:
                self.waiting = True
            if not self.live and record.get("phase") == "canary" \
                    and record.get("weight") is not None:
                self.canary_weight = float(record["weight"]) \
                    if record.get("status") == "PASS" else 0.0
        elif kind == RecordKind.APPROVAL.value:
            approvers = self.plan.approval.approvers
            if not approvers or record.get("who") in approvers:
                self.waiting = False
        elif kind == RecordKind.ABORT.value:
            self.waiting = False
        elif kind == RecordKind.VERDICT.value:
            self.verdict = record.get("status", "")
            self.waiting = False
            self.finished = RunStatus(record["run_status"]).final
        return None

    def set_weights(self, weights):
        """The traffic split a live run offers now (target name -> fraction)."""
        total = sum(weights.values()) or 1.0
        self.canary_weight = 100.0 * weights.get(self.canary, 0.0) / total if self.canary else 0.0

    def run_info(self):
        info = controller_pb2.RunInfo(
            run_id=self.run_id, deployment_id=self.deployment_id, run_dir=self.run_dir,
            verdict=self.verdict, canary_weight=self.canary_weight,
            waiting_for_approval=self.waiting, started_unix_ns=self.started_ns,
            finished=self.finished)
        for node in self.nodes:
            state, since = self.states[node.key]
            info.stages.add(stage=node.title, parent=_parent_title(node), state=state.value,
                            since_unix_ns=since)
        return info

    def phase(self):
        """What the load is for now: the innermost running node, and the canary step while
        the canary gets traffic (e.g. "deployment.staging, canary step 2/4 (25%)")."""
        running = [node for node in self.nodes if self.states[node.key][0].imperfective]
        phase = running[-1].key if running else ""
        if self.canary_weight:
            steps = list(self.steps)
            weight = self.canary_weight
            canary = f"canary step {steps.index(weight) + 1}/{len(steps)} ({weight:g}%)" \
                if weight in steps else f"canary {weight:g}%"
            phase = f"{phase}, {canary}" if phase else canary
        return phase


def _parent_title(node):
    return Node(node.stage).title if node.sub is not None else ""


def transition_message(record, seq):
    """The Transition of a journaled transition record at journal position ``seq``."""
    node = Node.parse(record["node"])
    return controller_pb2.Transition(
        stage=node.title, from_state=record["from"], to_state=record["to"],
        reason=record.get("reason") or "",
        evidence=json.dumps(record.get("evidence") or {}, sort_keys=True, default=str),
        unix_ns=int(record["time"] * NS), seq=seq)


def target_stats(name, totals, seconds, weight_percent):
    """One target's TargetStats from its merged TargetTotals over ``seconds``."""
    latency = totals.histograms[Metric.LATENCY]
    completed = totals.completed
    stats = controller_pb2.TargetStats(
        name=name, count=completed, rate=completed / seconds if seconds > 0 else 0.0,
        error_rate=totals.errors / completed if completed else 0.0,
        latency=latency.encode_binary(), weight=weight_percent)
    if latency.total_count:
        for field, value in zip(_PERCENTILE_FIELDS, latency.percentiles(PERCENTILES)):
            setattr(stats, field, value)
        stats.max_us = latency.max
    for outcome, count in totals.outcomes.items():
        stats.outcomes.add(outcome=WIRE_OF_OUTCOME[outcome], count=count)
    return stats


def interval_stats(merged, weights, phase):
    """IntervalStats of a MergedInterval; ``weights`` are target shares (fractions)."""
    seconds = max(0, merged.end_ns - merged.start_ns) / NS
    total_weight = sum(weights.values()) or 1.0
    stats = controller_pb2.IntervalStats(
        interval_index=merged.index, start_unix_ns=merged.start_ns, end_unix_ns=merged.end_ns,
        intended_rate=merged.intended / seconds if seconds > 0 else 0.0,
        achieved_rate=merged.completed / seconds if seconds > 0 else 0.0, phase=phase,
        generator=common_pb2.GeneratorHealth(
            cpu_seconds=merged.cpu_seconds, max_lag_us=merged.max_lag_us,
            open_connections=merged.open_connections, saturated=bool(merged.saturated)),
        agents=merged.health.values(),
        saturated_agents=list(merged.saturated), missing_agents=list(merged.missing),
        correction=merged.correction)
    for name, totals in merged.targets.items():
        stats.targets.append(target_stats(name, totals, seconds,
                                          100.0 * weights.get(name, 0.0) / total_weight))
    latest = {}
    for agent_id, sample in merged.telemetry:
        if agent_id not in latest or sample.unix_ns >= latest[agent_id].unix_ns:
            latest[agent_id] = sample
    stats.telemetry.extend(latest.values())
    return stats
