"""Hostile requests to a real agent: every malformed RunSpec or Adjust gets a clear status
(never UNKNOWN or INTERNAL from an unhandled exception) and the agent keeps serving.

Nothing is started, so nothing is sent to any target; the budget is fixed and seeded.
"""
import itertools
import math

import grpc
import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from agent_helpers import run_spec, start_agent
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import agent_pb2

RUN_NUMBERS = itertools.count()
CLEAR = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
         grpc.StatusCode.FAILED_PRECONDITION}

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -1.0, 1e-300, 1e300, 10.0, 100.0]))
counts = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 4, 64]))
urls = st.one_of(st.sampled_from(["http://127.0.0.1:9/", "https://[::1]:9/x?y=1",
                                  "http://localhost:9/", "http://192.0.2.1/", "ftp://127.0.0.1/",
                                  "http://127.0.0.1:0/", "", "http://", "http://[::1/",
                                  "http://127.0.0.1:9/\r\nInjected: 1"]),
                 st.text(max_size=40))
headers = st.lists(st.builds(agent_pb2.Header, name=st.text(max_size=12),
                             value=st.text(max_size=12)), max_size=3)
templates = st.builds(agent_pb2.RequestTemplate, method=st.text(max_size=8),
                      path=st.text(max_size=16), headers=headers, body=st.binary(max_size=32),
                      rotate=st.lists(st.binary(max_size=16), max_size=3),
                      rotate_raw_requests=st.booleans())
targets = st.lists(st.builds(agent_pb2.TargetSpec, name=st.text(max_size=8), url=urls,
                             weight=floats, request=templates), max_size=3)
schedules = st.builds(
    agent_pb2.ScheduleSpec,
    model=st.sampled_from(["constant", "poisson", "ramp", "steps", "closed", "", "zigzag"]),
    rate=floats, end_rate=floats, duration_s=floats, seed=st.integers(-2**63, 2**63 - 1),
    steps=st.lists(st.builds(agent_pb2.Step, rate=floats, duration_s=floats), max_size=3),
    concurrency=counts, think_time_s=floats, shard_index=counts, shard_count=counts)
hostile_specs = st.builds(agent_pb2.RunSpec, targets=targets, schedule=schedules, connections=counts,
                  max_connections=counts, timeout_s=floats, interval_s=floats,
                  workers=st.integers(0, 8), dead_man_s=floats)

# Plausible runs, so that some are accepted (and must then be within the caps), mixed with a
# hostile value in one field or another.
rates = st.floats(0.5, 20_000)
durations = st.floats(0.1, 3600)
sane_targets = st.lists(st.builds(
    agent_pb2.TargetSpec, name=st.sampled_from(["a", "b", "c"]),
    url=st.sampled_from(["http://127.0.0.1:9/", "http://localhost:9/p", "http://[::1]:9/"]),
    weight=st.floats(0, 10), request=st.builds(agent_pb2.RequestTemplate,
                                               method=st.sampled_from(["GET", "POST", ""]),
                                               body=st.binary(max_size=16))),
    min_size=1, max_size=3, unique_by=lambda t: t.name)
sane_schedules = st.one_of(
    st.builds(agent_pb2.ScheduleSpec, model=st.sampled_from(["constant", "poisson"]),
              rate=rates, duration_s=durations, seed=st.integers(0, 2**31),
              shard_index=st.integers(0, 3), shard_count=st.integers(0, 4)),
    st.builds(agent_pb2.ScheduleSpec, model=st.just("ramp"), rate=rates, end_rate=rates,
              duration_s=durations),
    st.builds(agent_pb2.ScheduleSpec, model=st.just("steps"),
              steps=st.lists(st.builds(agent_pb2.Step, rate=rates, duration_s=durations),
                             min_size=1, max_size=3)),
    st.builds(agent_pb2.ScheduleSpec, model=st.just("closed"), concurrency=st.integers(0, 5000),
              duration_s=durations, think_time_s=st.floats(0, 1)))
sane_specs = st.builds(agent_pb2.RunSpec, targets=st.one_of(sane_targets, targets),
                       schedule=st.one_of(sane_schedules, schedules),
                       connections=st.integers(0, 2048), max_connections=st.integers(0, 4096),
                       timeout_s=st.one_of(st.floats(0, 30), floats),
                       interval_s=st.one_of(st.floats(0, 5), floats),
                       workers=st.integers(0, 4), dead_man_s=st.floats(0, 10))
