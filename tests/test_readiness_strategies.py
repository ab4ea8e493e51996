"""Blue-green, rolling and big-bang rollouts with real hook commands; infrastructure and
monitoring stages with real files and a real metrics endpoint on loopback."""
import datetime
import http.server
import json
import textwrap
import threading

import pytest

from loadgate.controller import gate_cli
from loadgate.controller.plan import load_plan
from loadgate.controller.readiness import Readiness
from loadgate.controller.states import Node, Stage, State, SubStage
from loadgate.controller.verdict import RunStatus, load
from test_readiness_support import FakeClock, Profile, SyntheticSource

BASE = """\
apiVersion: loadgate/v1
deployment:
  id: DEPLOY-STRAT-1
  type: CONFIG
  risk: MEDIUM
  environment: DEV
  strategy: {strategy}
targets:
  - name: main
    url: http://127.0.0.1:18080
load:
  rate: 500
  duration: 20s
"""


def write_plan(tmp_path, strategy, extra=""):
    path = tmp_path / "plan.yaml"
    extra = textwrap.dedent(extra)
    if "monitoring:" not in extra:
        extra += "monitoring: {post_deploy_window: 30s}\n"
    path.write_text(BASE.format(strategy=strategy) + extra)
    return load_plan(str(path))


def trace(tmp_path, name):
    """A hook command that appends its values to tmp_path/name and succeeds."""
    target = tmp_path / name
    return (f"[sh, -c, 'echo \"$LOADGATE_HOOK w=$LOADGATE_WEIGHT b={{batch}}\" >> {target}']")


def run(plan, tmp_path, profile=None, clock=None, source=None):
    clock = clock or FakeClock()
    source = source or SyntheticSource(clock, {"main": profile or Profile()})
    readiness = Readiness(plan, tmp_path / "run", source, clock)
    return readiness, readiness.run(lambda: clock.advance(5.0), 5000)


def lines(tmp_path, name):
    path = tmp_path / name
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_blue_green_switches_verifies_and_deploys(tmp_path):
    plan = write_plan(tmp_path, "BLUE-GREEN", f"""\
        hooks:
          switch: {{command: {trace(tmp_path, "switch")}}}
          verify_switch: {{command: [sh, -c, 'test -s {tmp_path / "switch"}']}}
          rollback: {{command: {trace(tmp_path, "rollback")}}}
        """)
    readiness, status = run(plan, tmp_path)
    assert status is RunStatus.PASSED, readiness.reasons
    assert lines(tmp_path, "switch") == ["switch w=100 b={batch}"]
    assert lines(tmp_path, "rollback") == []
    hooks = [r for r in readiness.journal.records() if r["kind"] == "hook"]
    assert [(h["hook"], h["ok"]) for h in hooks] == [("switch", True), ("verify_switch", True)]
    assert readiness.machine.state(Node(Stage.DEPLOYMENT, SubStage.STAGING)) is \
        State.RAZVERNUTO


def test_blue_green_whose_switch_cannot_be_verified_switches_back(tmp_path):
    plan = write_plan(tmp_path, "BLUE-GREEN", f"""\
        hooks:
          switch: {{command: {trace(tmp_path, "switch")}}}
          verify_switch: {{command: [sh, -c, 'echo still blue; exit 3']}}
          rollback: {{command: {trace(tmp_path, "rollback")}}}
        """)
    readiness, status = run(plan, tmp_path)
    assert status is RunStatus.FAILED
    assert lines(tmp_path, "rollback") == ["rollback w=0 b={batch}"]
    assert "verify_switch hook failed (3)" in " ".join(readiness.reasons)
    assert readiness.machine.state(Node(Stage.DEPLOYMENT)) is State.OTKAT


