"""The agent end to end: real agent subprocesses running the real engine against the real
``loadgate target``, over real gRPC on loopback."""
import json
import os
import time
import urllib.request

import grpc
import psutil
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase)

from agent_helpers import Pinger, run_spec, start_agent, stream_reports
from loadgate.native._hdr import Histogram
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import agent_pb2, common_pb2

GPU = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-agent-test", "memory_total": 80 << 30,
       "memory_used": 5 << 30, "utilization": 66, "power_mw": 420_000, "energy_mj": 1,
       "temperature": 58, "sm_clock": 1755, "memory_clock": 2619, "clock_event_reasons": 1,
       "ecc_corrected": 0, "ecc_uncorrected": 0, "processes": [[999, 4 << 30]],
       "gpm": True, "sm_activity": 44.0}


@pytest.fixture(scope="module")
def target():
    proc, host, port = start_target_process()
    yield f"http://{host}:{port}"
    stop_target_process(proc)


def target_requests(url):
    """Requests the target has served (this stats request included)."""
    with urllib.request.urlopen(url + "/__target/stats", timeout=10) as response:
        return json.loads(response.read())["requests"]


def prepare_and_start(stub, run_id, spec, delay_s=0.3):
    prepared = stub.Prepare(agent_pb2.PrepareRequest(run_id=run_id, spec=spec), timeout=30)
    stub.Start(agent_pb2.StartRequest(run_id=run_id,
                                      start_unix_ns=time.time_ns() + int(delay_s * 1e9)),
               timeout=30)
    return prepared


def outcome_total(reports):
    return sum(o.count for r in reports for t in r.targets for o in t.outcomes)


def not_sent(reports):
    return sum(o.count for r in reports for t in r.targets for o in t.outcomes
               if o.outcome == common_pb2.OUTCOME_NOT_SENT)


def check_sequence(reports):
    assert [r.seq for r in reports] == list(range(1, len(reports) + 1))
    assert reports[-1].final and not any(r.final for r in reports[:-1])


@pytest.fixture(scope="module")
def gpu_agent():
    agent = start_agent(["--workers", "1", "--dead-man", "3s", "--telemetry-interval", "0.2s"],
                        fake_nvml={"driver_version": "550.54.15", "devices": [GPU]})
    yield agent
    agent.stop()


def test_describe_and_ping(gpu_agent):
    stub = gpu_agent.stub()
    node = stub.Describe(agent_pb2.DescribeRequest(), timeout=10)
    assert node.agent_id.endswith(f":{gpu_agent.port}") and node.workers == 1
    assert node.cpu_count >= 1 and node.memory_total_bytes > 0
    assert node.driver_version == "550.54.15" and node.gpu_unavailable_reason == ""
    assert [(g.uuid, g.memory_total_bytes) for g in node.gpus] == [("GPU-agent-test", 80 << 30)]
    before = time.time_ns()
    reply = stub.Ping(agent_pb2.PingRequest(controller_unix_ns=before, controller_id="t"),
                      timeout=10)
    assert reply.controller_unix_ns == before
    assert before <= reply.agent_unix_ns <= time.time_ns()
    assert reply.active_run_id == "" and not reply.generating


