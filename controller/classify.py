"""Classification -> requirements: the seed's classifier framework as one table of rules.

Each classifier (type, risk, environment, strategy) contributes defaults (a value for a key
the plan may leave out, with the reason quoted from the seed) and hard requirements (things a
plan of that class must declare).  ``classify(plan)`` fills the defaults into an effective
plan and reports, for every key, whether the plan left it to the default, tightened it or
loosened it.  Loosening a default of a HIGH-risk plan is an error unless the plan lists the
key under ``overrides`` with a reason; the override is then reported in explain and the
verdict.  ``requirement_issues(plan)`` is what the loader calls to reject incomplete plans.

Percentile-ratio limits are a set, not independent keys: below HIGH risk a plan that names
``gates.relative.ratios`` (at least one) judges exactly those, and a default ratio it leaves
out is REPLACED, not filled (``ratios: {}`` names none, so it keeps the defaults).  At HIGH
risk every default ratio stays, and only a listed override may loosen one.
"""
import enum
from dataclasses import dataclass, replace

from loadgate.controller.plan_model import (
    DeploymentType, Environment, RelativeTest, Risk, Strategy, TargetRole, TrafficShift)
from loadgate.controller.plan_types import RelativeGates
from loadgate.controller.states import PIPELINE, Stage, SubStage
from loadgate.controller.plan_units import format_duration, format_percent, percentile_key

DEFAULT_CANARY_STEPS = (5.0, 25.0, 50.0, 100.0)


class Tighter(enum.Enum):
    """Which direction of a value is the stricter one."""

    LOWER = "lower"
    HIGHER = "higher"
    TRUE = "true"
    EITHER = "either"
    FEWER_FIRST = "steps"


class Disposition(enum.Enum):
    FILLED = "filled by classification"
    KEPT = "as the default"
    TIGHTENED = "tightened by the plan"
    LOOSENED = "loosened by the plan"
    REPLACED = "replaced: below HIGH risk the plan's relative.ratios are the whole set"


@dataclass(frozen=True)
class Default:
    key: str
    value: object
    reason: str
    tighter: Tighter


@dataclass(frozen=True)
class Decision:
    """What happened to one default: the effective value and how it came about."""

    key: str
    default: object
    value: object
    reason: str
    disposition: Disposition
    override_reason: str = None

    def shown(self, value):
        return _show(self.key, value)


@dataclass(frozen=True)
class Classification:
    plan: object
    decisions: tuple
    approval_required: bool
    staging_evidence_required: bool
    requirements: tuple
    warnings: tuple


def _has_pair(plan):
    return plan.target(TargetRole.BASELINE) is not None and \
        plan.target(TargetRole.CANARY) is not None