def test_rolling_steps_instances_batch_by_batch(tmp_path):
    plan = write_plan(tmp_path, "ROLLING", f"""\
        rolling: {{instances: 5, batch_size: 2}}
        hooks:
          instance_step: {{command: {trace(tmp_path, "steps")}}}
        """)
    readiness, status = run(plan, tmp_path)
    assert status is RunStatus.PASSED, readiness.reasons
    assert lines(tmp_path, "steps") == ["instance_step w= b=1", "instance_step w= b=2",
                                        "instance_step w= b=3"]
    steps = [s for s in load(tmp_path / "run").steps if s.get("phase") == "rolling"]
    assert [s["window"] for s in steps] == ["rolling batch 1/3 (2/5)", "rolling batch 2/3 (4/5)",
                                            "rolling batch 3/3 (5/5)"]


def test_rolling_stops_and_rolls_back_at_a_regressed_batch(tmp_path):
    plan = write_plan(tmp_path, "ROLLING", f"""\
        rolling: {{instances: 4, batch_size: 1}}
        gates: {{latency: {{p95: 60ms}}}}
        hooks:
          instance_step: {{command: {trace(tmp_path, "steps")}}}
          rollback: {{command: {trace(tmp_path, "rollback")}}}
        """)
    clock = FakeClock()
    source = SyntheticSource(clock, {"main": Profile()})
    readiness = Readiness(plan, tmp_path / "run", source, clock)
    while len(lines(tmp_path, "steps")) < 2 and not readiness.status.final:
        readiness.tick()
        clock.advance(5.0)
    source.profiles["main"] = Profile(median_us=80_000)
    assert readiness.run(lambda: clock.advance(5.0), 5000) is RunStatus.FAILED
    assert len(lines(tmp_path, "steps")) == 2
    assert lines(tmp_path, "rollback") == ["rollback w=0 b={batch}"]


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def test_big_bang_waits_for_its_downtime_window(tmp_path):
    clock = FakeClock()
    plan = write_plan(tmp_path, "BIG-BANG", f"""\
        downtime_window: {{start: "{_iso(clock() + 600)}", end: "{_iso(clock() + 7200)}"}}
        hooks:
          switch: {{command: {trace(tmp_path, "switch")}}}
        """)
    source = SyntheticSource(clock, {"main": Profile()})
    readiness = Readiness(plan, tmp_path / "run", source, clock)
    switched_at = None
    for _ in range(1000):
        if readiness.tick().final:
            break
        if switched_at is None and lines(tmp_path, "switch"):
            switched_at = clock()
        clock.advance(5.0)
    assert readiness.status is RunStatus.PASSED, readiness.reasons
    assert switched_at is not None and switched_at >= FakeClock()() + 600


def test_big_bang_after_its_window_is_blocked(tmp_path):
    clock = FakeClock()
    plan = write_plan(tmp_path, "BIG-BANG", f"""\
        downtime_window: {{start: "{_iso(clock() - 7200)}", end: "{_iso(clock() - 3600)}"}}
        """)
    readiness, status = run(plan, tmp_path, clock=clock)
    assert status is RunStatus.FAILED
    assert readiness.machine.state(Node(Stage.DEPLOYMENT, SubStage.STAGING)) is \
        State.ZABLOKIROVANO
    assert "is over" in readiness.reasons[0]


def test_missing_capacity_blocks_as_an_infrastructure_error(tmp_path):
    plan = write_plan(tmp_path, "BLUE-GREEN", f"""\
        infrastructure:
          cpu: {{cores: 64}}
          gpu: {{type: A100, count: 2, memory: 80GB}}
        hooks:
          switch: {{command: {trace(tmp_path, "switch")}}}
          rollback: {{command: {trace(tmp_path, "rollback")}}}
        """)
    readiness, status = run(plan, tmp_path)
    assert status is RunStatus.BLOCKED
    capacity = Node(Stage.INFRASTRUCTURE, SubStage.CAPACITY)
    assert readiness.machine.state(capacity) is State.ZABLOKIROVANO
    assert readiness.machine.state(Node(Stage.PERFORMANCE)) is State.OZHIDAET
    assert "8 CPU cores < 64 required" in readiness.reasons[0]
    assert "no NVML on this machine" in readiness.reasons[0]
    assert gate_cli.check(str(tmp_path / "run"))[0] == gate_cli.ExitCode.INFRASTRUCTURE_ERROR
    assert lines(tmp_path, "switch") == []


