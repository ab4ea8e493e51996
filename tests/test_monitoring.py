"""Generated alert rules and dashboard: valid for promtool, built only from exported metrics,
and firing on what the exporters really export."""
import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loadgate.agent.metrics import AgentMetrics
from loadgate.controller.cli import main as cli_main
from loadgate.controller.merge import IntervalMerger
from loadgate.controller.metrics import ControllerMetrics
from loadgate.controller.monitoring import (
    AlertName, alert_rules, dashboard, dashboard_expressions, rules_document, write_monitoring)
from loadgate.controller.plan import parse_plan
from loadgate.controller.runner_reports import AgentStream, HistogramLayout
from test_metrics_export import make_report, telemetry_sample

PROMTOOL = shutil.which("promtool")

PLAN = """\
apiVersion: loadgate/v1
deployment: {id: pay-1, type: FEATURE, risk: MEDIUM, environment: STAGING, strategy: CANARY}
targets:
  - {name: base, url: "http://127.0.0.1:8080", role: baseline}
  - {name: can, url: "http://127.0.0.1:8081", role: canary}
load: {rate: 100, duration: 30s}
rollback: {strategy: redeploy, procedure: "kubectl rollout undo", rto: 5m}
gates:
  latency: {p99: 350ms}
  throughput: {min_rps: 50}
  saturation: {gpu_utilization: 85%, gpu_memory: 90%, sm_activity: 90%}
"""

SINGLE_TARGET_PLAN = """\
apiVersion: loadgate/v1
deployment: {id: api-2, type: CONFIG, risk: LOW, environment: DEV, strategy: BIG-BANG}
targets:
  - {name: main, url: "http://127.0.0.1:8080"}
load: {rate: 10, duration: 10s}
downtime_window: {start: "2026-01-01T00:00:00Z", end: "2026-01-01T01:00:00Z"}
"""


@pytest.fixture(scope="module")
def plan():
    return parse_plan(PLAN, "plan.yaml")


def rules_by_name(plan, dcgm_names=False):
    found = {}
    for rule in alert_rules(plan, dcgm_names):
        found.setdefault(rule.name, []).append(rule)
    return found


_NUMBER = re.compile(r"(?<![A-Za-z_:])\d+(\.\d+)?(e[+-]?\d+)?")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTORS = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def referenced_series(expr):
    """Metric names a PromQL expression reads: identifiers that are not functions (followed
    by a parenthesis), keywords, label names, strings, numbers or durations."""
    text = _SELECTORS.sub(" ", _GROUPING.sub(" ", _STRINGS.sub(" ", expr)))
    text = _NUMBER.sub(" ", text)
    found = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if word in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        found.add(word)
    return found


def test_referenced_series_parser():
    assert referenced_series('histogram_quantile(0.95, sum by (target, le) (rate(a_bucket'
                             '{x="b c"}[5m]))) / ignoring(q) b > 1e-06 and on() c') == \
        {"a_bucket", "b", "c"}


def scraped_series(*exporters):
    names = set()
    for exporter in exporters:
        text = generate_latest(exporter.registry).decode()
        for family in text_string_to_metric_families(text):
            names.update(sample.name for sample in family.samples)
    return names


def exporters_after_a_real_run(dcgm_names):
    """An agent exporter and a controller exporter fed as a run feeds them."""
    agent = AgentMetrics(dcgm_names=dcgm_names)
    report = make_report(telemetry=[telemetry_sample()])
    agent.observe_report(report)
    layout = HistogramLayout()
    stream = AgentStream("run-1", "a1", ["main"], layout)
    merger = IntervalMerger(["main"], ["a1"], layout)
    interval = stream.check(report)
    stream.commit(interval)
    controller = ControllerMetrics()
    for merged in merger.add(interval):
        controller.observe_interval(merged)
    controller.set_run("run-1", "pay-1")
    controller.set_agent_up("a1", True)
    controller.set_stage("performance", "NSV:TESTIRUYETSYA")
    controller.set_canary_weight(5)
    return agent, controller


