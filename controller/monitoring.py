"""Prometheus alert rules and a Grafana dashboard derived from a plan's gates.

Every metric an expression names comes from ``loadgate.native.metric_names``, the table the
exporters are built from, so a rule cannot watch a series nothing exports.  Thresholds are the
plan's *effective* gates (classification defaults filled in, ``classify(plan).plan``), so the
alerts watching production say what the readiness verdict checked before it.

    alert_rules(plan, dcgm_names=False) -> list[AlertRule]
    rules_document(plan, dcgm_names=False) -> dict       # the rules file (YAML-ready)
    dashboard(plan, dcgm_names=False) -> dict            # a Grafana dashboard model
    write_monitoring(plan, out_dir, dcgm_names=False) -> (rules_path, dashboard_path)

The seed's four alerts keep their names (HighLatency, LowThroughput, HighErrorRate,
GPUOutOfMemory); the others cover what the gates and the generator add.  Request figures come
from the controller's merged ``loadgate_run_*`` series, node and GPU figures from the agents'.
"""
import enum
import json
import os
import re
from dataclasses import dataclass, field, replace

import yaml

from loadgate.controller.classify import classify
from loadgate.controller.plan_model import TargetRole
from loadgate.controller.plan_units import percentile_key
from loadgate.controller.states import State
from loadgate.native import metric_names as names

RULES_FILE = "loadgate-alerts.yaml"
DASHBOARD_FILE = "loadgate-dashboard.json"
# The seed's GPUOutOfMemory: under 10 % of the framebuffer free.
GPU_OOM_FREE_RATIO = 0.1
# Schedule lag adds straight into latency: beyond a tenth of the tightest latency gate the
# generator, not the target, decides the verdict.
LAG_SHARE_OF_GATE = 0.1
DEFAULT_LAG_LIMIT_S = 0.01
# The seed's rate window.
WINDOW = "5m"
# The seed alerts on low throughput whatever the gates say; without a throughput gate the plan's
# own offered load is the expectation, with the margin classification uses elsewhere.
DEFAULT_MIN_RATIO_PERCENT = 95.0
# The seed's evaluation interval, unless the plan's monitoring.alert_interval asks for faster.
GROUP_INTERVAL_S = 30.0


class AlertName(enum.Enum):
    HIGH_LATENCY = "HighLatency"
    LOW_THROUGHPUT = "LowThroughput"
    HIGH_ERROR_RATE = "HighErrorRate"
    GPU_OUT_OF_MEMORY = "GPUOutOfMemory"
    CPU_SATURATED = "CPUSaturated"
    GPU_SATURATED = "GPUSaturated"
    SM_ACTIVITY_SATURATED = "SMActivitySaturated"
    GPU_MEMORY_SATURATED = "GPUMemorySaturated"
    GPU_UNCORRECTABLE_ECC = "GPUUncorrectableECC"
    GPU_XID_ERRORS = "GPUXidErrors"
    CANARY_LATENCY_REGRESSION = "CanaryLatencyRegression"
    GENERATOR_SATURATED = "GeneratorSaturated"
    SCHEDULE_LAG_HIGH = "ScheduleLagHigh"
    AGENT_LOST = "AgentLost"
    INTERVAL_INCOMPLETE = "IntervalIncomplete"
    STAGE_EMERGENCY = "StageEmergency"
    STAGE_ROLLBACK = "StageRollback"
    STAGE_BLOCKED = "StageBlocked"


class Severity(enum.Enum):
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class AlertRule:
    name: AlertName
    expr: str
    severity: Severity
    summary: str
    description: str
    for_s: float = 0.0
    labels: dict = field(default_factory=dict)

    def to_dict(self, deployment_id):
        rule = {"alert": self.name.value, "expr": self.expr}
        if self.for_s:
            rule["for"] = promql_duration(self.for_s)
        rule["labels"] = {"severity": self.severity.value, "deployment": deployment_id,
                          **self.labels}
        rule["annotations"] = {"summary": self.summary, "description": self.description}
        return rule


def promql_duration(seconds):
    """A PromQL duration ("5m", "90s", "1h") for a whole number of seconds (at least 1 s)."""
    seconds = max(1, round(seconds))
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def number(value):
    return format(value, ".6g")


