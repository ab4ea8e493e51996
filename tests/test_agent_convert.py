"""The agent's translation between the wire and the engine: RunSpec in, IntervalReport out."""
import pytest

from agent_helpers import run_spec
from loadgate.agent.convert import engine_config, interval_report, peak_rate, schedule_of
from loadgate.native._hdr import Histogram
from loadgate.native.engine import load_rotate_file
from loadgate.native.engine_snapshot import IntervalSnapshot, TargetInterval
from loadgate.native.errors import ConfigError
from loadgate.native.outcomes import Outcome
from loadgate.native.schedule import ConstantRate, Poisson, Ramp, Steps
from loadgate.proto.loadgate.v1 import agent_pb2, common_pb2


def test_schedules_and_their_shards():
    spec = run_spec("http://127.0.0.1:9/", 1000, 2.0, shard_index=1, shard_count=3).schedule
    assert schedule_of(spec) == ConstantRate(1000, 2.0).shard(1, 3)
    assert peak_rate(spec) == pytest.approx(1000 / 3)
    spec = agent_pb2.ScheduleSpec(model="poisson", rate=50, duration_s=1, seed=7)
    assert schedule_of(spec) == Poisson(50, 1.0, 7)
    spec = agent_pb2.ScheduleSpec(model="ramp", rate=10, end_rate=90, duration_s=4)
    assert schedule_of(spec) == Ramp(10, 90, 4.0) and peak_rate(spec) == 90
    spec = agent_pb2.ScheduleSpec(model="steps", steps=[agent_pb2.Step(rate=5, duration_s=1),
                                                        agent_pb2.Step(rate=20, duration_s=2)])
    assert schedule_of(spec) == Steps(((5.0, 1.0), (20.0, 2.0))) and peak_rate(spec) == 20
    closed = agent_pb2.ScheduleSpec(model="closed", concurrency=7, duration_s=1,
                                    shard_index=2, shard_count=3)
    assert schedule_of(closed).concurrency == 2 and peak_rate(closed) == 0
    # the shards of the whole schedule add up to it exactly
    total = sum(schedule_of(run_spec("", 1000, 2.0, shard_index=i, shard_count=3).schedule)
                .total_count() for i in range(3))
    assert total == 2000


def test_rotation_items_round_trip_through_the_engines_file_format(tmp_path):
    spec = run_spec("http://127.0.0.1:9/", 10, 1.0)
    spec.targets[0].request.rotate.extend([b'{"a": 1}', b"second body", b"  third  "])
    raw = agent_pb2.TargetSpec(name="raw", url="http://127.0.0.1:9/")
    raw.request.rotate_raw_requests = True
    raw.request.rotate.extend([b"POST /x HTTP/1.1\nX-A: 1\n\nbody one",
                               b"GET /y HTTP/1.1\n\n"])
    spec.targets.append(raw)
    config = engine_config(spec, schedule_of(spec.schedule), str(tmp_path))
    bodies, requests = (t.request for t in config.targets)
    assert load_rotate_file(bodies.rotate_file, bodies.rotate_mode) == \
        [b'{"a": 1}', b"second body", b"  third  "]
    entries = load_rotate_file(requests.rotate_file, requests.rotate_mode)
    assert entries[0] == b"POST /x HTTP/1.1\nX-A: 1\n\nbody one"
    assert entries[1].rstrip(b"\n") == b"GET /y HTTP/1.1"


@pytest.mark.parametrize("items, raw", [([b"two\nlines"], False), ([b"   "], False),
                                        ([b""], False), ([b"GET / HTTP/1.1\n%%\nX"], True)])
def test_rotation_items_the_file_format_cannot_carry_are_refused(tmp_path, items, raw):
    spec = run_spec("http://127.0.0.1:9/", 10, 1.0)
    spec.targets[0].request.rotate.extend(items)
    spec.targets[0].request.rotate_raw_requests = raw
    with pytest.raises(ConfigError):
        engine_config(spec, schedule_of(spec.schedule), str(tmp_path))


