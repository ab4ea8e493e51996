"""The non-load checks of the readiness stages: capacity, monitoring evidence, staging evidence.

Each returns a ``Check(ok, reason, evidence)``; none raises for a failed check (a failed check
is a state, not an error).  Monitoring is judged on evidence, not promises: an alert-rules
file that parses and covers every gate of the plan, a dashboard file with panels, a metrics
endpoint that answers with Prometheus text.
"""
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import yaml

from loadgate.controller.plan_units import format_duration, parse_duration, percentile_key


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str
    evidence: dict = field(default_factory=dict)


def check_capacity(requirement, capacity):
    """The agents' nodes against the plan's infrastructure (CPU, memory, GPUs)."""
    evidence = {"cpu_cores": capacity.cpu_cores, "memory_bytes": capacity.memory_bytes,
                "gpus": [{"name": g.name, "memory_bytes": g.memory_bytes}
                         for g in capacity.gpus], "agents": capacity.agents}
    short = []
    cpu, gpu = requirement.cpu, requirement.gpu
    if cpu is not None and cpu.cores and capacity.cpu_cores < cpu.cores:
        short.append(f"{capacity.cpu_cores} CPU cores < {cpu.cores} required")
    if cpu is not None and cpu.memory_bytes and capacity.memory_bytes < cpu.memory_bytes:
        short.append(f"{capacity.memory_bytes / 2**30:.1f} GiB memory < "
                     f"{cpu.memory_bytes / 2**30:.1f} GiB required")
    if gpu is not None and gpu.count:
        fitting = [g for g in capacity.gpus
                   if (not gpu.type or gpu.type.lower() in g.name.lower())
                   and (not gpu.memory_bytes or g.memory_bytes >= gpu.memory_bytes)]
        if len(fitting) < gpu.count:
            why = f" ({capacity.gpu_unavailable_reason})" if capacity.gpu_unavailable_reason \
                else ""
            short.append(f"{len(fitting)} GPU(s) matching {gpu.type or 'any'} with "
                         f"{(gpu.memory_bytes or 0) / 1e9:g} GB < {gpu.count} required{why}")
    if short:
        return Check(False, "; ".join(short), evidence)
    return Check(True, f"{capacity.agents} agent(s): {capacity.cpu_cores} cores, "
                       f"{capacity.memory_bytes / 2**30:.1f} GiB, {len(capacity.gpus)} GPU(s)",
                 evidence)


# What an alert expression must mention to cover each kind of gate.
_COVERAGE = {
    "error_rate": re.compile(r"error|5xx|status=~?\"5", re.I),
    "throughput": re.compile(r"rate\(.*\)\s*<", re.I),
    "saturation.cpu": re.compile(r"cpu", re.I),
    "saturation.gpu_utilization": re.compile(r"gpu_util|DCGM_FI_DEV_GPU_UTIL|gpu.*utili", re.I),
    "saturation.sm_activity": re.compile(r"sm_activ|SM_ACTIVE|PROF_SM", re.I),
    "saturation.gpu_memory": re.compile(r"FB_(FREE|USED)|gpu.*memory|memory.*gpu", re.I),
}


def gate_kinds(gates):
    """The gate kinds of an effective GatesPlan an alert-rules file must cover."""
    kinds = [f"latency.{percentile_key(p)}" for p, _ in gates.latency]
    if gates.error_rate is not None:
        kinds.append("error_rate")
    if gates.throughput.min_rps is not None or gates.throughput.min_ratio is not None:
        kinds.append("throughput")
    kinds += [f"saturation.{name}" for name in ("cpu", "gpu_utilization", "sm_activity",
                                                 "gpu_memory")
              if getattr(gates.saturation, name) is not None]
    return kinds


def _covers(kind, expr):
    if kind.startswith("latency."):
        quantile = float(kind.split(".p", 1)[1]) / 100.0
        return re.search(r"histogram_quantile\(\s*" + re.escape(format(quantile, "g"))
                         + r"0*\s*,", expr) is not None
    return _COVERAGE[kind].search(expr) is not None