def _regex(labels):
    return "|".join(labels)


def _completed(window, per_target=True):
    total = "sum by (target) " if per_target else "sum"
    return (f'{total}(rate({names.RUN_REQUESTS.name}{{{names.OUTCOME}!='
            f'"{names.NOT_SENT_LABEL}"}}[{window}]))')


def _quantile(metric, quantile, window, by=(), matcher=""):
    group = ", ".join(tuple(by) + ("le",))
    return (f"histogram_quantile({number(quantile)}, sum by ({group}) "
            f"(rate({metric.bucket}{matcher}[{window}])))")


def _gpu(figure, dcgm_names):
    return figure.metric_for(dcgm_names).name


def _request_rules(gates, window):
    rules = []
    for percentile, limit in gates.latency:
        key = percentile_key(percentile)
        rules.append(AlertRule(
            AlertName.HIGH_LATENCY,
            f"{_quantile(names.RUN_REQUEST_LATENCY, percentile / 100, window, ('target',))}"
            f" > {number(limit)}",
            Severity.WARNING, f"High latency ({key})",
            f"{key} latency of {{{{ $labels.target }}}} is {{{{ $value | humanizeDuration }}}}, "
            f"above the gate of {number(limit * 1000)} ms", 300.0, {"percentile": key}))
    if gates.error_rate is not None:
        errors = (f'sum by (target) (rate({names.RUN_REQUESTS.name}{{{names.OUTCOME}=~'
                  f'"{_regex(names.ERROR_OUTCOME_LABELS)}"}}[{window}]))')
        rules.append(AlertRule(
            AlertName.HIGH_ERROR_RATE,
            f"{errors} / {_completed(window)} > {number(gates.error_rate / 100)}",
            Severity.CRITICAL, "High error rate",
            f"Error rate of {{{{ $labels.target }}}} is {{{{ $value | humanizePercentage }}}}, "
            f"above the gate of {number(gates.error_rate)}%", 120.0))
    offered = f"sum(rate({names.RUN_REQUESTS_INTENDED.name}[{window}]))"
    throughput = gates.throughput
    if throughput.min_ratio is None and throughput.min_rps is None:
        throughput = replace(throughput, min_ratio=DEFAULT_MIN_RATIO_PERCENT)
    if throughput.min_ratio is not None:
        rules.append(AlertRule(
            AlertName.LOW_THROUGHPUT,
            f"{_completed(window, False)} / {offered} < {number(throughput.min_ratio / 100)}",
            Severity.WARNING, "Low throughput",
            f"Completed {{{{ $value | humanizePercentage }}}} of the offered load, below the "
            f"gate of {number(throughput.min_ratio)}%", 300.0, {"limit": "min_ratio"}))
    if throughput.min_rps is not None:
        # Only while load is offered: after a run ends the rate is 0 and nothing is wrong.
        rules.append(AlertRule(
            AlertName.LOW_THROUGHPUT,
            f"{_completed(window, False)} < {number(throughput.min_rps)} and {offered} > 0",
            Severity.WARNING, "Low throughput",
            f"QPS {{{{ $value }}}} below the gate of {number(throughput.min_rps)}", 300.0,
            {"limit": "min_rps"}))
    return rules


