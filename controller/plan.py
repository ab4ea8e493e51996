"""Loading and strictly validating a plan (``apiVersion: loadgate/v1``).

``load_plan(path)`` / ``parse_plan(text, filename)`` return a frozen ``Plan`` or raise
``PlanError`` carrying every ``PlanIssue`` found (file, line, column, key path, message);
``str(error)`` lists them one per line as ``FILE:LINE:COL: key.path: message``.  Three
layers of checks run, and all their findings are reported together: the format (unknown
keys, wrong types, impossible values: plan_format), the cross-field rules below (weights
increasing, one baseline per canary, ...), and the requirements of the classification
(classify: e.g. BIG-BANG needs a downtime window).
"""
import datetime
from dataclasses import dataclass

import yaml

from loadgate.controller import classify
from loadgate.controller.plan_format import PLAN_SPEC
from loadgate.controller.plan_model import (  # noqa: F401  (re-exported vocabulary)
    AgentLossPolicy, Arrival, DeploymentType, Environment, HttpMethod, RelativeTest, Risk,
    RotateMode, Strategy, TargetRole, TrafficShift)
from loadgate.controller.plan_spec import validate
from loadgate.controller.plan_types import (  # noqa: F401  (re-exported model)
    ApprovalPlan, CanaryPlan, CpuRequirement, Deployment, DowntimeWindow, GatesPlan,
    GpuRequirement, Hook, HooksPlan, InfrastructurePlan, KneePlan, LoadPlan, MonitoringPlan,
    Override,
    Plan, RateStep, RelativeGates, RequestPlan, RollbackPlan, RollingPlan, SaturationLimits,
    TargetPlan, ThroughputLimit, build_plan)
from loadgate.native.errors import ConfigError


@dataclass(frozen=True)
class PlanIssue:
    file: str
    line: int
    column: int
    key_path: str
    message: str

    def __str__(self):
        return f"{self.file}:{self.line}:{self.column}: {self.key_path or '<plan>'}: " \
               f"{self.message}"


class PlanError(ConfigError):
    """A plan that cannot be run; ``issues`` lists every problem found."""

    def __init__(self, issues):
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class _Marks:
    """Where each key path of a YAML document starts (1-based line and column)."""

    def __init__(self, filename):
        self.filename = filename
        self.keys = {}
        self.values = {}

    def locate(self, path):
        for depth in range(len(path), -1, -1):
            prefix = tuple(path[:depth])
            mark = self.keys.get(prefix) or self.values.get(prefix)
            if mark:
                return mark
        return (0, 0)

    def issue(self, path, message):
        line, column = self.locate(path)
        return PlanIssue(self.filename, line, column, dotted(path), message)


def dotted(path):
    """key.path[2].name form of a key path tuple."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text


# A plan is small; this bounds what aliases can expand to ("billion laughs").
MAX_NODES = 100_000


def _compose(text, marks, problems):
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        if isinstance(exc, yaml.reader.ReaderError):
            # A character YAML forbids: the reader gives an offset, not a mark.
            line_start = text.rfind("\n", 0, exc.position) + 1
            where = (text.count("\n", 0, exc.position) + 1, exc.position - line_start + 1)
        problem = getattr(exc, "problem", None) or str(exc)
        problems.append(PlanIssue(marks.filename, *where, "", f"YAML syntax: {problem}"))
        return None
    if node is None:
        problems.append(PlanIssue(marks.filename, 1, 1, "", "the plan is empty"))
        return None
    constructor = yaml.constructor.SafeConstructor()
    budget = [MAX_NODES]
    active = set()

    def scalar(node, path):
        try:
            return constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            where = (node.start_mark.line + 1, node.start_mark.column + 1)
            problems.append(PlanIssue(marks.filename, *where, dotted(path),
                                      f"bad value: {exc}"))
            return None

    def walk(node, path):
        marks.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        budget[0] -= 1
        if budget[0] < 0 or id(node) in active:
            if budget[0] == -1 or id(node) in active:
                problems.append(marks.issue(path, "aliases make the document recursive or "
                                                  f"larger than {MAX_NODES} nodes"))
            return None
        if isinstance(node, yaml.MappingNode):
            active.add(id(node))
            result = {}
            for key_node, value_node in node.value:
                key = scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, (str, int, float, bool)):
                    where = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                    problems.append(PlanIssue(marks.filename, *where, dotted(path),
                                              "mapping keys must be scalars"))
                    continue
                key_path = path + (key,)
                if key in result:
                    marks.keys[key_path] = (key_node.start_mark.line + 1,
                                            key_node.start_mark.column + 1)
                    problems.append(marks.issue(key_path, f"duplicate key {key!r}"))
                    continue
                marks.keys[key_path] = (key_node.start_mark.line + 1,
                                        key_node.start_mark.column + 1)
                result[key] = walk(value_node, key_path)
            active.discard(id(node))
            return result
        if isinstance(node, yaml.SequenceNode):
            active.add(id(node))
            items = [walk(item, path + (index,)) for index, item in enumerate(node.value)]
            active.discard(id(node))
            return items
        return scalar(node, path)

    return walk(node, ())


def parse_plan(text, filename="<plan>"):
    """The Plan in YAML text; PlanError listing every problem, each with line and key path."""
    marks = _Marks(filename)
    problems = []
    data = _compose(text, marks, problems)
    if problems:
        raise PlanError(problems)
    return _plan_from(data, marks)


def load_plan(path):
    """The Plan in the YAML file at path; PlanError (a ConfigError) if it is not valid."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise PlanError([PlanIssue(str(path), 0, 0, "", f"cannot read plan: "
                                                         f"{exc.strerror}")]) from exc
    return parse_plan(text, str(path))