@pytest.mark.parametrize("dcgm_names", [False, True])
def test_every_referenced_metric_is_exported_after_a_real_report(plan, dcgm_names):
    exported = scraped_series(*exporters_after_a_real_run(dcgm_names))
    expressions = [rule.expr for rule in alert_rules(plan, dcgm_names)]
    expressions += dashboard_expressions(dashboard(plan, dcgm_names))
    referenced = set().union(*map(referenced_series, expressions))
    assert referenced, "no metric found in the expressions"
    assert referenced <= exported, sorted(referenced - exported)
    gpu_prefix = "DCGM_FI_" if dcgm_names else "loadgate_gpu_"
    assert any(name.startswith(gpu_prefix) for name in referenced)


def test_thresholds_come_from_the_effective_gates(plan):
    rules = rules_by_name(plan)
    latency = {rule.labels["percentile"]: rule.expr for rule in rules[AlertName.HIGH_LATENCY]}
    assert latency["p99"].endswith("> 0.35")
    assert latency["p95"].endswith("> 0.2")  # the classification default for p95
    assert rules[AlertName.HIGH_ERROR_RATE][0].expr.endswith("> 0.05")
    limits = {rule.labels["limit"]: rule.expr for rule in rules[AlertName.LOW_THROUGHPUT]}
    assert limits["min_rps"].startswith("sum(rate(") and "< 50 and" in limits["min_rps"]
    assert limits["min_ratio"].endswith("< 0.95")
    assert rules[AlertName.GPU_SATURATED][0].expr.endswith("> 0.85")
    canary = rules[AlertName.CANARY_LATENCY_REGRESSION][0].expr
    assert 'target="can"' in canary and 'target="base"' in canary and canary.endswith("> 1.2")
    # the tightest latency gate is 200 ms: lag beyond a tenth of it is the generator's doing
    assert rules[AlertName.SCHEDULE_LAG_HIGH][0].expr.endswith("> 0.02")
    dcgm = rules_by_name(plan, dcgm_names=True)
    assert dcgm[AlertName.GPU_SATURATED][0].expr == \
        "quantile_over_time(0.95, DCGM_FI_DEV_GPU_UTIL[5m]) > 85"


def test_seed_alerts_present_and_canary_rules_need_a_pair():
    rules = rules_by_name(parse_plan(SINGLE_TARGET_PLAN, "single.yaml"))
    for name in (AlertName.HIGH_LATENCY, AlertName.HIGH_ERROR_RATE, AlertName.LOW_THROUGHPUT,
                 AlertName.GPU_OUT_OF_MEMORY, AlertName.AGENT_LOST,
                 AlertName.GENERATOR_SATURATED):
        assert name in rules, name
    assert AlertName.CANARY_LATENCY_REGRESSION not in rules
    assert AlertName.GPU_SATURATED not in rules


def check_rules_structure(document):
    """What promtool checks that matters here, for machines without it."""
    assert set(document) == {"groups"}
    for group in document["groups"]:
        assert group["name"] and group["rules"]
        assert re.fullmatch(r"\d+[smh]", group["interval"])
        for rule in group["rules"]:
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert rule["expr"].count("(") == rule["expr"].count(")")
            assert rule["expr"].count("{") == rule["expr"].count("}")
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"])
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}


@pytest.mark.parametrize("dcgm_names", [False, True])
def test_rules_file_passes_promtool(plan, tmp_path, dcgm_names):
    rules_path, _ = write_monitoring(plan, str(tmp_path), dcgm_names)
    with open(rules_path) as handle:
        check_rules_structure(yaml.safe_load(handle))
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'): checked the "
                    "structure only")
    result = subprocess.run([PROMTOOL, "check", "rules", rules_path], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules(plan, dcgm_names))} rules found" in result.stdout