def _saturation_rules(saturation, window, dcgm_names):
    rules = []

    def p95(series):
        return f"quantile_over_time(0.95, {series}[{window}])"

    if saturation.cpu is not None:
        rules.append(AlertRule(
            AlertName.CPU_SATURATED, f"{p95(names.HOST_CPU.name)} > {number(saturation.cpu / 100)}",
            Severity.WARNING, "CPU saturated",
            f"p95 CPU use {{{{ $value | humanizePercentage }}}} above {number(saturation.cpu)}%",
            300.0))
    for limit, figure, alert, what in (
            (saturation.gpu_utilization, names.GPU_UTILIZATION, AlertName.GPU_SATURATED,
             "GPU utilisation"),
            (saturation.sm_activity, names.GPU_SM_ACTIVITY, AlertName.SM_ACTIVITY_SATURATED,
             "SM activity")):
        if limit is None:
            continue
        metric = figure.metric_for(dcgm_names)
        scale = figure.dcgm_scale if metric is figure.dcgm else 1.0
        rules.append(AlertRule(
            alert, f"{p95(metric.name)} > {number(limit / 100 * scale)}", Severity.WARNING,
            f"{what} saturated",
            f"p95 {what} of GPU {{{{ $labels.gpu }}}} is {{{{ $value }}}}, above "
            f"{number(limit)}%", 300.0))
    if saturation.gpu_memory is not None:
        rules.append(AlertRule(
            AlertName.GPU_MEMORY_SATURATED,
            f"{_gpu_memory_used_ratio(dcgm_names)} > {number(saturation.gpu_memory / 100)}",
            Severity.WARNING, "GPU memory saturated",
            f"GPU {{{{ $labels.gpu }}}} uses {{{{ $value | humanizePercentage }}}} of its "
            f"memory, above {number(saturation.gpu_memory)}%", 300.0))
    return rules


def _gpu_memory_used_ratio(dcgm_names):
    used = _gpu(names.GPU_MEMORY_USED, dcgm_names)
    if dcgm_names:
        # dcgm-exporter's default set has FB_USED and FB_FREE but not always FB_TOTAL.
        return f"{used} / ({used} + {_gpu(names.GPU_MEMORY_FREE, True)})"
    return f"{used} / {names.GPU_MEMORY_TOTAL.metric.name}"


def _gpu_health_rules(window, dcgm_names):
    free = _gpu(names.GPU_MEMORY_FREE, dcgm_names)
    total = (f"({free} + {_gpu(names.GPU_MEMORY_USED, True)})" if dcgm_names
             else names.GPU_MEMORY_TOTAL.metric.name)
    return [
        AlertRule(AlertName.GPU_OUT_OF_MEMORY,
                  f"{free} / {total} < {number(GPU_OOM_FREE_RATIO)}", Severity.CRITICAL,
                  "GPU out of memory",
                  f"GPU {{{{ $labels.gpu }}}} has under {number(GPU_OOM_FREE_RATIO * 100)}% of "
                  f"its memory free", 60.0),
        AlertRule(AlertName.GPU_UNCORRECTABLE_ECC,
                  f"{_gpu(names.GPU_ECC_UNCORRECTED, dcgm_names)} > 0", Severity.CRITICAL,
                  "Uncorrectable GPU memory errors",
                  "GPU {{ $labels.gpu }} reports {{ $value }} uncorrectable ECC errors"),
        AlertRule(AlertName.GPU_XID_ERRORS,
                  f"increase({names.GPU_XID_ERRORS.metric.name}[{window}]) > 0",
                  Severity.WARNING, "GPU XID errors",
                  "GPU {{ $labels.gpu }} raised {{ $value }} XID errors"),
    ]


def _relative_rules(plan, relative, window):
    baseline = plan.target(TargetRole.BASELINE)
    canary = plan.target(TargetRole.CANARY)
    if relative is None or baseline is None or canary is None:
        return []
    rules = []
    for percentile, ratio in relative.ratios:
        key = percentile_key(percentile)
        canary_q, baseline_q = (
            _quantile(names.RUN_REQUEST_LATENCY, percentile / 100, window, (),
                      f'{{{names.TARGET}="{target.name}"}}') for target in (canary, baseline))
        rules.append(AlertRule(
            AlertName.CANARY_LATENCY_REGRESSION, f"{canary_q} / {baseline_q} > {number(ratio)}",
            Severity.CRITICAL, f"Canary {key} latency regression",
            f"Canary {canary.name} {key} is {{{{ $value }}}} times baseline {baseline.name}'s, "
            f"above the gate of {number(ratio)}", 300.0, {"percentile": key}))
    return rules