def plan_from_data(data, source="<dict>"):
    """The Plan of an already-parsed document (dict), validated like a YAML file."""
    return _plan_from(data, _Marks(source))


def _plan_from(data, marks):
    issues = []
    canonical = validate(data, PLAN_SPEC, (), issues)
    if canonical is None:
        raise PlanError([marks.issue((), "the plan must be a mapping")])
    problems = [marks.issue(issue.path, issue.message) for issue in issues]
    reported = {issue.path for issue in issues}
    problems += [marks.issue(path, message) for path, message in _cross_checks(canonical)
                 if path not in reported]
    if problems:
        raise PlanError(sorted(problems, key=lambda issue: (issue.line, issue.column)))
    plan = build_plan(canonical, marks.filename)
    problems = [marks.issue(path, message)
                for path, message in classify.requirement_issues(plan)]
    if problems:
        raise PlanError(sorted(problems, key=lambda issue: (issue.line, issue.column)))
    return plan


def _cross_checks(data):
    """(path, message) for each rule that spans several fields."""
    found = []
    targets = [t for t in data.get("targets") or [] if t]
    names = [t.get("name") for t in targets]
    for index, name in enumerate(names):
        if name in names[:index]:
            found.append((("targets", index, "name"), f"duplicate target name {name!r}"))
    roles = [t.get("role", TargetRole.MAIN.value) for t in targets]
    for role in (TargetRole.BASELINE.value, TargetRole.CANARY.value):
        if roles.count(role) > 1:
            index = len(roles) - 1 - roles[::-1].index(role)
            found.append((("targets", index, "role"), f"only one {role} target is allowed"))
    strategy = (data.get("deployment") or {}).get("strategy")
    canary = data.get("canary") or {}
    split = canary.get("traffic", TrafficShift.SPLIT.value) == TrafficShift.SPLIT.value
    if strategy == Strategy.CANARY.value and split and not (
            TargetRole.BASELINE.value in roles and TargetRole.CANARY.value in roles):
        found.append((("targets",), "a CANARY plan whose agents split the traffic needs one "
                                    "target with role baseline and one with role canary"))
    if (data.get("gates") or {}).get("relative") is not None and not (
            TargetRole.BASELINE.value in roles and TargetRole.CANARY.value in roles):
        found.append((("gates", "relative"), "relative gates need a baseline and a canary "
                                             "target"))
    found += _load_checks(data.get("load") or {})
    steps = [step for step in canary.get("steps") or [] if step is not None]
    for index in range(1, len(steps)):
        if steps[index] <= steps[index - 1]:
            found.append((("canary", "steps", index),
                          f"canary weights must increase: {steps[index]:g}% follows "
                          f"{steps[index - 1]:g}%"))
    if steps and steps[-1] != 100:
        found.append((("canary", "steps", len(steps) - 1),
                      f"the last canary step must be 100%, got {steps[-1]:g}%"))
    if canary.get("hold") and canary.get("max_hold") and canary["max_hold"] < canary["hold"]:
        found.append((("canary", "max_hold"), "must not be shorter than hold"))
    if not split and strategy == Strategy.CANARY.value and not (
            (data.get("hooks") or {}).get("traffic_shift")):
        found.append((("hooks", "traffic_shift"), "canary traffic: hook needs a "
                                                  "traffic_shift hook"))
    for name, hook in (data.get("hooks") or {}).items():
        if hook is not None and bool(hook.get("command")) == bool(hook.get("webhook")):
            found.append((("hooks", name), "a hook needs exactly one of command or webhook"))
    if data.get("agents") and data.get("local_agents"):
        found.append((("local_agents",), "give either agents or local_agents, not both"))
    found += _window_checks(data.get("downtime_window"))
    knee = data.get("knee") or {}
    if knee.get("start") and knee.get("max") and knee["max"] < knee["start"]:
        found.append((("knee", "max"), "must not be below start"))
    return found


def _load_checks(load):
    found = []
    arrival = load.get("arrival", Arrival.CONSTANT.value)
    if arrival in (Arrival.CONSTANT.value, Arrival.POISSON.value, Arrival.RAMP.value) \
            and load.get("rate") is None:
        found.append((("load", "rate"), f"is required for {arrival} arrivals"))
    if arrival == Arrival.RAMP.value and load.get("ramp_to") is None:
        found.append((("load", "ramp_to"), "is required for ramp arrivals"))
    if arrival == Arrival.STEPS.value and not load.get("steps"):
        found.append((("load", "steps"), "is required for steps arrivals"))
    if arrival == Arrival.CLOSED.value and load.get("concurrency") is None:
        found.append((("load", "concurrency"), "is required for closed-loop arrivals"))
    if arrival != Arrival.CLOSED.value:
        for key in ("concurrency", "think_time"):
            if load.get(key):
                found.append((("load", key), "only applies to closed-loop arrivals"))
    if load.get("connections") and load.get("max_connections") and \
            load["max_connections"] < load["connections"]:
        found.append((("load", "max_connections"), "must not be below connections"))
    return found


def _window_checks(window):
    if not window or None in (window.get("start"), window.get("end")):
        return []
    found, times = [], {}
    for key in ("start", "end"):
        try:
            times[key] = datetime.datetime.fromisoformat(window[key])
        except ValueError:
            found.append((("downtime_window", key), f"not an ISO 8601 time: {window[key]!r}"))
    if len(times) == 2:
        try:
            if times["end"] <= times["start"]:
                found.append((("downtime_window", "end"), "must be after start"))
        except TypeError:
            found.append((("downtime_window", "end"), "start and end must both carry a "
                                                      "time zone, or neither"))
    return found