def test_cli_writes_rules_and_dashboard(tmp_path, capsys):
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(PLAN)
    out = tmp_path / "monitoring"
    assert cli_main(["monitoring", "generate", str(plan_path), "--out", str(out),
                     "--dcgm-names"]) == 0
    assert "alert rules" in capsys.readouterr().out
    with open(out / "loadgate-alerts.yaml") as handle:
        document = yaml.safe_load(handle)
    assert document == rules_document(parse_plan(PLAN, "plan.yaml"), dcgm_names=True)
    with open(out / "loadgate-dashboard.json") as handle:
        model = json.load(handle)
    titles = " | ".join(panel["title"] for panel in model["panels"])
    for wanted in ("p50 / p95 / p99", "Rate", "Errors", "GPU utilisation", "GPU memory",
                   "Stage state", "Canary weight"):
        assert wanted in titles
    ids = [panel["id"] for panel in model["panels"]]
    assert len(ids) == len(set(ids))
    assert any("DCGM_FI_DEV_GPU_UTIL" in expr for expr in dashboard_expressions(model))


def test_cli_reports_a_bad_plan_with_its_location(tmp_path, capsys):
    plan_path = tmp_path / "bad.yaml"
    plan_path.write_text(PLAN.replace("p99: 350ms", "p99: fast"))
    assert cli_main(["monitoring", "generate", str(plan_path), "--out", str(tmp_path)]) == 3
    assert "bad.yaml:9:" in capsys.readouterr().err


FIRING_PLAN = """\
apiVersion: loadgate/v1
deployment: {id: api-3, type: CONFIG, risk: LOW, environment: DEV, strategy: BIG-BANG}
targets:
  - {name: main, url: "http://127.0.0.1:8080"}
load: {rate: 10, duration: 10s}
downtime_window: {start: "2026-01-01T00:00:00Z", end: "2026-01-01T01:00:00Z"}
gates: {latency: {p95: 200ms}, error_rate: 5%}
"""
MINUTES = 13
SLOW_US = 280_000  # inside the (0.25 s, 0.3 s] bucket: histogram_quantile interpolates in it


class SeriesHistory:
    """Every sample of every scrape, minute by minute, as promtool input series."""

    def __init__(self):
        self.values = {}

    def scrape(self, minute, exporter, job):
        text = generate_latest(exporter.registry).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith(("process_", "python_")) or \
                        sample.name.endswith("_created"):
                    continue
                labels = dict(sample.labels, job=job, instance=f"{job}:9100")
                key = (sample.name, tuple(sorted(labels.items())))
                self.values.setdefault(key, {})[minute] = sample.value

    def input_series(self):
        series = []
        for (name, labels), by_minute in sorted(self.values.items()):
            selector = ",".join(f'{k}="{v}"' for k, v in labels)
            values = " ".join(repr(by_minute[m]) if m in by_minute else "_"
                              for m in range(MINUTES))
            series.append({"series": f"{name}{{{selector}}}", "values": values})
        return series


def run_minutes(latency_us, errors, gpu_used_bytes, lose_agent):
    """Feeds the exporters MINUTES one-minute intervals of a real merge; returns the history."""
    layout = HistogramLayout()
    stream = AgentStream("run-1", "a1", ["main"], layout)
    merger = IntervalMerger(["main"], ["a1"], layout)
    controller = ControllerMetrics()
    agent = AgentMetrics()
    history = SeriesHistory()
    gpu = telemetry_sample().gpus[0]
    gpu.memory_used_bytes = gpu_used_bytes
    gpu.memory_reserved_bytes = 0
    for minute in range(MINUTES):
        report = make_report(run_id="run-1", agent_id="a1", seq=minute + 1, index=minute,
                             latencies=[latency_us] * 50, errors=errors,
                             start_ns=10**18 + minute * 59 * 10**9)
        report.end_unix_ns = report.start_unix_ns + 60 * 10**9
        interval = stream.check(report)
        stream.commit(interval)
        for merged in merger.add(interval):
            controller.observe_interval(merged)
        controller.set_agent_up("a1", True)
        controller.set_agent_up("a2", not (lose_agent and minute >= 3))
        agent.observe_telemetry(telemetry_sample([gpu]))
        history.scrape(minute, controller, "loadgate-controller")
        history.scrape(minute, agent, "loadgate-agent")
    return history


