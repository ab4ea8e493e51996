"""The controller running a distributed load test: real ``loadgate agent`` processes, a real
``loadgate target``, real gRPC, all on loopback.  The helpers at the top are shared by the
other tests/test_controller_run_*.py files."""
import asyncio
import contextlib
import http.client
import io
import json
import os
import subprocess
import sys
import time

import grpc
import pytest

from agent_helpers import start_agent
from loadgate.controller.merge import Metric
from loadgate.controller.run_journal import accepted_reports, report_payload
from loadgate.controller.rundir import HLOG_DIR, JOURNAL, TELEMETRY, hlog_name
from loadgate.controller.runner import DistributedRun
from loadgate.controller.runner_spec import RunDefinition, TargetDefinition
from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.native._hdr import Histogram
from loadgate.native.errors import InfrastructureError
from loadgate.native.hlog import read_hlog
from loadgate.native.schedule import ConstantRate
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import agent_pb2, common_pb2

FAKE_GPU = {"driver_version": "550.54.15",
            "devices": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-fake-0",
                         "memory_total": 85899345920, "memory_used": 1073741824,
                         "utilization": 37, "memory_utilization": 12, "power_mw": 250000,
                         "temperature": 45, "sm_clock": 1980, "memory_clock": 2619}]}


# -- shared helpers ---------------------------------------------------------------------------

@contextlib.contextmanager
def real_target(args=("--latency", "1ms")):
    """A ``loadgate target`` process; yields its base URL and a stats reader."""
    proc, host, port = start_target_process(list(args))
    try:
        yield f"http://{host}:{port}", lambda: target_requests(host, port)
    finally:
        stop_target_process(proc)


def target_requests(host, port):
    """Requests the target has received so far (its own counter)."""
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", "/__target/stats")
        stats = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    # Every answered request but the stats ones has an outcome.
    return sum(stats["outcomes"].values())


@contextlib.contextmanager
def real_agents(count, args=("--workers", "1"), fake_nvml=None):
    agents = []
    try:
        for _ in range(count):
            agents.append(start_agent(list(args), fake_nvml=fake_nvml))
        yield agents
    finally:
        for agent in agents:
            agent.stop()


def definition(url, rate=300, duration_s=2.0, policy=AgentLossPolicy.ABORT, interval_s=0.5,
               targets=None, dead_man_s=5.0):
    targets = targets or (TargetDefinition("main", url + "/"),)
    return RunDefinition(targets=targets, schedule=ConstantRate(rate, duration_s),
                         connections=4, max_connections=32, timeout_s=2.0,
                         interval_s=interval_s, workers_per_agent=1, dead_man_s=dead_man_s,
                         agent_loss=policy)


def run_to_end(run, on_interval=None, timeout=60.0):
    """Prepares, starts and waits for a DistributedRun on a fresh event loop."""
    async def main():
        try:
            if on_interval:
                run.add_listener(on_interval)
            await run.prepare()
            await run.start(lead_s=0.3)
            return await run.wait(timeout)
        finally:
            await run.close()
    return asyncio.run(main())


def journal_reports(run_dir):
    """Every report of a run directory's journal that was merged, in journal order."""
    return [common_pb2.IntervalReport.FromString(report_payload(record))
            for record in accepted_reports(os.path.join(run_dir, JOURNAL))]


def sum_reports(reports, target, metric):
    total = Histogram()
    for report in reports:
        for t in report.targets:
            if t.name == target:
                total.add(Histogram.decode_binary(getattr(t, metric.value)))
    return total


def completed_in(reports):
    return sum(o.count for r in reports for t in r.targets for o in t.outcomes
               if o.outcome != common_pb2.OUTCOME_NOT_SENT)


def hlog_total(run_dir, target, metric):
    total = Histogram()
    for _, _, _, histogram in read_hlog(os.path.join(run_dir, HLOG_DIR, hlog_name(target, metric))):
        total.add(histogram)
    return total


def assert_seqs_contiguous(reports):
    """Each agent's journaled seqs are 1..n with no gap or repeat."""
    by_agent = {}
    for report in reports:
        by_agent.setdefault(report.agent_id, []).append(report.seq)
    for agent, seqs in by_agent.items():
        assert seqs == list(range(1, len(seqs) + 1)), (agent, seqs)
    return by_agent


# -- three agents, one target -----------------------------------------------------------------