def _generator_rules(gates, window):
    limits = [limit for _, limit in gates.latency]
    lag_limit = min(limits) * LAG_SHARE_OF_GATE if limits else DEFAULT_LAG_LIMIT_S
    return [
        AlertRule(AlertName.GENERATOR_SATURATED, f"{names.RUN_AGENTS_SATURATED.name} > 0",
                  Severity.WARNING, "Load generator saturated",
                  "{{ $value }} agent(s) fell behind their schedule: the run measures the "
                  "generator, not the target", 60.0),
        AlertRule(AlertName.SCHEDULE_LAG_HIGH,
                  f"{_quantile(names.RUN_SCHEDULE_LAG, 0.99, window)} > {number(lag_limit)}",
                  Severity.WARNING, "Schedule lag high",
                  f"p99 schedule lag {{{{ $value | humanizeDuration }}}} exceeds "
                  f"{number(lag_limit * 1000)} ms", 120.0),
        AlertRule(AlertName.AGENT_LOST, f"{names.AGENT_UP.name} == 0", Severity.CRITICAL,
                  "Agent lost", "The controller lost agent {{ $labels.agent }}"),
        AlertRule(AlertName.INTERVAL_INCOMPLETE, f"{names.RUN_AGENTS_MISSING.name} > 0",
                  Severity.WARNING, "Interval incomplete",
                  "{{ $value }} agent(s) missing from the last merged interval", 60.0),
    ]


def _stage_rules():
    def in_state(state):
        return f'{names.STAGE_STATE.name}{{{names.STATE}="{state.value}"}} == 1'

    return [
        AlertRule(AlertName.STAGE_EMERGENCY, in_state(State.AVARIYA), Severity.CRITICAL,
                  "Deployment emergency", "Stage {{ $labels.stage }} is in AVARIYA"),
        AlertRule(AlertName.STAGE_ROLLBACK, in_state(State.OTKAT), Severity.CRITICAL,
                  "Rollback in progress", "Stage {{ $labels.stage }} is rolling back (OTKAT)"),
        AlertRule(AlertName.STAGE_BLOCKED, in_state(State.ZABLOKIROVANO), Severity.WARNING,
                  "Stage blocked", "Stage {{ $labels.stage }} is ZABLOKIROVANO", 600.0),
    ]


def effective_plan(plan):
    """The plan with every classification default filled in."""
    return classify(plan).plan


def group_interval(plan):
    required = plan.monitoring.alert_interval_s
    return promql_duration(min(GROUP_INTERVAL_S, required) if required else GROUP_INTERVAL_S)


def alert_rules(plan, dcgm_names=False):
    """Every alert rule the plan's effective gates call for, in a fixed order."""
    plan = effective_plan(plan)
    gates = plan.gates
    return (_request_rules(gates, WINDOW) + _relative_rules(plan, gates.relative, WINDOW)
            + _saturation_rules(gates.saturation, WINDOW, dcgm_names)
            + _gpu_health_rules(WINDOW, dcgm_names) + _generator_rules(gates, WINDOW)
            + _stage_rules())


def rules_document(plan, dcgm_names=False):
    """The Prometheus rules file: one group per deployment."""
    deployment_id = plan.deployment.id
    return {"groups": [{
        "name": f"loadgate-{deployment_id}",
        "interval": group_interval(effective_plan(plan)),
        "rules": [rule.to_dict(deployment_id) for rule in alert_rules(plan, dcgm_names)],
    }]}