specs = st.one_of(hostile_specs, sane_specs)


@pytest.fixture(scope="module")
def agent():
    process = start_agent(["--workers", "1", "--dead-man", "60s", "--max-rate", "5000",
                           "--max-connections", "4096"])
    yield process
    process.stop()


@pytest.mark.slow
@seed(20261127)
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=specs)
@example(spec=run_spec("http://[::1/", 10, 1.0))
def test_any_run_spec_gets_a_clear_answer(agent, spec):
    stub = agent.stub()
    run_id = f"fuzz-{next(RUN_NUMBERS)}"
    try:
        reply = stub.Prepare(agent_pb2.PrepareRequest(run_id=run_id, spec=spec), timeout=30)
    except grpc.RpcError as error:
        assert error.code() in CLEAR, (error.code(), error.details())
        assert error.details()
        return
    # accepted: it must really be within the caps, and it goes away without sending anything
    assert reply.shard_rate <= 5000 and math.isfinite(reply.shard_rate)
    stop = stub.Stop(agent_pb2.StopRequest(run_id=run_id), timeout=30)
    assert stop.last_seq == 1


@pytest.mark.parametrize("url", ["http://[::1/", "http://[::1", "https://[127.0.0.1]/",
                                 "http://127.0.0.1:99999/", "http://127.0.0.1:x/", "http:///p",
                                 "gopher://127.0.0.1/"])
def test_a_malformed_url_is_an_invalid_argument(agent, url):
    with pytest.raises(grpc.RpcError) as info:
        agent.stub().Prepare(agent_pb2.PrepareRequest(run_id=f"url-{next(RUN_NUMBERS)}",
                                                      spec=run_spec(url, 10, 1.0)), timeout=30)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert repr(url) in info.value.details()


@pytest.mark.parametrize("payload", [b"\xff" * 7, b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc",
                                     bytes(range(256))])
def test_undecodable_requests_do_not_hurt_the_agent(agent, payload):
    channel = agent.channel()
    for method in ("Prepare", "Adjust", "Start", "Stop"):
        call = channel.unary_unary(f"/loadgate.v1.Agent/{method}")
        with pytest.raises(grpc.RpcError) as info:
            call(payload, timeout=10)
        assert info.value.code() is not grpc.StatusCode.OK
    assert agent.stub().Ping(agent_pb2.PingRequest(), timeout=10).agent_unix_ns > 0


@pytest.fixture(scope="module")
def running(agent):
    proc, host, port = start_target_process()
    stub = agent.stub()
    targets = [agent_pb2.TargetSpec(name="a", url=f"http://{host}:{port}/", weight=1),
               agent_pb2.TargetSpec(name="b", url=f"http://{host}:{port}/b", weight=1)]
    spec = run_spec("", 20, 60.0, targets=targets, interval_s=0.5)
    stub.Prepare(agent_pb2.PrepareRequest(run_id="adjusted", spec=spec), timeout=30)
    stub.Start(agent_pb2.StartRequest(run_id="adjusted"), timeout=30)
    yield stub
    stub.Stop(agent_pb2.StopRequest(run_id="adjusted"), timeout=60)
    stop_target_process(proc)


@pytest.mark.slow
@seed(20261128)
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scale=st.one_of(floats, st.floats(0.01, 400)),
       weights=st.dictionaries(st.sampled_from(["a", "b", "c", ""]), floats, max_size=3))
def test_any_adjustment_gets_a_clear_answer(running, scale, weights):
    try:
        running.Adjust(agent_pb2.AdjustRequest(run_id="adjusted", rate_scale=scale,
                                               weights=weights), timeout=10)
    except grpc.RpcError as error:
        assert error.code() in CLEAR, (error.code(), error.details())
        return
    # accepted: within the cap of 5000/s for a 20/s run, and weights that leave traffic
    assert scale == 0 or (math.isfinite(scale) and 0 < scale * 20 <= 5000)
    assert all(math.isfinite(w) and w >= 0 for w in weights.values())
    assert set(weights) <= {"a", "b"}
    reply = running.Ping(agent_pb2.PingRequest(), timeout=10)
    assert reply.generating and reply.active_run_id == "adjusted"