@pytest.mark.parametrize("limit, expected", [("5ms", RunStatus.PASSED),
                                             ("100us", RunStatus.BLOCKED)])
def test_network_rtt_p95_is_a_gate(tmp_path, limit, expected):
    plan = write_plan(tmp_path, "ROLLING", f"""\
        rolling: {{instances: 1}}
        infrastructure: {{network: {{rtt_p95: {limit}}}}}
        """)
    readiness, status = run(plan, tmp_path)
    assert status is expected, readiness.reasons
    rtt = [g for g in load(tmp_path / "run").gates if g.window == "network"]
    assert [g.name for g in rtt] == ["main.rtt.p95"] and rtt[0].samples == 200


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"# TYPE up gauge\nup 1\nloadgate_requests_total 42\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def monitoring_plan(tmp_path, metrics, rules):
    (tmp_path / "alerts.yaml").write_text(textwrap.dedent(rules))
    (tmp_path / "dash.json").write_text(json.dumps({"title": "d", "panels": [{"id": 1}]}))
    return write_plan(tmp_path, "ROLLING", f"""\
        rolling: {{instances: 1}}
        gates: {{latency: {{p99: 300ms}}}}
        monitoring:
          metrics_url: {metrics}
          alert_rules: alerts.yaml
          dashboard: dash.json
          alert_interval: 1m
          post_deploy_window: 30s
        """)


RULES = """\
    groups:
      - name: g
        interval: 30s
        rules:
          - alert: HighLatencyP95
            expr: histogram_quantile(0.95, rate(x_bucket[5m])) > 0.2
          - alert: HighLatencyP99
            expr: histogram_quantile(0.99, rate(x_bucket[5m])) > 0.3
          - alert: HighErrorRate
            expr: rate(x_errors_total[5m]) / rate(x_total[5m]) > 0.05
          - alert: LowThroughput
            expr: rate(x_total[5m]) < 100
          - alert: CPU
            expr: node_cpu_utilisation > 0.8
    """


def test_monitoring_evidence_is_checked_for_real(tmp_path, metrics_url):
    readiness, status = run(monitoring_plan(tmp_path, metrics_url, RULES), tmp_path)
    assert status is RunStatus.PASSED, readiness.reasons
    monitoring = {n.sub: readiness.machine.state(n) for n in readiness.machine.nodes()
                  if n.stage is Stage.MONITORING and n.sub}
    assert set(monitoring.values()) == {State.PROVERENO}
    assert readiness.machine.state(Node(Stage.MONITORING)) is State.ODOBRENO


def test_alert_rules_that_miss_a_gate_or_evaluate_too_slowly_block(tmp_path, metrics_url):
    partial = RULES.replace("interval: 30s", "interval: 5m").replace("0.99", "0.9")
    readiness, status = run(monitoring_plan(tmp_path, metrics_url, partial), tmp_path)
    assert status is RunStatus.FAILED
    reason = readiness.reasons[0]
    assert "no alert covers latency.p99" in reason and "evaluates every 5m" in reason
    assert readiness.machine.state(Node(Stage.MONITORING, SubStage.ALERTING)) is \
        State.ZABLOKIROVANO


def test_a_silent_metrics_endpoint_blocks(tmp_path):
    readiness, status = run(monitoring_plan(tmp_path, "http://127.0.0.1:9/metrics", RULES),
                            tmp_path)
    assert status is RunStatus.FAILED
    assert "does not answer" in readiness.reasons[0]


