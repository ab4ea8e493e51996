"""Arrival schedules: exact counts, shards that partition the schedule, seeded Poisson, scaling."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgate.native.errors import ConfigError
from loadgate.native.schedule import (
    NS_PER_S, ArrivalModel, ClosedLoop, ConstantRate, Poisson, Ramp, Steps, make_schedule,
    schedule_from_dict,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drain(schedule, batch=997):
    cursor = schedule.cursor()
    parts = []
    while True:
        part = cursor.next_batch(batch)
        assert part.dtype == np.int64
        if not len(part):
            break
        parts.append(part)
    assert cursor.next_batch(batch).size == 0
    instants = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    assert cursor.emitted == len(instants)
    return instants


rates = st.floats(min_value=0.5, max_value=5000, allow_nan=False)
durations = st.floats(min_value=0.01, max_value=3, allow_nan=False)
open_schedules = st.one_of(
    st.builds(ConstantRate, rates, durations),
    st.builds(Poisson, rates, durations, st.integers(0, 2**32)),
    st.builds(Ramp, st.floats(0, 3000), st.floats(0, 3000), durations),
    st.builds(Steps, st.lists(st.tuples(st.floats(0, 3000), st.floats(0.01, 1)),
                              min_size=1, max_size=5).map(tuple)),
)


@FAST
@given(open_schedules, st.integers(1, 9), st.integers(1, 500))
def test_shards_union_is_the_original(schedule, count, batch):
    whole = drain(schedule)
    assert len(whole) == schedule.total_count()
    assert np.all(np.diff(whole) >= 0)
    assert whole.size == 0 or (whole[0] >= 0 and whole[-1] <= schedule.duration_s * NS_PER_S)
    shards = [schedule.shard(i, count) for i in range(count)]
    parts = [drain(shard, batch) for shard in shards]
    for shard, part in zip(shards, parts):
        assert len(part) == shard.total_count()
        assert np.all(np.diff(part) >= 0)
    assert sum(s.total_count() for s in shards) == schedule.total_count()
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), whole)


@FAST
@given(open_schedules, st.integers(1, 4), st.integers(1, 4))
def test_shard_of_a_shard_is_a_shard_of_the_original(schedule, outer, inner):
    nested = [drain(schedule.shard(i, outer).shard(j, inner))
              for i in range(outer) for j in range(inner)]
    np.testing.assert_array_equal(np.sort(np.concatenate(nested)), drain(schedule))


@FAST
@given(st.floats(1, 20000), st.floats(0.05, 2), st.integers(1, 16))
def test_constant_rate_counts_and_spacing(rate, duration, count):
    schedule = ConstantRate(rate, duration)
    # Arrivals at k/rate strictly before the end of the run.
    k = np.arange(int(rate * duration) + 2)
    assert schedule.total_count() == int(np.sum(k / rate < duration * (1 - 1e-12)))
    for index in range(count):
        part = drain(schedule.shard(index, count))
        if len(part) > 1:
            spacing = np.diff(part)
            assert np.all(np.abs(spacing - count * NS_PER_S / rate) <= 1)
        if len(part):
            assert abs(part[0] - index * NS_PER_S / rate) <= 1


def test_exact_counts_of_each_model():
    assert ConstantRate(1000, 0.3).total_count() == 300
    assert ConstantRate(10_000, 1.0).total_count() == 10_000
    assert Ramp(0, 1000, 2.0).total_count() == 1000
    assert Ramp(100, 100, 1.5).total_count() == 150
    assert Steps(((10, 1), (0, 1), (20, 0.5))).total_count() == 20
    assert ClosedLoop(8, 1.0).total_count() == 0
    assert drain(ClosedLoop(8, 1.0)).size == 0


def test_ramp_rate_rises_linearly():
    instants = drain(Ramp(100, 1000, 2.0)) / NS_PER_S
    first, second = np.sum(instants < 1.0), np.sum(instants >= 1.0)
    # L(1) = 100 + 450/2 = 325 of 1100 in all.
    assert first == 325 and second == 775


def test_steps_follow_each_stage():
    instants = drain(Steps(((100, 1), (0, 0.5), (400, 0.5)))) / NS_PER_S
    assert np.sum(instants < 1) == 100
    assert np.sum((instants >= 1) & (instants < 1.5)) == 0
    assert np.sum(instants >= 1.5) == 200
    assert np.allclose(np.diff(instants[100:]), 1 / 400)


def test_poisson_is_reproducible_by_seed_and_poisson():
    a, b, c = (drain(Poisson(2000, 5.0, seed)) for seed in (11, 11, 12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[:100], c[:100])
    gaps = np.diff(a) / NS_PER_S
    # Exponential gaps: mean 1/rate and coefficient of variation 1 (10000 samples, ~1 % error).
    assert abs(gaps.mean() * 2000 - 1) < 0.05
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05
    # The batch size the engine asks for cannot change the realisation.
    np.testing.assert_array_equal(drain(Poisson(2000, 5.0, 11), batch=1), a)


def test_poisson_shards_are_poisson_of_their_share():
    schedule = Poisson(4000, 5.0, 3)
    part = drain(schedule.shard(1, 4)) / NS_PER_S
    gaps = np.diff(part)
    assert abs(len(part) / 5000 - 1) < 0.06
    assert abs(gaps.std() / gaps.mean() - 1) < 0.06


@pytest.mark.parametrize("schedule", [
    ConstantRate(1000, 1.0), Ramp(500, 1500, 1.0), Steps(((800, 0.5), (1200, 0.5))),
])
def test_rate_scale_doubles_arrivals_after_the_instant(schedule):
    cursor = schedule.cursor()
    cursor.set_rate_scale(2.0, NS_PER_S // 2)
    instants = np.concatenate([cursor.next_batch(100) for _ in range(40)])
    base = drain(schedule)
    before = np.sum(base < NS_PER_S // 2)
    assert np.sum(instants < NS_PER_S // 2) == before
    assert np.sum(instants >= NS_PER_S // 2) == 2 * (len(base) - before)
    assert cursor.emitted == len(instants) and cursor.rate_scale == 2.0


def test_rate_scale_on_all_shards_keeps_their_union_equal_to_scaling_the_whole():
    schedule = Poisson(3000, 2.0, 5)

    def scaled(s):
        cursor = s.cursor()
        head = cursor.next_batch(50)
        cursor.set_rate_scale(1.5, NS_PER_S)
        return np.concatenate([head, cursor.next_batch(10**6)])

    parts = np.sort(np.concatenate([scaled(schedule.shard(i, 3)) for i in range(3)]))
    whole = scaled(schedule)
    assert np.array_equal(parts[parts < NS_PER_S], whole[whole < NS_PER_S])
    # After the change the shards scaled from a common instant give the same realisation.
    assert abs(np.sum(parts >= NS_PER_S) - 1.5 * 3000) < 300


def test_rate_scale_redistributes_a_lost_shard():
    schedule = ConstantRate(900, 1.0)
    survivors = [schedule.shard(i, 3).cursor() for i in range(2)]
    for cursor in survivors:
        cursor.next_batch(100)
        cursor.set_rate_scale(1.5, 400 * NS_PER_S // 1000)
    late = np.concatenate([c.next_batch(10**6) for c in survivors])
    # Two shards at 1.5x carry the full 900/s for the remaining 0.6 s.
    assert np.sum(late >= 400 * NS_PER_S // 1000) == pytest.approx(540, abs=2)


def test_rate_scale_never_rewrites_instants_already_handed_out():
    cursor = ConstantRate(1000, 1.0).cursor()
    head = cursor.next_batch(600)
    cursor.set_rate_scale(4.0, 0)
    tail = cursor.next_batch(10**6)
    # The change takes effect at the last instant handed out (599 ms): 4x for the last 401 ms.
    assert tail[0] == head[-1] + 250_000
    assert np.all(np.diff(tail) == 250_000)
    assert len(tail) == 4 * 401 - 1


def test_closed_loop_shards_share_the_concurrency():
    loop = ClosedLoop(10, 2.0, 0.01)
    shards = [loop.shard(i, 4) for i in range(4)]
    assert [s.concurrency for s in shards] == [3, 3, 2, 2]
    assert not loop.is_open_loop and loop.model is ArrivalModel.CLOSED
    assert all(s.think_time_s == 0.01 and s.duration_s == 2.0 for s in shards)


@pytest.mark.parametrize("schedule", [
    ConstantRate(10, 1.0).shard(1, 3), Poisson(10, 1.0, 9), Ramp(1, 2, 3.0),
    Steps(((1, 1), (2, 2))).shard(0, 2), ClosedLoop(3, 1.0, 0.5),
])
def test_round_trip_through_json(schedule):
    back = schedule_from_dict(json.loads(json.dumps(schedule.to_dict())))
    assert back == schedule
    assert np.array_equal(drain(back), drain(schedule))


@pytest.mark.parametrize("bad", [
    lambda: ConstantRate(0, 1), lambda: ConstantRate(10, -1), lambda: ConstantRate(float("nan"), 1),
    lambda: Poisson(10, 1, -1), lambda: Ramp(-1, 5, 1), lambda: Steps(()),
    lambda: Steps(((1, 0),)), lambda: ClosedLoop(-1, 1), lambda: ConstantRate(1, 1).shard(3, 3),
    lambda: schedule_from_dict({"model": "sine"}), lambda: make_schedule("sine", 1, 1),
    lambda: make_schedule("closed", 1, 1), lambda: ConstantRate(1, 1).cursor().set_rate_scale(0, 0),
])
def test_invalid_schedules_are_config_errors(bad):
    with pytest.raises(ConfigError):
        bad()


def test_make_schedule_covers_every_model():
    assert make_schedule("constant", 100, 2) == ConstantRate(100, 2)
    assert make_schedule("poisson", 100, 2, seed=4) == Poisson(100, 2, 4)
    drawn = make_schedule("poisson", 100, 2)
    assert isinstance(drawn.seed, int) and schedule_from_dict(drawn.to_dict()) == drawn
    assert make_schedule("ramp", 10, 2, end_rate=20) == Ramp(10, 20, 2)
    assert make_schedule("steps", 0, 0, steps=[(1, 2)]) == Steps(((1, 2),))
    assert make_schedule("closed", 0, 3, concurrency=4) == ClosedLoop(4, 3)
