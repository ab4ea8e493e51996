"""`loadgate watch` as the reference consumer of WatchRun: rendered against a real service
running a real readiness run (agent and target processes), checked against the stream."""
import io
import threading

import pytest
from rich.console import Console

from loadgate.controller import cli
from loadgate.controller.states import State
from loadgate.controller.watch import WatchState, render, sparkline, watch
from loadgate.native._hdr import Histogram
from loadgate.proto.loadgate.v1 import controller_pb2
from test_service_support import RUN_TIMEOUT_S, Bench, Served


@pytest.fixture(scope="module")
def bench():
    bench = Bench()
    yield bench
    bench.close()


@pytest.fixture
def served(bench, tmp_path):
    served = Served(bench.service(tmp_path / "runs"))
    yield served
    served.close()


def recording_console():
    return Console(record=True, file=io.StringIO(), width=160, color_system=None)


@pytest.mark.slow
def test_watch_shows_stage_markers_percentiles_rate_and_the_verdict(bench, served):
    info = served.submit(bench.plan_text())
    raw = []
    reader = threading.Thread(target=lambda: raw.extend(served.stub.WatchRun(
        controller_pb2.WatchRunRequest(run_id=info.run_id), timeout=RUN_TIMEOUT_S)))
    reader.start()
    console = recording_console()
    state = watch(served.address, info.run_id, console, history=40)
    reader.join(RUN_TIMEOUT_S)
    text = console.export_text()
    assert state.finished and raw[-1].WhichOneof("event") == "finished"
    verdict = raw[-1].finished.verdict
    assert f"verdict {verdict}" in text
    for stage in raw[-1].finished.stages:
        line = next(line for line in text.splitlines() if f" {stage.stage} " in line
                    and "[" in line)
        assert f"[{stage.state}]" in line
    assert "[SV:ZAVERSHENO]" in text and "[SV:PROVERENO]" in text
    # The numbers on screen are those of the merged histograms in the stream.
    intervals = [e.interval for e in raw if e.WhichOneof("event") == "interval"]
    for name in ("baseline", "canary"):
        loaded = [t for i in intervals for t in i.targets if t.name == name and t.count]
        last = loaded[-1]
        p99 = Histogram.decode_binary(last.latency).value_at_percentile(99)
        row = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert f"{p99 / 1000:.2f}" in row and f"{last.rate:.1f}" in row
    assert "canary step 1/2 (50%)" in text and "canary step 2/2 (100%)" in text
    assert "GPU" in text
    recent = [i for i in intervals if i.achieved_rate > 0]
    assert f"rate {recent[-1].achieved_rate:.1f}/s" in text


@pytest.mark.slow
def test_watch_once_from_the_command_line_draws_the_current_state(bench, served, capsys):
    info = served.submit(bench.plan_text())
    code = cli.main(["watch", served.address, info.run_id, "--once"])
    out = capsys.readouterr().out
    assert code == 0
    assert info.run_id in out and "Infrastructure Validation" in out
    assert any(f"[{s.value}]" in out for s in State)
    served.stub.Abort(controller_pb2.AbortRequest(run_id=info.run_id, who="tests",
                                                  reason="seen enough"))
    for event in served.stub.WatchRun(controller_pb2.WatchRunRequest(run_id=info.run_id),
                                      timeout=RUN_TIMEOUT_S):
        pass
    assert event.WhichOneof("event") == "finished"


def test_render_of_a_waiting_run_names_the_approval_and_skips():
    state = WatchState()
    info = controller_pb2.RunInfo(run_id="r1", deployment_id="D-1", waiting_for_approval=True)
    info.stages.add(stage="Deployment Execution", state=State.V_PROTSESSE.value)
    info.stages.add(stage="Staging Deployment", parent="Deployment Execution",
                    state=State.OZHIDAET.value)
    state.apply(controller_pb2.RunEvent(snapshot=info))
    state.apply(controller_pb2.RunEvent(transition=controller_pb2.Transition(
        stage="Deployment Execution", from_state=State.V_PROTSESSE.value,
        to_state=State.AVARIYA.value, reason="p99 regressed"), skipped=3))
    console = recording_console()
    console.print(render(state))
    text = console.export_text()
    assert "WAITING FOR APPROVAL" in text and "skipped 3 events" in text
    assert "[AVARIYA]" in text and "p99 regressed" in text and "[OZHIDAET]" in text


def test_sparkline_scales_between_the_smallest_and_largest_value():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5]) == "▁▁"
    assert sparkline([0, 0]) == ""


H100 = {"driver_version": "550.54.15", "devices": [{
    "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-watch-0", "memory_total": 80 * 2**30,
    "memory_used": 30 * 2**30, "utilization": 73, "memory_utilization": 41}]}


@pytest.mark.slow
def test_watch_shows_the_gpu_utilisation_and_memory_the_agent_samples(tmp_path):
    gpu_bench = Bench(fake_nvml=H100)
    served = Served(gpu_bench.service(tmp_path / "runs"))
    try:
        info = served.submit(gpu_bench.plan_text())
        console = recording_console()
        state = watch(served.address, info.run_id, console)
        text = console.export_text()
        assert state.finished
        row = next(line for line in text.splitlines() if "NVIDIA H100 80GB HBM3" in line)
        assert "agent 0 GPU 0" in row and "util 73%" in row and "memory 30.0/80.0 GiB" in row
    finally:
        served.close()
        gpu_bench.close()
