"""The seed's aspectual state machine: stages, states, ONE transition table, ONE apply function.

States carry the seed's markers as values ("SV:ZAVERSHENO", "NSV:TESTIRUYETSYA", ...).  The
nodes are the four stages and their sub-stages, in the order the classification's stage
graph gives them.  ``StateMachine.transition`` is the only way a state changes: it looks the
pair (from, to) up in TRANSITIONS, checks the guard of the rule found there, and journals the
transition (time, node, from, to, rule, reason, evidence) before it takes effect.  What it
enforces, from the seed's State Transition Rules:

1. sequential progression: a node starts (OZHIDAET -> NSV) only when its parent is NSV and the
   node before it is SV; a parent completes (NSV -> SV) only when its children are SV;
2. rollback path: AVARIYA -> OTKAT -> the previous SV state: the last known-good state
   before the node (the final SV of the node before it, else its parent's previous SV);
3. blocking cascade: a parent entering ZABLOKIROVANO puts its unfinished children in OZHIDAET
   (each its own journaled transition);
4. monitoring loop: SV:RAZVERNUTO goes on to NSV:MONITORITSYA (or to AVARIYA), nothing else.

Anything else raises IllegalTransition; nothing is ever silently ignored.
"""
import enum
from dataclasses import dataclass

from loadgate.controller.journal import RecordKind
from loadgate.native.errors import LoadgateError


class State(enum.Enum):
    ZAVERSHENO = "SV:ZAVERSHENO"
    PROVERENO = "SV:PROVERENO"
    ODOBRENO = "SV:ODOBRENO"
    RAZVERNUTO = "SV:RAZVERNUTO"
    V_PROTSESSE = "NSV:V_PROTSESSE"
    VYPOLNYAETSYA = "NSV:VYPOLNYAETSYA"
    TESTIRUYETSYA = "NSV:TESTIRUYETSYA"
    MONITORITSYA = "NSV:MONITORITSYA"
    ZABLOKIROVANO = "ZABLOKIROVANO"
    OZHIDAET = "OZHIDAET"
    OTKAT = "OTKAT"
    AVARIYA = "AVARIYA"

    @property
    def perfective(self):
        return self.value.startswith("SV:")

    @property
    def imperfective(self):
        return self.value.startswith("NSV:")

    @property
    def marker(self):
        return f"[{self.value}]"


SV = tuple(s for s in State if s.perfective)
NSV = tuple(s for s in State if s.imperfective)


class Stage(enum.Enum):
    INFRASTRUCTURE = "infrastructure"
    PERFORMANCE = "performance"
    MONITORING = "monitoring"
    DEPLOYMENT = "deployment"


class SubStage(enum.Enum):
    CAPACITY = "capacity"
    ENVIRONMENT = "environment"
    NETWORK = "network"
    LATENCY = "latency"
    THROUGHPUT = "throughput"
    RESOURCES = "resources"
    METRICS = "metrics"
    ALERTING = "alerting"
    DASHBOARDS = "dashboards"
    STAGING = "staging"
    PRODUCTION = "production"
    POST_DEPLOY = "post_deploy"


TITLES = {
    Stage.INFRASTRUCTURE: "Infrastructure Validation",
    Stage.PERFORMANCE: "Performance Benchmarking",
    Stage.MONITORING: "Monitoring Setup",
    Stage.DEPLOYMENT: "Deployment Execution",
    SubStage.CAPACITY: "Capacity Planning",
    SubStage.ENVIRONMENT: "Environment Setup",
    SubStage.NETWORK: "Network Configuration",
    SubStage.LATENCY: "Latency Testing",
    SubStage.THROUGHPUT: "Throughput Testing",
    SubStage.RESOURCES: "Resource Utilization",
    SubStage.METRICS: "Metrics Collection",
    SubStage.ALERTING: "Alerting Configuration",
    SubStage.DASHBOARDS: "Dashboard Creation",
    SubStage.STAGING: "Staging Deployment",
    SubStage.PRODUCTION: "Production Deployment",
    SubStage.POST_DEPLOY: "Post-Deploy Validation",
}

