"""Memory over a run: an agent generating load for a long time must not grow with the number
of intervals it has reported.  Short intervals make a few seconds stand for a long run: 200
intervals here are 3 minutes of the default 1 s interval (benchmarks/soak.py runs the real
length).  Latency drawn over a wide range spreads each interval's histograms over many
buckets, as real traffic does."""
import asyncio
import threading
import time

import psutil
import pytest

from agent_helpers import Pinger, run_spec, start_agent, stream_reports
from fake_nvml import FakeNvml
from loadgate.agent.convert import engine_config, schedule_of
from loadgate.agent.nvml import Nvml
from loadgate.agent.runs import AgentRun, RunEnd
from loadgate.agent.telemetry import TelemetrySampler
from loadgate.native.engine import LoadRun
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import agent_pb2

INTERVAL_S = 0.025
DURATION_S = 5.0
# Everything an agent should keep per interval is its report (about a kilobyte); allow
# twice that, plus allocator noise.
ALLOWED_PER_INTERVAL = 2 << 10
NOISE = 2 << 20


def agent_rss(agent):
    """Resident bytes of the agent process and its engine workers."""
    root = psutil.Process(agent.proc.pid)
    total = 0
    for process in [root] + root.children(recursive=True):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


@pytest.mark.slow
def test_agent_memory_does_not_grow_with_the_intervals_of_a_run():
    target, host, port = start_target_process(["--latency", "lognormal:2ms:1.5"])
    try:
        with start_agent(["--workers", "1"]) as agent:
            stub = agent.stub()
            spec = run_spec(f"http://{host}:{port}/", 300, DURATION_S, interval_s=INTERVAL_S,
                            connections=16, timeout_s=1.0)
            samples = []
            stop = threading.Event()

            def sample():
                while not stop.wait(0.1):
                    samples.append((time.monotonic(), agent_rss(agent)))
            sampler = threading.Thread(target=sample, daemon=True)
            with Pinger(stub):
                stub.Prepare(agent_pb2.PrepareRequest(run_id="long", spec=spec), timeout=30)
                began = time.monotonic() + 0.3
                stub.Start(agent_pb2.StartRequest(run_id="long",
                                                  start_unix_ns=time.time_ns() + 300_000_000),
                           timeout=30)
                sampler.start()
                reports = stream_reports(stub, "long")
            stop.set()
            sampler.join()
    finally:
        stop_target_process(target)
    assert reports[-1].final and len(reports) >= 150
    # After the first second (imports, pools, first allocations) memory is flat.
    warm = [rss for t, rss in samples if began + 1.0 <= t <= began + DURATION_S]
    intervals_after = (DURATION_S - 1.0) / INTERVAL_S
    assert len(warm) >= 10
    assert max(warm) - warm[0] <= NOISE + intervals_after * ALLOWED_PER_INTERVAL, \
        f"grew {(max(warm) - warm[0]) / 2**20:.1f} MiB over {intervals_after:.0f} intervals"


GPU = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-m", "memory_total": 80 << 30,
       "memory_used": 1 << 30, "utilization": 55, "power_mw": 300_000,
       "processes": [[123, 1 << 20]]}


@pytest.mark.slow
def test_a_run_lets_go_of_the_telemetry_its_reports_took():
    """Each telemetry sample costs about a kilobyte; the sampler used to keep its last 4096
    however many reports had taken them, ~1.5 KiB more agent memory per 1 s interval for
    the first hour of every run.  Sampling much faster than the report interval shows it in
    seconds: whenever a report is published, the sampler holds nothing taken before that
    report's end but its latest sample (which /metrics reads)."""
    target, host, port = start_target_process(["--latency", "1ms"])
    sampler = TelemetrySampler(0.005, Nvml(FakeNvml({"devices": [GPU]})).open()).start()
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    try:
        spec = run_spec(f"http://{host}:{port}/", 200, 3.0, interval_s=0.05)
        schedule = schedule_of(spec.schedule)
        load_run = LoadRun(engine_config(spec, schedule), workers=1)
        run = AgentRun("telemetry", "agent", load_run, 1, loop, telemetry=sampler,
                       timeout_s=spec.timeout_s, shard_requests=schedule.total_count())
        run.start(time.time_ns() + 100_000_000)
        reports = []
        stale_held = []
        while not (reports and reports[-1].final):
            published = run.reports_after(len(reports))
            held = sampler.between(0, 2**63)
            if published and reports:
                # A sample stamped just before a report's end may reach the sampler just after
                # that report took its share; by the next report it must be gone.
                end = reports[-1].end_unix_ns
                stale_held.append(sum(1 for sample in held if sample.unix_ns < end))
            if published:
                reports.extend(published)
                run.acknowledge(published[-1].seq)
            time.sleep(0.02)
    finally:
        sampler.close()
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join()
        loop.close()
        stop_target_process(target)
    assert reports[-1].run_end == RunEnd.COMPLETED
    assert len(stale_held) >= 50
    # Every sample still reaches exactly one report.
    taken = [sample.unix_ns for report in reports for sample in report.telemetry]
    assert taken == sorted(set(taken)) and len(taken) >= len(reports)
    assert max(stale_held) <= 1, f"held up to {max(stale_held)} samples reports already took"