def check_alert_rules(path, gates, alert_interval_s):
    """A Prometheus rules file that parses, covers every gate and evaluates often enough."""
    if not path:
        return Check(False, "no alert_rules file in the plan")
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
        rules = [(group, rule) for group in document["groups"] for rule in group["rules"]]
        exprs = [str(rule["expr"]) for _, rule in rules if "alert" in rule]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        return Check(False, f"alert rules {path} do not parse as Prometheus rules: {exc}")
    missing = [kind for kind in gate_kinds(gates) if not any(_covers(kind, e) for e in exprs)]
    slow = []
    for group, _ in rules:
        interval = group.get("interval")
        if interval is not None and parse_duration(str(interval)) > alert_interval_s:
            slow.append(f"group {group.get('name')} evaluates every {interval}")
    evidence = {"file": os.path.abspath(path), "alerts": len(exprs),
                "gates": gate_kinds(gates), "missing": missing}
    if missing or slow:
        problems = ([f"no alert covers {', '.join(missing)}"] if missing else []) + \
                   ([f"{', '.join(sorted(set(slow)))}, slower than the required "
                     f"{format_duration(alert_interval_s)}"] if slow else [])
        return Check(False, "; ".join(problems), evidence)
    return Check(True, f"{len(exprs)} alerts cover {len(gate_kinds(gates))} gates, evaluated "
                       f"within {format_duration(alert_interval_s)}", evidence)


def check_dashboard(path):
    """A Grafana dashboard JSON with at least one panel."""
    if not path:
        return Check(False, "no dashboard file in the plan")
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as exc:
        return Check(False, f"dashboard {path} does not parse: {exc}")
    board = document.get("dashboard", document) if isinstance(document, dict) else {}
    panels = board.get("panels") if isinstance(board, dict) else None
    if not panels:
        return Check(False, f"dashboard {path} has no panels")
    return Check(True, f"dashboard {board.get('title', path)!r} with {len(panels)} panels",
                 {"file": os.path.abspath(path), "panels": len(panels)})


def check_metrics(url, timeout_s=5.0):
    """A metrics endpoint that answers 200 with Prometheus exposition text."""
    if not url:
        return Check(False, "no metrics_url in the plan")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(1 << 20).decode(errors="replace")
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        return Check(False, f"metrics endpoint {url} does not answer: {exc}")
    samples = [line for line in body.splitlines() if line and not line.startswith("#")]
    if status != 200 or not samples:
        return Check(False, f"metrics endpoint {url} answered {status} with "
                            f"{len(samples)} samples")
    return Check(True, f"{url} answered with {len(samples)} samples",
                 {"url": url, "samples": len(samples)})


def check_staging_evidence(path, deployment_id):
    """A passed STAGING verdict of the same deployment id (verdict.json or its run dir)."""
    if not path:
        return Check(False, "PRODUCTION requires staging_evidence: the verdict of a passed "
                            f"STAGING run of {deployment_id}")
    if os.path.isdir(path):
        path = os.path.join(path, "verdict.json")
    try:
        with open(path, encoding="utf-8") as handle:
            verdict = json.load(handle)
        status = verdict["status"]
        deployment = verdict["deployment"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Check(False, f"staging evidence {path} is not a readable verdict: {exc}")
    evidence = {"file": os.path.abspath(path), "status": status,
                "deployment_id": deployment.get("id"),
                "environment": deployment.get("environment")}
    if deployment.get("id") != deployment_id:
        return Check(False, f"staging evidence is for {deployment.get('id')}, not "
                            f"{deployment_id}", evidence)
    if deployment.get("environment") != "STAGING":
        return Check(False, f"staging evidence comes from a {deployment.get('environment')} "
                            f"run, not STAGING", evidence)
    if status != "PASS":
        return Check(False, f"the STAGING run's verdict is {status}, not PASS", evidence)
    return Check(True, f"STAGING verdict PASS for {deployment_id}", evidence)