# The seed's pipeline: each stage's sub-stages and the SV state it outputs when done.
PIPELINE = (
    (Stage.INFRASTRUCTURE, (SubStage.CAPACITY, SubStage.ENVIRONMENT, SubStage.NETWORK),
     State.ZAVERSHENO),
    (Stage.PERFORMANCE, (SubStage.LATENCY, SubStage.THROUGHPUT, SubStage.RESOURCES),
     State.PROVERENO),
    (Stage.MONITORING, (SubStage.METRICS, SubStage.ALERTING, SubStage.DASHBOARDS),
     State.ODOBRENO),
    (Stage.DEPLOYMENT, (SubStage.STAGING, SubStage.PRODUCTION, SubStage.POST_DEPLOY),
     State.RAZVERNUTO),
)
STAGE_OUTPUT = {stage: output for stage, _, output in PIPELINE}


class Rule(enum.Enum):
    START = "sequential progression: a waiting node starts"
    PROGRESS = "a running node changes activity"
    COMPLETE = "sequential progression: NSV -> SV"
    APPROVE = "a verified node is approved"
    BLOCK = "blocked by a dependency"
    CASCADE = "blocking cascade: parent ZABLOKIROVANO -> children OZHIDAET"
    UNBLOCK = "the blocking dependency is resolved"
    EMERGENCY = "emergency: a gate or hook failed"
    ROLLBACK = "rollback path: AVARIYA -> OTKAT"
    RESTORE = "rollback path: OTKAT -> previous SV"
    MONITOR = "monitoring loop: SV:RAZVERNUTO -> NSV:MONITORITSYA"


def _table():
    table = {}
    for active in NSV:
        table[(State.OZHIDAET, active)] = Rule.START
        table[(active, State.ZABLOKIROVANO)] = Rule.BLOCK
        table[(active, State.OZHIDAET)] = Rule.CASCADE
        table[(active, State.AVARIYA)] = Rule.EMERGENCY
        for other in NSV:
            if other is not active:
                table[(active, other)] = Rule.PROGRESS
        for done in SV:
            table[(active, done)] = Rule.COMPLETE
    table[(State.OZHIDAET, State.ZABLOKIROVANO)] = Rule.BLOCK
    table[(State.ZABLOKIROVANO, State.OZHIDAET)] = Rule.UNBLOCK
    table[(State.PROVERENO, State.ODOBRENO)] = Rule.APPROVE
    table[(State.RAZVERNUTO, State.MONITORITSYA)] = Rule.MONITOR
    table[(State.RAZVERNUTO, State.AVARIYA)] = Rule.EMERGENCY
    table[(State.AVARIYA, State.OTKAT)] = Rule.ROLLBACK
    table[(State.OTKAT, State.AVARIYA)] = Rule.EMERGENCY
    for done in SV:
        table[(State.OTKAT, done)] = Rule.RESTORE
    return table


# THE transition table: (from, to) -> the rule that allows it.  Guards in _check.
TRANSITIONS = _table()


class IllegalTransition(LoadgateError):
    """A state change the seed's rules do not allow."""


@dataclass(frozen=True)
class Node:
    stage: Stage
    sub: SubStage = None

    @property
    def key(self):
        return self.stage.value if self.sub is None else f"{self.stage.value}.{self.sub.value}"

    @property
    def title(self):
        return TITLES[self.sub or self.stage]

    @classmethod
    def parse(cls, key):
        stage, _, sub = key.partition(".")
        return cls(Stage(stage), SubStage(sub) if sub else None)