def defaults_for(plan):
    """Every default the classification of plan sets, in the order explain prints them."""
    d = plan.deployment
    found = [Default("gates.confidence", 95.0, "loadgate: a percentile claim is made at 95% "
                     "confidence (minimum-sample rule)", Tighter.HIGHER),
             Default("gates.error_rate", 5.0, "seed decision matrix: error_rate <5%",
                     Tighter.LOWER),
             Default("gates.latency.p95", 0.2, "seed decision matrix: latency_p95 <200ms",
                     Tighter.LOWER)]
    if d.risk is not Risk.LOW:
        found += [Default("gates.saturation.cpu", 80.0, "seed decision matrix: saturation "
                          "<80%", Tighter.LOWER),
                  Default("gates.throughput.min_ratio", 95.0, "seed: LowThroughput alert; "
                          "a generator that cannot offer the rate measures nothing",
                          Tighter.HIGHER),
                  Default("monitoring.smoke", True, f"seed: {d.risk.value} gate requirement "
                          "includes smoke tests", Tighter.TRUE)]
    if d.type is DeploymentType.ROLLBACK:
        found.append(Default("monitoring.smoke", True, "seed: ROLLBACK testing is smoke "
                             "tests only", Tighter.TRUE))
    if plan.infrastructure.gpu is not None and d.risk is not Risk.LOW:
        found += [Default("gates.saturation.gpu_utilization", 80.0, "seed decision matrix: "
                          "saturation <80%", Tighter.LOWER),
                  Default("gates.saturation.gpu_memory", 90.0, "seed: GPUOutOfMemory alert "
                          "at GPU memory usage > 90%", Tighter.LOWER)]
    if _has_pair(plan) and (d.risk is not Risk.LOW or plan.gates.relative is not None):
        found += [Default("gates.relative.test", RelativeTest.MANN_WHITNEY.value, "canary vs "
                          "baseline on the full latency distributions, not averages",
                          Tighter.EITHER),
                  Default("gates.relative.alpha", 1.0, "loadgate: 1% false-rollback rate per "
                          "step", Tighter.HIGHER),
                  Default("gates.relative.min_effect", 5.0, "loadgate: ignore shifts "
                          "smaller than P(canary slower) = 55%", Tighter.LOWER),
                  Default("gates.relative.ratios.p99", 1.2, "seed: monitor latency p99; "
                          "canary p99 within 20% of baseline", Tighter.LOWER)]
    approval_reason = None
    if d.risk is Risk.HIGH:
        approval_reason = "seed: HIGH gate requirement is manual approval + 24hr monitoring"
    elif d.type is DeploymentType.MIGRATION:
        approval_reason = "seed: MIGRATION risk is CRITICAL"
    elif d.environment is Environment.PRODUCTION:
        approval_reason = "seed: PRODUCTION gate requires staging validation + approvals"
    if approval_reason:
        found.append(Default("approval.required", True, approval_reason, Tighter.TRUE))
    if d.risk is Risk.HIGH:
        found.append(Default("monitoring.post_deploy_window", 86400.0, "seed: HIGH gate "
                             "requirement is manual approval + 24hr monitoring",
                             Tighter.HIGHER))
    elif d.environment is Environment.PRODUCTION:
        found.append(Default("monitoring.post_deploy_window", 3600.0, "seed: PRODUCTION "
                             "is monitored 24/7; loadgate watches the first hour",
                             Tighter.HIGHER))
    else:
        found.append(Default("monitoring.post_deploy_window", 300.0, "loadgate: a short "
                             "watch after deploying outside production", Tighter.HIGHER))
    if d.type is DeploymentType.HOTFIX:
        found.append(Default("monitoring.alert_interval", 60.0, "seed: HOTFIX monitoring is "
                             "error rate alerts with 1-min interval", Tighter.LOWER))
    else:
        found.append(Default("monitoring.alert_interval", 300.0, "seed: alert rules "
                             "evaluate rates over [5m]", Tighter.LOWER))
    if d.environment is Environment.PRODUCTION:
        found.append(Default("rollback.rto", 300.0, "seed: PRODUCTION rollback <5 min SLA",
                             Tighter.LOWER))
    if d.strategy is Strategy.CANARY:
        found += [Default("canary.steps", DEFAULT_CANARY_STEPS, "seed: CANARY progressive "
                          "traffic shift 5% → 25% → 50% → 100%", Tighter.FEWER_FIRST),
                  Default("canary.hold", 60.0, "seed: monitor metrics at each stage",
                          Tighter.HIGHER),
                  Default("canary.max_hold", 10 * (plan.canary.hold_s or 60.0), "loadgate: a "
                          "step still inconclusive after 10 holds ends the ramp as INCONCLUSIVE",
                          Tighter.LOWER)]
    return _last_wins(found)


def _last_wins(found):
    by_key = {}
    for default in found:
        by_key.pop(default.key, None)
        by_key[default.key] = default
    return list(by_key.values())