def test_weights_zero_means_even_unless_another_is_set(tmp_path):
    targets = [agent_pb2.TargetSpec(name="a", url="http://127.0.0.1:9/"),
               agent_pb2.TargetSpec(name="b", url="http://127.0.0.1:9/")]
    spec = run_spec("", 10, 1.0, targets=targets)
    config = engine_config(spec, schedule_of(spec.schedule), str(tmp_path))
    assert [t.weight for t in config.targets] == [1.0, 1.0]
    spec.targets[1].weight = 3
    config = engine_config(spec, schedule_of(spec.schedule), str(tmp_path))
    assert [t.weight for t in config.targets] == [0.0, 3.0]


def _histogram(values):
    h = Histogram()
    for v in values:
        h.record(v)
    return h


def test_an_interval_snapshot_becomes_a_report_with_every_figure():
    target = TargetInterval(latency=_histogram([100, 200, 300_000]),
                            service_time=_histogram([90, 180, 1000]),
                            schedule_lag=_histogram([1, 2, 299_000]),
                            sent=3, late=1, bytes_read=999)
    target.outcomes[Outcome.OK_2XX] = 2
    target.outcomes[Outcome.TIMEOUT] = 1
    target.outcomes[Outcome.NOT_SENT] = 4
    snapshot = IntervalSnapshot(index=5, start_ns=10**18, end_ns=10**18 + 500_000_000,
                                intended=7, sent=3, targets={"main": target},
                                cpu_seconds=0.45, max_lag_us=299_000, open_connections=3)
    sample = common_pb2.TelemetrySample(unix_ns=10**18 + 1)
    report = interval_report(snapshot, "run", "agent:1", 9, workers=1, telemetry=[sample])
    assert (report.run_id, report.agent_id, report.seq, report.interval_index) == \
        ("run", "agent:1", 9, 5)
    assert report.intended == 7 and report.sent == 3 and not report.final
    assert report.intended_rate == pytest.approx(14.0)
    assert report.achieved_rate == pytest.approx(6.0)  # 3 ended in 0.5 s (not-sent excluded)
    wire = report.targets[0]
    assert Histogram.decode_binary(wire.latency) == target.latency
    assert Histogram.decode_binary(wire.service_time) == target.service_time
    assert Histogram.decode_binary(wire.schedule_lag) == target.schedule_lag
    assert {(o.outcome, o.count) for o in wire.outcomes} == {
        (common_pb2.OUTCOME_OK_2XX, 2), (common_pb2.OUTCOME_TIMEOUT, 1),
        (common_pb2.OUTCOME_NOT_SENT, 4)}
    assert (wire.sent, wire.late, wire.bytes_read) == (3, 1, 999)
    health = report.health
    assert health.cpu_percent == pytest.approx(90.0) and health.saturated
    assert health.max_lag_us == 299_000 and health.open_connections == 3
    assert list(report.telemetry) == [sample]


def test_an_idle_generator_is_not_saturated():
    snapshot = IntervalSnapshot(index=0, start_ns=0, end_ns=1_000_000_000, intended=10, sent=10,
                                targets={"main": TargetInterval(sent=10)}, cpu_seconds=0.05,
                                max_lag_us=300)
    report = interval_report(snapshot, "run", "a", 1, workers=2)
    assert not report.health.saturated and report.health.cpu_percent == pytest.approx(2.5)
    assert all(o.outcome != common_pb2.OUTCOME_UNSPECIFIED for t in report.targets
               for o in t.outcomes)


def test_every_engine_outcome_has_its_wire_twin():
    for outcome in Outcome:
        assert common_pb2.Outcome.Value("OUTCOME_" + outcome.name)


def test_checked_addresses_pin_their_targets_and_the_rest_resolve_by_name(tmp_path):
    targets = [agent_pb2.TargetSpec(name="checked", url="http://localhost:9/"),
               agent_pb2.TargetSpec(name="listed", url="http://api.internal:9/")]
    spec = run_spec("", 10, 1.0, targets=targets)
    config = engine_config(spec, schedule_of(spec.schedule), str(tmp_path),
                           {"checked": "127.0.0.1"})
    assert [(t.host, t.address) for t in config.targets] == \
        [("localhost", "127.0.0.1"), ("api.internal", None)]
    assert engine_config(spec, schedule_of(spec.schedule)).targets[0].address is None