def promtool_test(tmp_path, plan, history, expectations):
    write_monitoring(plan, str(tmp_path))
    test = {"rule_files": ["loadgate-alerts.yaml"], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": history.input_series(),
                       "alert_rule_test": expectations}]}
    test_path = tmp_path / "alerts-test.yaml"
    test_path.write_text(yaml.safe_dump(test, sort_keys=False))
    return subprocess.run([PROMTOOL, "test", "rules", str(test_path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)


needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(Debian package 'prometheus')")


@needs_promtool
def test_alerts_fire_on_what_the_exporters_export(tmp_path):
    plan = parse_plan(FIRING_PLAN, "plan.yaml")
    history = run_minutes(SLOW_US, errors=10, gpu_used_bytes=(80 << 30) - (512 << 20),
                          lose_agent=True)
    base = {"deployment": "api-3"}
    latency = []
    for rule in rules_by_name(plan)[AlertName.HIGH_LATENCY]:
        percentile = float(rule.labels["percentile"][1:])
        value_ms = (0.25 + 0.05 * percentile / 100) * 1000
        limit_ms = float(re.search(r"> ([0-9.e-]+)$", rule.expr).group(1)) * 1000
        latency.append({
            "exp_labels": dict(base, severity="warning", target="main",
                               percentile=rule.labels["percentile"]),
            "exp_annotations": {
                "summary": f"High latency ({rule.labels['percentile']})",
                "description": f"{rule.labels['percentile']} latency of main is "
                               f"{value_ms:.4g}ms, above the gate of {limit_ms:g} ms"}})
    gpu_labels = {"gpu": "0", "uuid": "GPU-11111111-2222-3333-4444-555555555555",
                  "model_name": "NVIDIA H100 80GB HBM3", "job": "loadgate-agent",
                  "instance": "loadgate-agent:9100"}
    expectations = [
        {"eval_time": "12m", "alertname": "HighLatency", "exp_alerts": latency},
        {"eval_time": "12m", "alertname": "HighErrorRate", "exp_alerts": [{
            "exp_labels": dict(base, severity="critical", target="main"),
            "exp_annotations": {"summary": "High error rate",
                                "description": "Error rate of main is 20%, above the gate "
                                               "of 5%"}}]},
        {"eval_time": "12m", "alertname": "GPUOutOfMemory", "exp_alerts": [{
            "exp_labels": dict(base, severity="critical", **gpu_labels),
            "exp_annotations": {"summary": "GPU out of memory",
                                "description": "GPU 0 has under 10% of its memory free"}}]},
        {"eval_time": "12m", "alertname": "AgentLost", "exp_alerts": [{
            "exp_labels": dict(base, severity="critical", agent="a2",
                               job="loadgate-controller", instance="loadgate-controller:9100"),
            "exp_annotations": {"summary": "Agent lost",
                                "description": "The controller lost agent a2"}}]},
    ]
    result = promtool_test(tmp_path, plan, history, expectations)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_a_healthy_run_fires_nothing(tmp_path):
    plan = parse_plan(FIRING_PLAN, "plan.yaml")
    history = run_minutes(40_000, errors=0, gpu_used_bytes=20 << 30, lose_agent=False)
    expectations = [{"eval_time": "12m", "alertname": alert.value, "exp_alerts": []}
                    for alert in rules_by_name(plan)]
    result = promtool_test(tmp_path, plan, history, expectations)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert_interval", [None, "10s"])
def test_generated_rules_pass_the_readiness_monitoring_check(tmp_path, alert_interval):
    from loadgate.controller.classify import classify
    from loadgate.controller.readiness_checks import check_alert_rules, check_dashboard

    text = PLAN if alert_interval is None else \
        PLAN + f"monitoring: {{alert_interval: {alert_interval}}}\n"
    plan = parse_plan(text, "plan.yaml")
    rules_path, dashboard_path = write_monitoring(plan, str(tmp_path))
    effective = classify(plan).plan
    check = check_alert_rules(rules_path, effective.gates, effective.monitoring.alert_interval_s)
    assert check.ok, check
    assert check_dashboard(dashboard_path).ok