@pytest.fixture(scope="module")
def three_agent_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("three") / "run"
    with real_target() as (url, requests_seen), real_agents(3, fake_nvml=FAKE_GPU) as agents:
        targets = (TargetDefinition("baseline", url + "/", weight=1.0),
                   TargetDefinition("canary", url + "/canary", weight=1.0))
        run = DistributedRun(definition(url, rate=300, duration_s=2.0, targets=targets),
                             [a.address for a in agents], run_dir)
        intervals = []
        summary = run_to_end(run, intervals.append)
        seen = requests_seen()
    return run, summary, intervals, seen, str(run_dir)


@pytest.mark.slow
def test_three_agents_complete_every_scheduled_request(three_agent_run):
    run, summary, intervals, seen, _ = three_agent_run
    assert summary["status"] == "completed", summary["reason"]
    load = summary["load"]
    assert load["scheduled"] == 600 and load["sent"] == 600 and load["shortfall"] == 0
    assert summary["requests"]["by_outcome"]["2xx"] == 600 == seen
    assert [a["state"] for a in summary["agents"]] == ["finished"] * 3
    assert sum(a["shard_requests"] for a in summary["agents"]) == 600
    assert all(a["rtt_ns"] > 0 and a["clock_offset_ns"] is not None for a in summary["agents"])
    assert not summary["agents_lost"] and not summary["rejected_reports"]
    # Intervals come out in order, each with every agent, none missing.
    plain = [m for m in intervals if not m.correction]
    assert [m.index for m in plain] == list(range(len(plain)))
    assert all(not m.missing for m in plain)


@pytest.mark.slow
def test_merged_histograms_are_the_sum_of_the_agents_journaled_histograms(three_agent_run):
    run, summary, intervals, _, run_dir = three_agent_run
    reports = journal_reports(run_dir)
    by_agent = assert_seqs_contiguous(reports)
    assert len(by_agent) == 3
    assert completed_in(reports) == summary["load"]["completed"] == 600
    for name in ("baseline", "canary"):
        for metric in Metric:
            from_journal = sum_reports(reports, name, metric)
            assert from_journal == run.ingest.totals.targets[name].histograms[metric]
            assert from_journal == hlog_total(run_dir, name, metric)
            merged = Histogram()
            for m in intervals:
                merged.add(m.targets[name].histograms[metric])
            assert merged == from_journal
        figures = summary["targets"][name]["latency_us"]
        total = run.ingest.totals.targets[name].histograms[Metric.LATENCY]
        assert figures["count"] == total.total_count > 0
        assert figures["p99"] == total.value_at_percentile(99.0)
    # Per agent: what it reported is what the summary says it did.
    for agent in summary["agents"]:
        own = [r for r in reports if r.agent_id == agent["agent_id"]]
        assert agent["completed"] == completed_in(own)
        assert agent["reports"] == len(own)


@pytest.mark.slow
def test_fake_nvml_telemetry_reaches_the_run_directory(three_agent_run):
    _, summary, _, _, run_dir = three_agent_run
    with open(os.path.join(run_dir, TELEMETRY)) as f:
        samples = [json.loads(line) for line in f]
    agents = {a["agent_id"] for a in summary["agents"]}
    assert {s["agent_id"] for s in samples} == agents
    gpus = [g for s in samples for g in s.get("gpus", [])]
    assert gpus and all(g["name"] == "NVIDIA H100 80GB HBM3" for g in gpus)
    assert any(g.get("utilization_percent") == 37 for g in gpus)
    assert all(s["host"]["cpu_count"] >= 1 for s in samples)


@pytest.mark.slow
def test_summary_files_are_written(three_agent_run):
    _, summary, _, _, run_dir = three_agent_run
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    with open(os.path.join(run_dir, "summary.txt")) as f:
        text = f.read()
    assert "completed" in text and "baseline" in text and "canary" in text