def write_monitoring(plan, out_dir, dcgm_names=False):
    """Writes the rules file and the dashboard into out_dir; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    rules_path = os.path.join(out_dir, RULES_FILE)
    dashboard_path = os.path.join(out_dir, DASHBOARD_FILE)
    with open(rules_path, "w", encoding="utf-8") as handle:
        handle.write(f"# Generated by loadgate monitoring generate from deployment "
                     f"{plan.deployment.id}; regenerate rather than edit.\n")
        yaml.safe_dump(rules_document(plan, dcgm_names), handle, sort_keys=False, width=100)
    with open(dashboard_path, "w", encoding="utf-8") as handle:
        json.dump(dashboard(plan, dcgm_names), handle, indent=2)
        handle.write("\n")
    return rules_path, dashboard_path


# --- the dashboard ----------------------------------------------------------------------------
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


def _panel(title, queries, unit, thresholds=(), kind="timeseries"):
    defaults = {"unit": unit}
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None}]
                                  + [{"color": "red", "value": t} for t in thresholds]}
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    return {"type": kind, "title": title, "datasource": DATASOURCE,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                         "legendFormat": legend} for i, (expr, legend) in enumerate(queries)]}


def _dashboard_panels(plan, dcgm_names):
    gates = plan.gates
    latency = [(_quantile(names.RUN_REQUEST_LATENCY, q, RATE, ("target",)),
                f"{{{{target}}}} p{number(q * 100)}") for q in (0.5, 0.95, 0.99)]
    errors = (f'sum by (target, outcome) (rate({names.RUN_REQUESTS.name}{{{names.OUTCOME}=~'
              f'"{_regex(names.ERROR_OUTCOME_LABELS)}"}}[{RATE}]))')
    error_ratio = f"sum by (target) ({errors}) / {_completed(RATE)}"
    utilization = names.GPU_UTILIZATION.metric_for(dcgm_names)
    used, free = _gpu(names.GPU_MEMORY_USED, dcgm_names), _gpu(names.GPU_MEMORY_FREE, dcgm_names)
    gpu_legend = "{{Hostname}} GPU {{gpu}}" if dcgm_names else "{{instance}} GPU {{gpu}}"
    return [
        _panel("Latency p50 / p95 / p99 (intended start to completion)", latency, "s",
               [limit for _, limit in gates.latency]),
        _panel("Rate: intended, achieved, completed per target", [
            (names.RUN_RATE_INTENDED.name, "intended"), (names.RUN_RATE_ACHIEVED.name, "achieved"),
            (_completed(RATE), "{{target}} completed")], "reqps"),
        _panel("Errors by outcome", [(errors, "{{target}} {{outcome}}")], "reqps"),
        _panel("Error rate", [(error_ratio, "{{target}}")], "percentunit",
               [gates.error_rate / 100] if gates.error_rate is not None else ()),
        _panel("GPU utilisation", [(utilization.name, gpu_legend)],
               "percent" if dcgm_names else "percentunit"),
        _panel("GPU memory used / free", [(used, f"{gpu_legend} used"),
                                          (free, f"{gpu_legend} free")],
               "decmbytes" if dcgm_names else "bytes"),
        _panel("Stage state", [(f"max by (stage, state) ({names.STAGE_STATE.name}) == 1",
                                "{{stage}}: {{state}}")], "short", kind="state-timeline"),
        _panel("Canary weight", [(names.CANARY_WEIGHT.name, "canary")], "percentunit"),
        _panel("Generator: schedule lag p99 and agents", [
            (_quantile(names.RUN_SCHEDULE_LAG, 0.99, RATE), "schedule lag p99 (s)"),
            (names.RUN_AGENTS_REPORTING.name, "agents reporting"),
            (names.RUN_AGENTS_MISSING.name, "agents missing"),
            (names.RUN_AGENTS_SATURATED.name, "agents saturated")], "short"),
        _panel("Node CPU", [(names.HOST_CPU.name, "{{instance}}")], "percentunit",
               [gates.saturation.cpu / 100] if gates.saturation.cpu is not None else ()),
    ]


def dashboard(plan, dcgm_names=False):
    """A Grafana dashboard model (import it, or provision the file) for the plan's run."""
    plan = effective_plan(plan)
    panels = _dashboard_panels(plan, dcgm_names)
    for index, panel in enumerate(panels):
        panel["id"] = index + 1
        panel["gridPos"] = {"x": (index % 2) * 12, "y": (index // 2) * 8, "w": 12, "h": 8}
    deployment = plan.deployment
    return {
        "title": f"loadgate: {deployment.id}",
        "uid": re.sub(r"[^A-Za-z0-9_-]", "-", f"loadgate-{deployment.id}")[:40],
        "description": f"{deployment.type.value} / {deployment.risk.value} / "
                       f"{deployment.environment.value} / {deployment.strategy.value}",
        "tags": ["loadgate", deployment.environment.value.lower()],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {"list": [{"name": "datasource", "type": "datasource",
                                 "query": "prometheus", "label": "Prometheus"}]},
        "annotations": {"list": []},
        "panels": panels,
    }


def dashboard_expressions(model):
    """Every PromQL expression of a dashboard model."""
    return [target["expr"] for panel in model["panels"] for target in panel["targets"]]
