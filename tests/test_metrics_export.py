"""AgentMetrics and ControllerMetrics: real reports in, a real HTTP scrape out."""
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_helpers import Pinger, run_spec, start_agent
from loadgate.agent.metrics import AgentMetrics
from loadgate.controller.merge import IntervalMerger
from loadgate.controller.metrics import ControllerMetrics
from loadgate.controller.runner_reports import AgentStream, HistogramLayout
from loadgate.native import metric_names as names
from loadgate.native._hdr import Histogram
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import agent_pb2, common_pb2

# Microsecond values far from every bucket bound, so each falls in one bucket whatever the
# HDR precision; the expected buckets below are computed from the values themselves.
LATENCIES_US = [150, 700, 1_800, 1_800, 9_000, 40_000, 40_000, 40_000, 180_000, 2_000_000]
HDR_RELATIVE_ERROR = 1e-3


def encoded(values):
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    return histogram.encode_binary()


def make_report(run_id="run-1", agent_id="a1", seq=1, index=0, latencies=LATENCIES_US,
                ok=None, errors=2, telemetry=(), final=False, start_ns=10**18):
    ok = len(latencies) - errors if ok is None else ok
    report = common_pb2.IntervalReport(
        run_id=run_id, agent_id=agent_id, seq=seq, interval_index=index,
        start_unix_ns=start_ns + index * 10**9, end_unix_ns=start_ns + (index + 1) * 10**9,
        intended=len(latencies) + 1, sent=len(latencies), intended_rate=11.0,
        achieved_rate=float(len(latencies)), final=final, scheduled_total=0)
    target = report.targets.add(name="main", latency=encoded(latencies),
                                service_time=encoded([max(1, v // 2) for v in latencies]),
                                schedule_lag=encoded([5] * len(latencies)),
                                sent=len(latencies), late=1, bytes_read=100 * len(latencies))
    target.outcomes.add(outcome=common_pb2.OUTCOME_OK_2XX, count=ok)
    target.outcomes.add(outcome=common_pb2.OUTCOME_SERVER_5XX, count=errors)
    target.outcomes.add(outcome=common_pb2.OUTCOME_NOT_SENT, count=1)
    report.health.CopyFrom(common_pb2.GeneratorHealth(
        cpu_seconds=0.25, cpu_percent=12.5, max_lag_us=1500, open_connections=4, workers=2,
        saturated=False))
    report.telemetry.extend(telemetry)
    return report


def gpu_sample(index=0, uuid="GPU-11111111-2222-3333-4444-555555555555", available=None):
    gpu = common_pb2.GpuSample(
        index=index, uuid=uuid, name="NVIDIA H100 80GB HBM3", utilization_percent=87.0,
        memory_utilization_percent=40.0, memory_used_bytes=60 << 30,
        memory_total_bytes=80 << 30, memory_reserved_bytes=1 << 30, power_milliwatts=350_500,
        energy_millijoules=9_000_000, temperature_celsius=61, sm_clock_mhz=1980,
        memory_clock_mhz=2619, clock_event_reasons=4, ecc_corrected=3, ecc_uncorrected=0,
        xid_errors=1, sm_activity_percent=55.0)
    gpu.available.extend(available if available is not None else [
        "utilization_percent", "memory_utilization_percent", "memory_used_bytes",
        "memory_total_bytes", "memory_reserved_bytes", "power_milliwatts",
        "energy_millijoules", "temperature_celsius", "sm_clock_mhz", "memory_clock_mhz",
        "clock_event_reasons", "ecc_corrected", "ecc_uncorrected", "xid_errors",
        "sm_activity_percent"])
    return gpu


def telemetry_sample(gpus=None):
    sample = common_pb2.TelemetrySample(
        unix_ns=10**18, host=common_pb2.HostSample(
            cpu_percent=42.0, cpu_count=16, memory_used_bytes=3 << 30,
            memory_total_bytes=16 << 30, net_rx_bytes=1000, net_tx_bytes=2000, load1=1.5))
    sample.gpus.extend([gpu_sample()] if gpus is None else gpus)
    return sample


def scrape(server):
    with urllib.request.urlopen(server.url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def expected_cumulative(values_us, bound_s):
    return sum(1 for v in values_us if v <= bound_s * 1e6)


@pytest.fixture
def served():
    servers = []

    def serve(exporter):
        server = exporter.serve(0)
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.close()


def test_agent_report_scraped_over_http(served):
    metrics = AgentMetrics()
    metrics.observe_report(make_report(telemetry=[telemetry_sample()]))
    samples = scrape(served(metrics))
    bucket = names.REQUEST_LATENCY.bucket
    for bound in names.LATENCY_BUCKETS_SECONDS:
        assert value(samples, bucket, target="main", le=repr(bound)) == \
            expected_cumulative(LATENCIES_US, bound), bound
    assert value(samples, bucket, target="main", le="+Inf") == len(LATENCIES_US)
    assert value(samples, names.REQUEST_LATENCY.name + "_count", target="main") == \
        len(LATENCIES_US)
    total_s = sum(LATENCIES_US) * 1e-6
    assert value(samples, names.REQUEST_LATENCY.name + "_sum", target="main") == \
        pytest.approx(total_s, rel=HDR_RELATIVE_ERROR)
    assert value(samples, names.REQUESTS.name, target="main", outcome="2xx") == 8
    assert value(samples, names.REQUESTS.name, target="main", outcome="5xx") == 2
    assert value(samples, names.REQUESTS.name, target="main", outcome="not_sent") == 1
    assert value(samples, names.REQUESTS_LATE.name, target="main") == 1
    assert value(samples, names.RATE_INTENDED.name) == 11.0
    assert value(samples, names.GENERATOR_MAX_LAG.name) == pytest.approx(0.0015)
    assert value(samples, names.HOST_CPU.name) == pytest.approx(0.42)
    assert value(samples, names.RUN_INFO.name, run_id="run-1") == 1
    gpu = dict(gpu="0", uuid="GPU-11111111-2222-3333-4444-555555555555",
               model_name="NVIDIA H100 80GB HBM3")
    assert value(samples, names.GPU_UTILIZATION.metric.name, **gpu) == pytest.approx(0.87)
    assert value(samples, names.GPU_MEMORY_USED.metric.name, **gpu) == 60 << 30
    assert value(samples, names.GPU_MEMORY_FREE.metric.name, **gpu) == 19 << 30
    assert value(samples, names.GPU_POWER.metric.name, **gpu) == pytest.approx(350.5)
    assert value(samples, names.GPU_SM_CLOCK.metric.name, **gpu) == pytest.approx(1.98e9)
    assert not any(name.startswith("DCGM_") for name, _ in samples)


def test_counters_accumulate_across_reports(served):
    metrics = AgentMetrics()
    server = served(metrics)
    metrics.observe_report(make_report(seq=1, index=0))
    first = scrape(server)
    metrics.observe_report(make_report(seq=2, index=1))
    second = scrape(server)
    count = names.REQUEST_LATENCY.name + "_count"
    assert value(second, count, target="main") == 2 * value(first, count, target="main")
    assert value(second, names.REQUESTS.name, target="main", outcome="2xx") == 16
    assert value(second, names.INTERVALS.name) == 2


def test_dcgm_names_units_and_labels(served):
    metrics = AgentMetrics(dcgm_names=True, hostname="gpu-node-7")
    metrics.observe_telemetry(telemetry_sample())
    samples = scrape(served(metrics))
    labels = dict(gpu="0", UUID="GPU-11111111-2222-3333-4444-555555555555", device="nvidia0",
                  modelName="NVIDIA H100 80GB HBM3", Hostname="gpu-node-7")
    assert value(samples, "DCGM_FI_DEV_GPU_UTIL", **labels) == pytest.approx(87.0)
    assert value(samples, "DCGM_FI_DEV_FB_USED", **labels) == 60 * 1024
    assert value(samples, "DCGM_FI_DEV_FB_FREE", **labels) == 19 * 1024
    assert value(samples, "DCGM_FI_DEV_POWER_USAGE", **labels) == pytest.approx(350.5)
    assert value(samples, "DCGM_FI_DEV_GPU_TEMP", **labels) == 61
    assert value(samples, "DCGM_FI_DEV_SM_CLOCK", **labels) == pytest.approx(1980)
    assert value(samples, "DCGM_FI_PROF_SM_ACTIVE", **labels) == pytest.approx(0.55)
    assert value(samples, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", **labels) == 9_000_000
    # No dcgm field means the same thing as loadgate's XID count: it keeps loadgate's name.
    assert value(samples, "loadgate_gpu_xid_errors_total", gpu="0",
                 uuid="GPU-11111111-2222-3333-4444-555555555555",
                 model_name="NVIDIA H100 80GB HBM3") == 1
    assert not any(name.startswith("loadgate_gpu_utilization") for name, _ in samples)


def test_unavailable_gpu_fields_and_vanished_devices_are_not_exported(served):
    metrics = AgentMetrics()
    server = served(metrics)
    metrics.observe_telemetry(telemetry_sample(
        [gpu_sample(), gpu_sample(1, "GPU-other", available=["temperature_celsius"])]))
    samples = scrape(server)
    other = dict(gpu="1", uuid="GPU-other", model_name="NVIDIA H100 80GB HBM3")
    assert value(samples, names.GPU_TEMPERATURE.metric.name, **other) == 61
    assert (names.GPU_UTILIZATION.metric.name, tuple(sorted(other.items()))) not in samples
    metrics.observe_telemetry(telemetry_sample([gpu_sample()]))
    samples = scrape(server)
    assert (names.GPU_TEMPERATURE.metric.name, tuple(sorted(other.items()))) not in samples
    metrics.observe_telemetry(telemetry_sample([]))
    assert not any(name.startswith("loadgate_gpu_") for name, _ in scrape(server))


def test_undecodable_histogram_is_counted_not_raised(served):
    metrics = AgentMetrics()
    report = make_report()
    report.targets[0].latency = b"\x1c\x84\x93\x14garbage"
    metrics.observe_report(report)
    samples = scrape(served(metrics))
    assert value(samples, names.REPORT_DECODE_ERRORS.name, target="main") == 1
    assert value(samples, names.REQUESTS.name, target="main", outcome="2xx") == 8
    assert value(samples, names.SERVICE_TIME.name + "_count", target="main") == len(LATENCIES_US)


def test_controller_exports_the_exact_merge_of_two_agents(served):
    layout = HistogramLayout()
    streams = {agent: AgentStream("run-9", agent, ["main"], layout) for agent in ("a1", "a2")}
    merger = IntervalMerger(["main"], list(streams), layout)
    metrics = ControllerMetrics()
    metrics.set_run("run-9", "payments-v2")
    other = [300, 3_000, 30_000_000]
    handed_out = []
    for agent, latencies in (("a1", LATENCIES_US), ("a2", other)):
        report = make_report(run_id="run-9", agent_id=agent, latencies=latencies, errors=1)
        interval = streams[agent].check(report)
        streams[agent].commit(interval)
        handed_out += merger.add(interval)
    assert len(handed_out) == 1
    metrics.observe_interval(handed_out[0])
    samples = scrape(served(metrics))
    every = LATENCIES_US + other
    bucket = names.RUN_REQUEST_LATENCY.bucket
    for bound in names.LATENCY_BUCKETS_SECONDS:
        assert value(samples, bucket, target="main", le=repr(bound)) == \
            expected_cumulative(every, bound)
    assert value(samples, bucket, target="main", le="+Inf") == len(every)
    assert value(samples, names.RUN_REQUESTS.name, target="main", outcome="5xx") == 2
    assert value(samples, names.RUN_REQUESTS.name, target="main", outcome="2xx") == \
        len(every) - 2
    assert value(samples, names.RUN_REQUESTS_INTENDED.name) == len(every) + 2
    assert value(samples, names.RUN_RATE_ACHIEVED.name) == pytest.approx(len(every))
    assert value(samples, names.RUN_AGENTS_REPORTING.name) == 2
    assert value(samples, names.RUN_DEPLOYMENT.name, run_id="run-9",
                 deployment="payments-v2") == 1


def test_controller_stage_state_canary_weight_and_gates(served):
    metrics = ControllerMetrics()
    server = served(metrics)
    metrics.set_stage("performance", "NSV:TESTIRUYETSYA")
    metrics.set_stage("performance", "SV:PROVERENO")
    metrics.set_canary_weight(25)
    metrics.set_gate("latency.p95", "PASS")
    metrics.set_agent_up("a1", True)
    metrics.set_agent_up("a2", False)
    samples = scrape(server)
    state = names.STAGE_STATE.name
    assert value(samples, state, stage="performance", state="SV:PROVERENO") == 1
    assert value(samples, state, stage="performance", state="NSV:TESTIRUYETSYA") == 0
    assert value(samples, names.CANARY_WEIGHT.name) == 0.25
    assert value(samples, names.GATE_OUTCOME.name, gate="latency.p95", outcome="PASS") == 1
    assert value(samples, names.AGENT_UP.name, agent="a2") == 0
    metrics.set_verdict("NOT_READY")
    metrics.set_verdict("READY")
    samples = scrape(server)
    assert value(samples, names.RUN_VERDICT.name, verdict="READY") == 1
    assert (names.RUN_VERDICT.name, (("verdict", "NOT_READY"),)) not in samples


def test_every_exported_series_is_in_the_name_table(served):
    for dcgm in (False, True):
        agent = AgentMetrics(dcgm_names=dcgm)
        agent.observe_report(make_report(telemetry=[telemetry_sample()]))
        controller = ControllerMetrics()
        controller.set_stage("s", "OZHIDAET")
        known = names.exported_series(dcgm)
        for exporter in (agent, controller):
            for name, _ in scrape(served(exporter)):
                if name.startswith(("process_", "python_")) or name.endswith("_created"):
                    continue
                assert name in known, name


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def metric_sum(samples, name, **labels):
    wanted = set(labels.items())
    return sum(v for (n, key), v in samples.items() if n == name and wanted <= set(key))


class _Url:
    def __init__(self, url):
        self.url = url


@pytest.mark.slow
def test_real_agent_metrics_move_during_a_run_and_match_its_reports():
    gpu = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-metrics-test",
           "memory_total": 80 << 30, "memory_used": 5 << 30, "utilization": 66}
    port = free_port()
    target, host, target_port = start_target_process()
    try:
        with start_agent(["--workers", "1", "--metrics-port", port, "--telemetry-interval",
                          "0.2s"], fake_nvml={"devices": [gpu]}) as agent:
            endpoint = _Url(f"http://127.0.0.1:{port}/metrics")
            stub = agent.stub()
            spec = run_spec(f"http://{host}:{target_port}/", 200, 3.0, interval_s=0.25)
            seen = []
            with Pinger(stub):
                stub.Prepare(agent_pb2.PrepareRequest(run_id="m", spec=spec), timeout=30)
                stub.Start(agent_pb2.StartRequest(run_id="m",
                                                  start_unix_ns=time.time_ns() + 300_000_000),
                           timeout=30)
                call = stub.StreamReports(agent_pb2.StreamReportsRequest(run_id="m"),
                                          timeout=60)
                reports = []
                for report in call:
                    reports.append(report)
                    seen.append(metric_sum(scrape(endpoint), names.REQUESTS.name))
                    if report.final:
                        break
            final = scrape(endpoint)
    finally:
        stop_target_process(target)
    assert reports[-1].final
    # counters move while the run goes on, and never backwards
    assert seen == sorted(seen) and len(set(seen)) >= 3
    completed = sum(o.count for r in reports for t in r.targets for o in t.outcomes
                    if o.outcome == common_pb2.OUTCOME_OK_2XX)
    assert completed == 600
    assert value(final, names.REQUESTS.name, target="main", outcome="2xx") == completed
    assert value(final, names.REQUEST_LATENCY.name + "_count", target="main") == completed
    assert value(final, names.REQUESTS_INTENDED.name) == sum(r.intended for r in reports)
    assert value(final, names.INTERVALS.name) == len(reports)
    assert value(final, names.GPU_UTILIZATION.metric.name, gpu="0", uuid="GPU-metrics-test",
                 model_name="NVIDIA H100 80GB HBM3") == pytest.approx(0.66)


def test_metrics_served_on_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    metrics = ControllerMetrics()
    metrics.set_canary_weight(50)
    server = metrics.serve(0, "::1")
    try:
        assert server.url.startswith("http://[::1]:")
        assert value(scrape(server), names.CANARY_WEIGHT.name) == 0.5
    finally:
        server.close()


class _Scraper:
    """Scrapes a /metrics endpoint on a thread until stopped, keeping one figure per scrape."""

    def __init__(self, endpoint, figure):
        self.endpoint = endpoint
        self.figure = figure
        self.seen = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(0.1):
            self.seen.append(self.figure(scrape(self.endpoint)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_controller_metrics_move_during_a_distributed_run_and_match_its_summary(tmp_path):
    from test_controller_run import definition, real_agents, real_target, run_to_end

    from loadgate.controller.runner import DistributedRun

    metrics = ControllerMetrics()
    server = metrics.serve(0)
    try:
        with real_target() as (url, _), real_agents(2) as agents:
            run = DistributedRun(definition(url, rate=300, duration_s=2.0, interval_s=0.25),
                                 [a.address for a in agents], str(tmp_path / "run"))
            metrics.follow_run(run, "pay-1")
            with _Scraper(server, lambda s: metric_sum(s, names.RUN_REQUESTS.name)) as moving:
                summary = run_to_end(run)
            final = scrape(server)
            agent_ids = [s.agent_id for s in run.sessions]
    finally:
        server.close()
    assert summary["status"] == "completed"
    assert moving.seen == sorted(moving.seen) and len(set(moving.seen)) >= 3
    for label, count in summary["requests"]["by_outcome"].items():
        assert metric_sum(final, names.RUN_REQUESTS.name, outcome=label) == count, label
    completed = summary["load"]["completed"]
    assert completed == 600
    assert value(final, names.RUN_REQUEST_LATENCY.name + "_count", target="main") == \
        summary["targets"]["main"]["latency_us"]["count"]
    assert value(final, names.RUN_REQUESTS_INTENDED.name) == summary["load"]["intended"]
    assert value(final, names.RUN_DEPLOYMENT.name, run_id=run.run_id, deployment="pay-1") == 1
    for agent_id in agent_ids:
        assert value(final, names.AGENT_UP.name, agent=agent_id) == 1


@pytest.mark.slow
def test_reports_a_controller_acknowledged_still_reach_agent_metrics():
    """The agent drops reports once the controller says they are journaled; /metrics must have
    counted them first, even when nobody scraped during the run."""
    port = free_port()
    target, host, target_port = start_target_process()
    try:
        with start_agent(["--workers", "1", "--metrics-port", port]) as agent:
            endpoint = _Url(f"http://127.0.0.1:{port}/metrics")
            stub = agent.stub()
            spec = run_spec(f"http://{host}:{target_port}/", 200, 2.0, interval_s=0.25)
            stub.Prepare(agent_pb2.PrepareRequest(run_id="ack", spec=spec), timeout=30)
            stub.Start(agent_pb2.StartRequest(run_id="ack",
                                              start_unix_ns=time.time_ns() + 300_000_000),
                       timeout=30)
            reports = []
            for report in stub.StreamReports(agent_pb2.StreamReportsRequest(run_id="ack"),
                                             timeout=60):
                reports.append(report)
                reply = stub.Ping(agent_pb2.PingRequest(controller_unix_ns=time.time_ns(),
                                                        controller_id="tests", run_id="ack",
                                                        journaled_seq=report.seq), timeout=5)
                if report.final:
                    break
            final = scrape(endpoint)
    finally:
        stop_target_process(target)
    assert reports[-1].final and reply.buffered_reports == 0
    completed = sum(o.count for r in reports for t in r.targets for o in t.outcomes
                    if o.outcome == common_pb2.OUTCOME_OK_2XX)
    assert completed == 400
    assert value(final, names.REQUESTS.name, target="main", outcome="2xx") == completed
    assert value(final, names.INTERVALS.name) == len(reports)