class StateMachine:
    """The states of one run's nodes; ``transition`` is the only way to change them.

    ``graph`` is ((Stage, (SubStage, ...)), ...) in execution order (classify's stage graph);
    every node starts in OZHIDAET.  ``clock()`` returns epoch seconds for journal records.
    """

    def __init__(self, graph, journal, clock):
        self.journal = journal
        self.clock = clock
        self.order = []
        self.children = {}
        self.parent = {}
        for stage, subs in graph:
            top = Node(stage)
            self.order.append(top)
            self.children[top] = [Node(stage, sub) for sub in subs]
            for child in self.children[top]:
                self.parent[child] = top
        self.states = {node: State.OZHIDAET for node in self.nodes()}

    def nodes(self):
        for top in self.order:
            yield top
            yield from self.children[top]

    def state(self, node):
        return self.states[node]

    def _previous(self, node):
        siblings = self.children[self.parent[node]] if node in self.parent else self.order
        index = siblings.index(node)
        return siblings[index - 1] if index > 0 else None

    def previous_sv(self, node):
        """The SV state a rollback of node returns to: the last known-good state before it
        (the final SV of the node before it, else its parent's previous SV), or None."""
        before = self._previous(node)
        if before is not None and self.states[before].perfective:
            return self.states[before]
        if node in self.parent:
            return self.previous_sv(self.parent[node])
        return None

    def _check(self, node, rule, source, target):
        parent = self.parent.get(node)
        if rule is Rule.START:
            if parent is not None and not self.states[parent].imperfective:
                raise IllegalTransition(f"{node.key} cannot start while {parent.key} is "
                                        f"{self.states[parent].value}")
            before = self._previous(node)
            if before is not None and not self.states[before].perfective:
                raise IllegalTransition(f"{node.key} cannot start before {before.key} is SV "
                                        f"(it is {self.states[before].value})")
        elif rule is Rule.COMPLETE and self.children.get(node):
            waiting = [child.key for child in self.children[node]
                       if not self.states[child].perfective
                       and not (target is State.RAZVERNUTO and child.sub is SubStage.POST_DEPLOY)]
            if waiting:
                raise IllegalTransition(f"{node.key} cannot become {target.value} while "
                                        f"{', '.join(waiting)} are not SV")
        elif rule is Rule.CASCADE:
            if parent is None or self.states[parent] is not State.ZABLOKIROVANO:
                raise IllegalTransition(f"{node.key} may only return to OZHIDAET when its "
                                        f"parent is ZABLOKIROVANO")
        elif rule is Rule.RESTORE:
            wanted = self.previous_sv(node)
            if target is not wanted:
                raise IllegalTransition(f"{node.key} rolls back to its previous SV "
                                        f"({wanted.value if wanted else 'none'}), not "
                                        f"{target.value}")

    def rule_for(self, node, target):
        """The Rule that allows node to move to target now; IllegalTransition otherwise."""
        source = self.states[node]
        rule = TRANSITIONS.get((source, target))
        if rule is None:
            raise IllegalTransition(f"{node.key}: {source.value} -> {target.value} is not a "
                                    f"transition of the seed's state machine")
        self._check(node, rule, source, target)
        return rule

    def transition(self, node, target, reason, evidence=None, journaled=None):
        """THE way a state changes: checks the table and the rule's guard, journals, applies.

        Returns the journal record.  Raises IllegalTransition (and changes nothing) if the
        seed's rules forbid it.  A parent entering ZABLOKIROVANO cascades OZHIDAET to its
        unfinished children, each its own transition.  ``journaled`` is a record read back
        from the journal on resume: it is checked the same way but not written again.
        """
        source = self.states[node]
        rule = self.rule_for(node, target)
        record = journaled or {
            "kind": RecordKind.TRANSITION.value, "time": self.clock(), "node": node.key,
            "stage": node.stage.value, "title": node.title, "from": source.value,
            "to": target.value, "rule": rule.name, "reason": reason, "evidence": evidence or {}}
        if journaled is None:
            self.journal.append(record)
        self.states[node] = target
        if target is State.ZABLOKIROVANO and journaled is None:
            for child in self.children.get(node, ()):
                if self.states[child].imperfective:
                    self.transition(child, State.OZHIDAET, f"blocked parent: {reason}",
                                    {"parent": node.key})
        return record

    def replay(self, record):
        """Re-applies a journaled transition (resume) through transition(); the cascades it
        caused follow it in the journal and are replayed as their own records."""
        try:
            node = Node.parse(record["node"])
            source, target = State(record["from"]), State(record["to"])
        except (KeyError, ValueError) as exc:
            raise IllegalTransition(f"journal replay: not a transition record ({exc})") from None
        if self.states.get(node) is not source:
            raise IllegalTransition(f"journal replay: {node.key} is "
                                    f"{self.states.get(node)}, the journal says "
                                    f"{record['from']}")
        self.transition(node, target, record.get("reason"), journaled=record)

    def snapshot(self):
        """{node key: state value} of every node."""
        return {node.key: self.states[node].value for node in self.nodes()}