def requirements_for(plan):
    """(key path tuple, message, satisfied) for every hard requirement of the classification."""
    d, hooks, found = plan.deployment, plan.hooks, []

    def need(path, message, satisfied):
        found.append((path, message, bool(satisfied)))

    if d.strategy is Strategy.BLUE_GREEN:
        for name in ("switch", "rollback"):
            need(("hooks", name), f"BLUE-GREEN requires a {name} hook (seed: traffic switch, "
                                  "rollback switches back)", getattr(hooks, name))
    if d.strategy is Strategy.BIG_BANG:
        need(("downtime_window",), "BIG-BANG requires a declared downtime window (seed: "
                                   "downtime window required)", plan.downtime_window)
    if d.strategy is Strategy.ROLLING:
        need(("rolling", "instances"), "ROLLING requires the number of instances to update "
                                       "one batch at a time", plan.rolling.instances)
    if d.type is DeploymentType.MIGRATION:
        need(("rollback", "script"), "MIGRATION requires a migration rollback script (seed)",
             plan.rollback.script)
    if d.type is DeploymentType.HOTFIX:
        need(("hooks", "rollback"), "HOTFIX requires immediate revert capability: a rollback "
                                    "hook (seed)", hooks.rollback)
    if d.environment is Environment.PRODUCTION:
        need(("rollback",), "PRODUCTION requires a rollback hook or script (seed: rollback "
                            "<5 min SLA, tested in staging)",
             hooks.rollback or plan.rollback.script)
        for key in ("alert_rules", "dashboard"):
            need(("monitoring", key), f"PRODUCTION requires monitoring evidence: {key} (seed: "
                                      "never deploy without monitoring)",
                 getattr(plan.monitoring, key))
    if d.environment is Environment.STAGING:
        need(("rollback",), "STAGING requires a rollback plan (seed: required, tested before "
                            "prod)", hooks.rollback or plan.rollback.script or
             plan.rollback.procedure)
    if d.strategy is Strategy.CANARY and plan.canary.traffic is TrafficShift.HOOK:
        need(("hooks", "rollback"), "a hook-driven canary needs a rollback hook to take the "
                                    "canary's traffic back", hooks.rollback)
    return found


def _get(plan, key):
    if key.startswith("gates.latency.") or key.startswith("gates.relative.ratios."):
        pairs = plan.gates.latency if key.startswith("gates.latency.") else \
            (plan.gates.relative.ratios if plan.gates.relative else ())
        wanted = key.rsplit(".", 1)[1]
        return next((v for p, v in pairs if percentile_key(p) == wanted), None)
    section, name = key.split(".", 1)
    obj = getattr(plan, section)
    for part in name.split("."):
        if obj is None:
            return None
        obj = getattr(obj, _ATTR.get(part, part))
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj if obj != () else None


_ATTR = {"post_deploy_window": "post_deploy_window_s", "alert_interval": "alert_interval_s",
         "rto": "rto_s", "hold": "hold_s", "max_hold": "max_hold_s"}


def _set(plan, key, value):
    if key.startswith("gates.latency."):
        pairs = dict(plan.gates.latency)
        pairs[float(key.rsplit(".p", 1)[1])] = value
        return replace(plan, gates=replace(plan.gates, latency=tuple(sorted(pairs.items()))))
    if key.startswith("gates.relative."):
        relative = plan.gates.relative or RelativeGates()
        name = key.split(".", 2)[2]
        if name.startswith("ratios."):
            pairs = dict(relative.ratios)
            pairs[float(name.rsplit(".p", 1)[1])] = value
            relative = replace(relative, ratios=tuple(sorted(pairs.items())))
        else:
            relative = replace(relative, **{name: RelativeTest(value) if name == "test"
                                            else value})
        return replace(plan, gates=replace(plan.gates, relative=relative))
    parts = key.split(".")
    return _set_path(plan, [_ATTR.get(p, p) for p in parts], value)


def _set_path(obj, parts, value):
    if len(parts) == 1:
        return replace(obj, **{parts[0]: value})
    return replace(obj, **{parts[0]: _set_path(getattr(obj, parts[0]), parts[1:], value)})


def _is_tighter(default, value, tighter):
    if tighter is Tighter.LOWER:
        return value < default
    if tighter is Tighter.HIGHER:
        return value > default
    if tighter is Tighter.TRUE:
        return value is True
    if tighter is Tighter.EITHER:
        return True
    return value[0] <= default[0] and len(value) >= len(default)


def _show(key, value):
    if value is None:
        return "left out"
    if isinstance(value, bool):
        return str(value).lower()
    if key.endswith(("window", "interval", "rto", "hold")) or key.startswith("gates.latency"):
        return format_duration(value)
    if isinstance(value, tuple):
        return " → ".join(format_percent(v) for v in value)
    if key.endswith(("error_rate", "confidence", "alpha", "min_effect", "min_ratio")) or \
            key.startswith("gates.saturation"):
        return format_percent(value)
    return format(value, "g") if isinstance(value, float) else str(value)