@pytest.mark.slow
def test_loadgate_run_cli_starts_local_agents_by_default(tmp_path):
    with real_target() as (url, requests_seen):
        plan = tmp_path / "plan.yaml"
        plan.write_text(f"""
apiVersion: loadgate/v1
deployment: {{id: RUN-TEST, type: FEATURE, risk: LOW, environment: DEV, strategy: BIG-BANG}}
targets:
  - {{name: main, url: "{url}"}}
load: {{rate: 200, duration: 1.5s, interval: 500ms, connections: 2, timeout: 2s}}
local_agents: 2
downtime_window: {{start: "2025-01-01T00:00:00+00:00", end: "2025-01-01T01:00:00+00:00"}}
""")
        run_dir = tmp_path / "run"
        result = subprocess.run(
            [sys.executable, "-m", "loadgate.controller.cli", "run", str(plan), "--no-progress",
             "--workers", "1", "--run-dir", str(run_dir)],
            capture_output=True, text=True, timeout=90)
        seen = requests_seen()
    assert result.returncode == 0, result.stdout + result.stderr
    with open(run_dir / "summary.json") as f:
        summary = json.load(f)
    assert summary["status"] == "completed"
    assert len(summary["agents"]) == 2
    assert summary["load"]["sent"] == 300 == seen
    assert "run directory:" in result.stdout
    assert os.path.exists(run_dir / "agents" / "agent-0.log")
    report = run_dir / "report.html"
    assert f"report: {report}" in result.stdout
    assert summary["run_id"] in report.read_text()


@pytest.mark.slow
def test_live_progress_shows_the_latest_interval(three_agent_run):
    run, _, intervals, _, _ = three_agent_run
    from rich.console import Console
    from loadgate.controller.progress import RunProgress
    out = io.StringIO()
    progress = RunProgress(run, Console(file=out, width=120, force_terminal=False))
    for merged in intervals:
        progress.on_interval(merged)
    out.truncate(0)
    progress.console.print(progress.render())
    text = out.getvalue()
    assert run.run_id in text and "completed 600" in text and "agents 3/3" in text
    assert "baseline" in text and "canary" in text and "p99 ms" in text


@pytest.mark.slow
def test_a_prepared_run_stopped_before_its_start_sends_nothing(tmp_path):
    with real_target() as (url, requests_seen), real_agents(1) as agents:
        run = DistributedRun(definition(url), [agents[0].address], tmp_path / "run")

        async def main():
            try:
                await run.prepare()
                with pytest.raises(InfrastructureError):
                    await run.adjust(rate_scale=2.0)
                await run.stop("changed my mind")
                return await run.wait(5)
            finally:
                await run.close()
        summary = asyncio.run(main())
        seen = requests_seen()
    assert summary["status"] == "stopped" and summary["reason"] == "changed my mind"
    assert summary["load"]["sent"] == 0 == seen
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "stopped"


@pytest.mark.slow
def test_merged_hlogs_read_back_with_the_reference_implementation(three_agent_run):
    hdrh_log = pytest.importorskip("hdrh.log")
    from hdrh.histogram import HdrHistogram
    run, _, _, _, run_dir = three_agent_run
    for name in ("baseline", "canary"):
        for metric in Metric:
            path = os.path.join(run_dir, HLOG_DIR, hlog_name(name, metric))
            reader = hdrh_log.HistogramLogReader(path, HdrHistogram(1, 3_600_000_000, 3))
            total = HdrHistogram(1, 3_600_000_000, 3)
            while (interval := reader.get_next_interval_histogram()) is not None:
                total.add(interval)
            ours = run.ingest.totals.targets[name].histograms[metric]
            assert total.get_total_count() == ours.total_count > 0
            for percentile in (50.0, 99.0, 99.9):
                assert total.get_value_at_percentile(percentile) == \
                    ours.value_at_percentile(percentile)


@pytest.mark.slow
def test_the_agent_keeps_only_reports_not_yet_journaled(tmp_path):
    with real_target() as (url, _), real_agents(1) as agents:
        run = DistributedRun(definition(url, rate=200, duration_s=3.0, interval_s=0.1),
                             [agents[0].address], tmp_path / "run")
        summary = run_to_end(run)
        stub = agents[0].stub()
        held = stub.Ping(agent_pb2.PingRequest(controller_unix_ns=time.time_ns(),
                                               run_id=run.run_id), timeout=10).buffered_reports
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.StreamReports(agent_pb2.StreamReportsRequest(run_id=run.run_id,
                                                                   after_seq=0), timeout=10))
    assert summary["status"] == "completed"
    (seqs,) = assert_seqs_contiguous(journal_reports(tmp_path / "run")).values()
    # Each heartbeat acknowledged what was journaled: the agent holds at most the reports of
    # the last heartbeat periods (0.5 s of 0.1 s intervals), not the whole run.
    assert len(seqs) >= 30 and held <= 12, (len(seqs), held)
    assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