def test_rules_from_loadgate_monitoring_generate_satisfy_the_alerting_stage(tmp_path,
                                                                            metrics_url):
    from loadgate.controller.monitoring import write_monitoring
    plan = monitoring_plan(tmp_path, metrics_url, RULES)
    rules, dashboard = write_monitoring(plan, str(tmp_path / "generated"))
    text = (tmp_path / "plan.yaml").read_text()
    (tmp_path / "plan.yaml").write_text(text.replace("alerts.yaml", rules)
                                        .replace("dash.json", dashboard))
    readiness, status = run(load_plan(str(tmp_path / "plan.yaml")), tmp_path)
    assert status is RunStatus.PASSED, readiness.reasons
    alerting = [r for r in readiness.journal.records() if r["kind"] == "transition"
                and r["node"] == "monitoring.alerting" and r["to"] == "SV:PROVERENO"]
    assert alerting and alerting[0]["evidence"]["missing"] == []


class _Router(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Router.received.append((self.path, body))
        self.send_response(200 if body.get("weight") != 50 or self.path != "/fail-at-50"
                           else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def router():
    _Router.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Router)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Router.received
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("shift_path, expected", [("/shift", RunStatus.PASSED),
                                                  ("/fail-at-50", RunStatus.FAILED)])
def test_a_hook_driven_canary_tells_the_router_each_weight(tmp_path, router, shift_path,
                                                           expected):
    url, received = router
    plan = write_plan(tmp_path, "CANARY", f"""\
        canary: {{traffic: hook, hold: 60s}}
        hooks:
          traffic_shift: {{webhook: "{url}{shift_path}", timeout: 5s}}
          rollback: {{webhook: "{url}/rollback", timeout: 5s}}
        """)
    readiness, status = run(plan, tmp_path)
    assert status is expected, readiness.reasons
    shifts = [body["weight"] for path, body in received if path == shift_path]
    rollbacks = [body for path, body in received if path == "/rollback"]
    assert all(body["deployment_id"] == "DEPLOY-STRAT-1" for _, body in received)
    if expected is RunStatus.PASSED:
        assert shifts == [5, 25, 50, 100] and not rollbacks
    else:
        assert shifts == [5, 25, 50] and [b["weight"] for b in rollbacks] == [0]
        assert "traffic_shift hook failed (503)" in readiness.reasons[0]


def test_a_rollback_slower_than_the_rto_is_reported(tmp_path):
    plan = write_plan(tmp_path, "BLUE-GREEN", """\
        hooks:
          switch: {command: [sh, -c, 'exit 0']}
          verify_switch: {command: [sh, -c, 'exit 1']}
          rollback: {command: [sh, -c, 'sleep 0.3']}
        rollback: {rto: 100ms}
        """)
    readiness, status = run(plan, tmp_path)
    assert status is RunStatus.FAILED
    assert "over the RTO of 100ms" in readiness.reasons[0]


def test_hooks_of_a_remotely_submitted_plan_never_run(tmp_path):
    from loadgate.controller.readiness_hooks import HookRunner
    plan = write_plan(tmp_path, "BLUE-GREEN", f"""\
        hooks:
          switch: {{command: {trace(tmp_path, "switch")}}}
          rollback: {{command: {trace(tmp_path, "rollback")}}}
        """)
    clock = FakeClock()
    readiness = Readiness(plan, tmp_path / "run", SyntheticSource(clock, {"main": Profile()}),
                          clock, hooks=HookRunner(plan.deployment.id, allowed=False))
    assert readiness.run(lambda: clock.advance(5.0), 5000) is RunStatus.FAILED
    assert lines(tmp_path, "switch") == [] and lines(tmp_path, "rollback") == []
    assert readiness.machine.state(Node(Stage.DEPLOYMENT)) is State.AVARIYA
    assert "hooks are disabled" in " ".join(r["output"] for r in readiness.journal.records()
                                            if r["kind"] == "hook")