def _decide(plan):
    overrides = {o.key: o.reason for o in plan.overrides}
    decisions, problems = [], []
    relative = plan.gates.relative
    own_ratios = plan.deployment.risk is not Risk.HIGH and relative is not None and \
        bool(relative.ratios)
    for default in defaults_for(plan):
        value = _get(plan, default.key)
        if value is None and own_ratios and default.key.startswith("gates.relative.ratios."):
            decisions.append(Decision(default.key, default.value, None, default.reason,
                                      Disposition.REPLACED, overrides.get(default.key)))
            continue
        if value is None:
            decisions.append(Decision(default.key, default.value, default.value,
                                      default.reason, Disposition.FILLED))
            continue
        if isinstance(value, tuple):
            value = tuple(value)
        if value == default.value:
            disposition = Disposition.KEPT
        elif _is_tighter(default.value, value, default.tighter):
            disposition = Disposition.TIGHTENED
        else:
            disposition = Disposition.LOOSENED
        reason = overrides.get(default.key)
        if disposition is Disposition.LOOSENED and plan.deployment.risk is Risk.HIGH \
                and reason is None:
            problems.append((tuple(default.key.split(".")),
                             f"loosens the HIGH-risk default {_show(default.key, default.value)}"
                             f" to {_show(default.key, value)} ({default.reason}); list "
                             f"{default.key!r} under overrides with a reason to allow it"))
        decisions.append(Decision(default.key, default.value, value, default.reason,
                                  disposition, reason))
    known = {d.key for d in decisions}
    for index, override in enumerate(plan.overrides):
        if override.key not in known:
            problems.append((("overrides", index, "key"),
                             f"{override.key!r} is not a default of this classification; "
                             f"known: {', '.join(sorted(known))}"))
    return decisions, problems


def requirement_issues(plan):
    """Every (key path, message) that makes plan unrunnable under its classification."""
    missing = [(path, message) for path, message, ok in requirements_for(plan) if not ok]
    return missing + _decide(plan)[1]


def classify(plan):
    """The Classification of a valid plan: its effective plan with every default filled."""
    decisions, _ = _decide(plan)
    effective = plan
    for decision in decisions:
        if decision.disposition is Disposition.FILLED:
            effective = _set(effective, decision.key, decision.value)
    warnings = []
    d = plan.deployment
    if d.environment is Environment.PRODUCTION and not plan.staging_evidence:
        warnings.append("PRODUCTION without staging_evidence: the Deployment stage will be "
                        "ZABLOKIROVANO until a passed STAGING run of "
                        f"{d.id} is named")
    for decision in decisions:
        if decision.disposition is Disposition.LOOSENED:
            warnings.append(f"{decision.key} loosened from {decision.shown(decision.default)} "
                            f"to {decision.shown(decision.value)}"
                            + (f" (override: {decision.override_reason})"
                               if decision.override_reason else ""))
    approval = effective.approval.required is True
    return Classification(effective, tuple(decisions), approval,
                          d.environment is Environment.PRODUCTION,
                          tuple(message for _, message, _ in requirements_for(plan)),
                          tuple(warnings))


def rollout_node(plan):
    """The sub-stage that rolls the deployment out: PRODUCTION in production, else STAGING."""
    return SubStage.PRODUCTION if plan.deployment.environment is Environment.PRODUCTION \
        else SubStage.STAGING


def stage_graph(plan):
    """((Stage, (SubStage, ...)), ...) this plan runs, in order.

    In production, Staging Deployment checks the staging evidence and Production Deployment
    rolls out; elsewhere this run is the pre-production rollout, done by Staging Deployment.
    """
    graph = []
    for stage, subs, _ in PIPELINE:
        if stage is Stage.DEPLOYMENT and plan.deployment.environment is not Environment.PRODUCTION:
            subs = tuple(s for s in subs if s is not SubStage.PRODUCTION)
        graph.append((stage, subs))
    return tuple(graph)