def test_health_and_reflection(gpu_agent):
    health = health_pb2_grpc.HealthStub(gpu_agent.channel())
    for service in ("", "loadgate.v1.Agent"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    database = ProtoReflectionDescriptorDatabase(gpu_agent.channel())
    assert "loadgate.v1.Agent" in database.get_services()
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("loadgate.v1.Agent").FindMethodByName("StreamReports")
    assert method.output_type.full_name == "loadgate.v1.IntervalReport"


def test_describe_without_nvml_says_why():
    with start_agent(["--workers", "1"]) as agent:
        node = agent.stub().Describe(agent_pb2.DescribeRequest(), timeout=10)
    assert not node.gpus and node.gpu_unavailable_reason


def test_a_run_reports_every_request_once_with_fake_gpu_telemetry(gpu_agent, target):
    stub = gpu_agent.stub()
    spec = run_spec(target + "/", 200, 2.0, interval_s=0.5)
    with Pinger(stub):
        prepared = prepare_and_start(stub, "full", spec)
        reports = stream_reports(stub, "full")
    assert prepared.shard_requests == 400 and prepared.workers == 1
    check_sequence(reports)
    final = reports[-1]
    assert final.run_end == common_pb2.RUN_END_COMPLETED
    assert final.scheduled_total == 400
    assert outcome_total(reports) == 400
    assert sum(r.intended for r in reports) == 400
    ok = sum(o.count for r in reports for t in r.targets for o in t.outcomes
             if o.outcome == common_pb2.OUTCOME_OK_2XX)
    assert ok == 400 and sum(r.sent for r in reports) == 400
    latency = Histogram()
    for report in reports:
        assert report.run_id == "full" and report.agent_id == f"{gpu_agent.host}:{gpu_agent.port}" \
            or report.agent_id.endswith(f":{gpu_agent.port}")
        assert report.end_unix_ns >= report.start_unix_ns
        for t in report.targets:
            assert t.name == "main"
            latency.add(Histogram.decode_binary(t.latency))
            assert Histogram.decode_binary(t.service_time).total_count == \
                Histogram.decode_binary(t.latency).total_count
    assert latency.total_count == 400 and latency.min >= 1
    # fake NVML telemetry rides on the reports
    gpus = [g for r in reports for s in r.telemetry for g in s.gpus]
    assert gpus and all(g.uuid == "GPU-agent-test" for g in gpus)
    assert {g.utilization_percent for g in gpus} == {66.0}
    assert any(g.sm_activity_percent == 44.0 for g in gpus)
    assert gpus[-1].processes[0].pid == 999
    assert all(s.host.cpu_count >= 1 for r in reports for s in r.telemetry)
    assert any(r.health.workers == 1 for r in reports)


def test_reconnecting_with_after_seq_replays_exactly_the_missing_reports(gpu_agent, target):
    stub = gpu_agent.stub()
    spec = run_spec(target + "/", 100, 2.0, interval_s=0.25)
    with Pinger(stub):
        prepare_and_start(stub, "replay", spec)
        first = stream_reports(stub, "replay", limit=2)  # the controller drops off here
        assert [r.seq for r in first] == [1, 2]
        # a new connection, as a controller that lost its own would open
        fresh = gpu_agent.stub(options=[("grpc.use_local_subchannel_pool", 1)])
        rest = stream_reports(fresh, "replay", after_seq=2)
    check_sequence(first + rest)
    assert outcome_total(first + rest) == 200
    # a full replay gives byte-identical reports: the agent's copy is the truth
    again = stream_reports(stub, "replay")
    assert [r.SerializeToString() for r in again] == \
        [r.SerializeToString() for r in first + rest]
    assert stream_reports(stub, "replay", after_seq=len(again)) == []
    with pytest.raises(grpc.RpcError) as info:
        stream_reports(stub, "replay", after_seq=len(again) + 5)
    assert info.value.code() is grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as info:
        stream_reports(stub, "never-prepared")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_stop_ends_the_run_with_every_arrival_accounted(gpu_agent, target):
    stub = gpu_agent.stub()
    spec = run_spec(target + "/", 100, 30.0, interval_s=0.25)
    with Pinger(stub):
        prepare_and_start(stub, "stopped", spec)
        with pytest.raises(grpc.RpcError) as info:
            stub.Prepare(agent_pb2.PrepareRequest(run_id="second", spec=spec), timeout=30)
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        stream_reports(stub, "stopped", limit=3)
        assert stub.Ping(agent_pb2.PingRequest(), timeout=10).generating
        reply = stub.Stop(agent_pb2.StopRequest(run_id="stopped", reason="test"), timeout=60)
    reports = stream_reports(stub, "stopped")
    check_sequence(reports)
    assert reply.last_seq == len(reports)
    final = reports[-1]
    assert final.run_end == common_pb2.RUN_END_STOPPED
    # arrivals after the stop were never sent, and are accounted for as such
    assert final.scheduled_total == 3000 == outcome_total(reports)
    assert sum(r.sent for r in reports) < 1000
    assert not_sent(reports) == 3000 - sum(r.sent for r in reports)
    assert not stub.Ping(agent_pb2.PingRequest(), timeout=10).generating
    with pytest.raises(grpc.RpcError) as info:
        stub.Start(agent_pb2.StartRequest(run_id="stopped"), timeout=10)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_adjust_checks_caps_and_names(target):
    with start_agent(["--workers", "1", "--max-rate", "400"]) as agent:
        stub = agent.stub()
        targets = [agent_pb2.TargetSpec(name="baseline", url=target + "/", weight=1),
                   agent_pb2.TargetSpec(name="canary", url=target + "/c", weight=1)]
        spec = run_spec("", 200, 30.0, interval_s=0.25, targets=targets)
        with Pinger(stub):
            prepare_and_start(stub, "adjusted", spec)
            stream_reports(stub, "adjusted", limit=1)
            with pytest.raises(grpc.RpcError) as info:
                stub.Adjust(agent_pb2.AdjustRequest(run_id="adjusted", rate_scale=3), timeout=10)
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as info:
                stub.Adjust(agent_pb2.AdjustRequest(run_id="adjusted", weights={"other": 1}),
                            timeout=10)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            adjusted_ns = time.time_ns()
            stub.Adjust(agent_pb2.AdjustRequest(run_id="adjusted", rate_scale=1.5,
                                                weights={"baseline": 0, "canary": 1}), timeout=10)
            time.sleep(1.5)
            stub.Stop(agent_pb2.StopRequest(run_id="adjusted"), timeout=60)
        reports = stream_reports(stub, "adjusted")
    # intervals that began after the workers had the new split (allowing 0.2 s to deliver it)
    later = [r for r in reports if r.start_unix_ns > adjusted_ns + 200_000_000 and r.sent]
    assert later, "the run stopped before any interval after the adjustment"
    sent = {}
    for report in later:
        for t in report.targets:
            sent[t.name] = sent.get(t.name, 0) + t.sent
    assert sent.get("baseline", 0) == 0 and sent["canary"] > 0
    assert outcome_total(reports) == reports[-1].scheduled_total


@pytest.mark.slow
def test_dead_man_stops_load_when_the_controller_goes_quiet(target):
    with start_agent(["--workers", "1", "--dead-man", "1.5s"]) as agent:
        stub = agent.stub()
        spec = run_spec(target + "/", 100, 60.0, interval_s=0.25)
        reports = []
        with Pinger(stub) as pinger:
            prepare_and_start(stub, "orphan", spec)
            # the stream is opened while the controller is alive; reading it is no contact
            stream = stub.StreamReports(agent_pb2.StreamReportsRequest(run_id="orphan"),
                                        timeout=60)
            while len(reports) < 2:
                reports.append(next(stream))
        silent_since = pinger.last_ok_ns
        for report in stream:
            reports.append(report)
            if report.final:
                break
        settled = target_requests(target)
        time.sleep(1.0)
        assert target_requests(target) == settled + 1  # only the second stats request
    final = reports[-1]
    assert final.run_end == common_pb2.RUN_END_DEAD_MAN
    check_sequence(reports)
    assert outcome_total(reports) == final.scheduled_total == 6000
    assert not_sent(reports) > 5000
    # the load stopped within the dead-man time (plus the engine's short stop grace)
    last_sent = max(r.end_unix_ns for r in reports if r.sent)
    assert (last_sent - silent_since) / 1e9 < 1.5 + 1.5
    assert (final.end_unix_ns - silent_since) / 1e9 > 1.0


def test_killing_the_agent_stops_its_load(target):
    agent = start_agent(["--workers", "1"])
    try:
        stub = agent.stub()
        with Pinger(stub):
            prepare_and_start(stub, "killed", run_spec(target + "/", 100, 60.0, interval_s=0.25))
            stream_reports(stub, "killed", limit=2)
            assert target_requests(target) > 0
            agent.kill()
    finally:
        agent.stop()
    # the engine's workers notice their parent is gone and stop at once
    deadline = time.monotonic() + 10
    settled = target_requests(target)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = target_requests(target)
        if now == settled + 1:
            break
        settled = now
    assert now == settled + 1, "requests kept arriving after the agent was killed"


@pytest.mark.slow
def test_a_saturated_agent_still_answers_ping(target):
    with start_agent(["--workers", "2", "--dead-man", "5s", "--max-rate", "0"]) as agent:
        stub = agent.stub()
        spec = run_spec(target + "/", 100_000, 4.0, interval_s=0.5, workers=2,
                        connections=64, max_connections=256, timeout_s=1.0)
        prepare_and_start(stub, "flood", spec)
        answered = []
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            sent = time.time_ns()
            reply = stub.Ping(agent_pb2.PingRequest(controller_unix_ns=sent), timeout=3)
            answered.append((time.time_ns() - sent, reply.generating))
            time.sleep(0.2)
        reports = stream_reports(stub, "flood")
    assert len(answered) >= 10 and any(generating for _, generating in answered)
    assert reports[-1].run_end == common_pb2.RUN_END_COMPLETED
    assert any(r.health.saturated for r in reports)
    assert outcome_total(reports) == reports[-1].scheduled_total


@pytest.mark.slow
def test_many_runs_leak_no_descriptors_threads_or_scratch_files(target, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the agent's scratch space, and only its
    with start_agent(["--workers", "1", "--dead-man", "10s"], env=env) as agent:
        stub = agent.stub()
        process = psutil.Process(agent.proc.pid)
        counts = []
        for i in range(8):
            spec = run_spec(target + "/", 50, 0.3, interval_s=0.1)
            spec.targets[0].request.rotate.extend([b"one", b"two"])
            prepare_and_start(stub, f"cycle-{i}", spec, delay_s=0.0)
            reports = stream_reports(stub, f"cycle-{i}")
            assert reports[-1].run_end == common_pb2.RUN_END_COMPLETED
            assert outcome_total(reports) == 15
            counts.append((process.num_fds(), process.num_threads()))
            assert os.listdir(tmp_path) == []
    # after the first runs have warmed every pool, the counts stay where they are
    assert max(c[0] for c in counts[3:]) <= counts[2][0] + 2, counts
    assert max(c[1] for c in counts[3:]) <= counts[2][1] + 2, counts


def test_reports_acknowledged_as_journaled_are_dropped_and_only_those(gpu_agent, target):
    stub = gpu_agent.stub()
    with Pinger(stub):
        prepare_and_start(stub, "acked", run_spec(target + "/", 100, 1.0, interval_s=0.2))
        reports = stream_reports(stub, "acked")
    check_sequence(reports)
    last, acked = len(reports), 3

    def ping(run_id, journaled_seq):
        return stub.Ping(agent_pb2.PingRequest(controller_unix_ns=time.time_ns(), run_id=run_id,
                                               journaled_seq=journaled_seq),
                         timeout=10).buffered_reports

    assert ping("acked", 0) == last
    assert ping("no-such-run", 99) == 0
    assert ping("acked", acked) == last - acked
    assert ping("acked", acked - 1) == last - acked  # an older acknowledgement restores nothing
    assert stream_reports(stub, "acked", after_seq=acked) == reports[acked:]
    with pytest.raises(grpc.RpcError) as raised:
        stream_reports(stub, "acked", after_seq=acked - 1)
    assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert f"seq {acked + 1}" in raised.value.details()
    assert ping("acked", last + 5) == 0  # past the last report: everything, nothing more
    assert stream_reports(stub, "acked", after_seq=last) == []
    with pytest.raises(grpc.RpcError) as raised:
        stream_reports(stub, "acked", after_seq=last + 1)
    assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
