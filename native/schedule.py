"""Arrival schedules: when each request of an open-loop run is meant to start.

Every open-loop schedule is described by its cumulative intensity L(t), the number of arrivals
expected by time t.  Arrivals sit at unit points v_k of "intensity space": v_k = k for the
deterministic models (constant, ramp, steps) and the points of a unit-rate Poisson process for
POISSON.  An arrival's instant is L^-1(v_k).  Working in intensity space is what makes the
guarantees cheap:

- a shard keeps the arrivals whose key is congruent to its index (the arrival number for the
  deterministic models, a seeded random key for Poisson), so the shards of a schedule partition
  it exactly and a shard of a shard is again a shard of the original;
- every shard of a Poisson schedule draws the same realisation and keeps its own part, so the
  union is that realisation and each shard is itself a Poisson process (random thinning);
- scaling the rate from some instant on is a change of slope of L, applied identically by
  every cursor, so shards stay consistent with one another.

Instants are int64 nanosecond offsets from the run's start; cursors hand them out in numpy
batches so the engine never asks Python for one arrival at a time.
"""
import enum
import functools
import math
from dataclasses import asdict, dataclass

import numpy as np

from loadgate.native.errors import ConfigError

NS_PER_S = 1_000_000_000
# Poisson realisations are drawn in fixed-size chunks so the realisation does not depend on
# the batch sizes the engine asks for.
_POISSON_CHUNK = 65536
_KEY_LIMIT = 1 << 62


class ArrivalModel(enum.Enum):
    CONSTANT = "constant"
    POISSON = "poisson"
    RAMP = "ramp"
    STEPS = "steps"
    CLOSED = "closed"


def _positive(name, value):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _non_negative(name, value):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a non-negative number, got {value!r}")


def _check_shard(index, count):
    if not (isinstance(count, int) and isinstance(index, int) and count >= 1 and 0 <= index < count):
        raise ConfigError(f"shard {index!r} of {count!r} is not a valid shard")


def _end_tolerance(total):
    # L(duration) computed in floating point may overshoot an integer by an ulp (1000 * 0.3);
    # an arrival exactly at the end of the run belongs to the next run, not this one.
    return 1e-9 * max(1.0, abs(total))


class _OpenLoop:
    """Shared behaviour of the open-loop models (mixed into frozen dataclasses)."""

    is_open_loop = True

    def _cumulative(self, t):
        raise NotImplementedError

    def _inverse(self, u):
        raise NotImplementedError

    def _check_common(self):
        _positive("duration_s", self.duration_s)
        _check_shard(self.shard_index, self.shard_count)

    def shard(self, index, count):
        """This schedule's arrivals assigned to shard ``index`` of ``count``."""
        _check_shard(index, count)
        return self._with_shard(self.shard_index + self.shard_count * index,
                                self.shard_count * count)

    def _with_shard(self, index, count):
        fields = asdict(self)
        fields.update(shard_index=index, shard_count=count)
        if "steps" in fields:
            fields["steps"] = self.steps
        return type(self)(**fields)

    def total_count(self):
        expected = self._cumulative(self.duration_s)
        last = math.ceil(expected - _end_tolerance(expected))
        return max(0, -(-(last - self.shard_index) // self.shard_count))

    def cursor(self):
        return ScheduleCursor(self)

    def to_dict(self):
        d = asdict(self)
        if "steps" in d:
            d["steps"] = [list(step) for step in self.steps]
        d["model"] = self.model.value
        return d


@dataclass(frozen=True)
class ConstantRate(_OpenLoop):
    """``rate`` arrivals per second, evenly spaced, the first at offset 0."""

    rate: float
    duration_s: float
    shard_index: int = 0
    shard_count: int = 1
    model = ArrivalModel.CONSTANT

    def __post_init__(self):
        _positive("rate", self.rate)
        self._check_common()

    def _cumulative(self, t):
        return self.rate * t

    def _inverse(self, u):
        return u / self.rate


@dataclass(frozen=True)
class Poisson(_OpenLoop):
    """A Poisson process of ``rate`` arrivals per second; the realisation is fixed by ``seed``."""

    rate: float
    duration_s: float
    seed: int
    shard_index: int = 0
    shard_count: int = 1
    model = ArrivalModel.POISSON

    def __post_init__(self):
        _positive("rate", self.rate)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        self._check_common()

    def _cumulative(self, t):
        return self.rate * t

    def _inverse(self, u):
        return u / self.rate

    def total_count(self):
        return _poisson_count(self)


@functools.lru_cache(maxsize=64)
def _poisson_count(schedule):
    cursor = schedule.cursor()
    while len(cursor.next_batch(1 << 20)):
        pass
    return cursor.emitted


@dataclass(frozen=True)
class Ramp(_OpenLoop):
    """A rate rising (or falling) linearly from ``start_rate`` to ``end_rate``."""

    start_rate: float
    end_rate: float
    duration_s: float
    shard_index: int = 0
    shard_count: int = 1
    model = ArrivalModel.RAMP

    def __post_init__(self):
        _non_negative("start_rate", self.start_rate)
        _non_negative("end_rate", self.end_rate)
        self._check_common()

    def _cumulative(self, t):
        slope = (self.end_rate - self.start_rate) / self.duration_s
        return self.start_rate * t + 0.5 * slope * t * t

    def _inverse(self, u):
        # Root of start*t + slope/2*t^2 = u in the form that stays exact for a flat ramp and for
        # a ramp starting at zero (no cancellation between start and the square root).
        slope = (self.end_rate - self.start_rate) / self.duration_s
        u = np.asarray(u, dtype=np.float64)
        root = np.sqrt(np.maximum(self.start_rate ** 2 + 2.0 * slope * u, 0.0))
        denominator = self.start_rate + root
        safe = np.where(denominator > 0, denominator, 1.0)
        return np.where(denominator > 0, 2.0 * u / safe, 0.0)


@dataclass(frozen=True)
class Steps(_OpenLoop):
    """A sequence of constant-rate stages: ``steps=((rate, duration_s), ...)``."""

    steps: tuple
    shard_index: int = 0
    shard_count: int = 1
    model = ArrivalModel.STEPS

    def __post_init__(self):
        try:
            steps = tuple((float(rate), float(duration)) for rate, duration in self.steps)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"steps must be (rate, duration_s) pairs: {exc}") from None
        if not steps:
            raise ConfigError("steps must not be empty")
        for rate, duration in steps:
            _non_negative("step rate", rate)
            _positive("step duration_s", duration)
        object.__setattr__(self, "steps", steps)
        self._check_common()

    @property
    def duration_s(self):
        return sum(duration for _, duration in self.steps)

    @functools.cached_property
    def _edges(self):
        starts = np.concatenate(([0.0], np.cumsum([d for _, d in self.steps])))
        counts = np.concatenate(([0.0], np.cumsum([r * d for r, d in self.steps])))
        rates = np.array([r for r, _ in self.steps])
        return starts, counts, rates

    def _cumulative(self, t):
        starts, counts, rates = self._edges
        i = min(int(np.searchsorted(starts, t, side="right")) - 1, len(rates) - 1)
        return counts[i] + rates[i] * (t - starts[i])

    def _inverse(self, u):
        starts, counts, rates = self._edges
        # side="right" skips zero-rate steps, which hold no arrivals.
        i = np.clip(np.searchsorted(counts, u, side="right") - 1, 0, len(rates) - 1)
        return starts[i] + (u - counts[i]) / rates[i]


@dataclass(frozen=True)
class ClosedLoop:
    """Fixed concurrency: ``concurrency`` request loops, each waiting ``think_time_s`` between
    a response and its next request.  Not an arrival process; results are labelled closed-loop."""

    concurrency: int
    duration_s: float
    think_time_s: float = 0.0
    model = ArrivalModel.CLOSED
    is_open_loop = False

    def __post_init__(self):
        if not isinstance(self.concurrency, int) or self.concurrency < 0:
            raise ConfigError(f"concurrency must be a non-negative integer, got {self.concurrency!r}")
        _positive("duration_s", self.duration_s)
        _non_negative("think_time_s", self.think_time_s)

    def total_count(self):
        return 0

    def shard(self, index, count):
        """Loops are dealt round-robin, so the shards' concurrencies add up to the original."""
        _check_shard(index, count)
        share = self.concurrency // count + (1 if index < self.concurrency % count else 0)
        return ClosedLoop(share, self.duration_s, self.think_time_s)

    def cursor(self):
        return ScheduleCursor(self)

    def to_dict(self):
        return {"model": self.model.value, "concurrency": self.concurrency,
                "duration_s": self.duration_s, "think_time_s": self.think_time_s}


class ScheduleCursor:
    """Hands out a schedule's intended send instants in ascending batches.

    The rate scale is a piecewise-constant factor on the schedule's intensity; segment j starts
    at time ``_starts[j]`` where the base intensity is ``_base[j]`` and the scaled intensity is
    ``_scaled[j]``.  The engine owns a cursor; it is not shared between threads.
    """

    def __init__(self, schedule):
        self.schedule = schedule
        self.emitted = 0
        self._last_ns = 0
        self._starts = [0.0]
        self._base = [0.0]
        self._scaled = [0.0]
        self._factors = [1.0]
        if not schedule.is_open_loop:
            self._next_key = None
        elif schedule.model is ArrivalModel.POISSON:
            gaps_seq, keys_seq = np.random.SeedSequence(schedule.seed).spawn(2)
            self._gaps = np.random.Generator(np.random.PCG64(gaps_seq))
            self._keys = np.random.Generator(np.random.PCG64(keys_seq))
            self._point = 0.0
            self._pending = np.empty(0)
        else:
            self._next_key = schedule.shard_index

    def next_batch(self, max_count):
        """Up to ``max_count`` next instants (int64 ns offsets); empty once exhausted."""
        if not self.schedule.is_open_loop or max_count <= 0:
            return np.empty(0, dtype=np.int64)
        end = self._scaled_at(self.schedule.duration_s)
        end -= _end_tolerance(end)
        if self.schedule.model is ArrivalModel.POISSON:
            points = self._poisson_points(max_count, end)
        else:
            points = self._deterministic_points(max_count, end)
        instants = np.rint(self._time_of(points) * NS_PER_S).astype(np.int64)
        if len(instants):
            self.emitted += len(instants)
            self._last_ns = int(instants[-1])
        return instants

    def set_rate_scale(self, factor, at_offset_ns):
        """From ``at_offset_ns`` on, arrivals come ``factor`` times as often as the schedule says.

        Instants already handed out stand, so the change takes effect no earlier than the last
        one; a later call replaces whatever an earlier one planned beyond its own instant.
        """
        _positive("factor", factor)
        at_s = max(int(at_offset_ns), self._last_ns) / NS_PER_S
        at_s = min(at_s, self.schedule.duration_s)
        keep = int(np.searchsorted(self._starts, at_s, side="left"))
        scaled = self._scaled_at(at_s)
        del self._starts[keep:], self._base[keep:], self._scaled[keep:], self._factors[keep:]
        self._starts.append(at_s)
        self._base.append(self.schedule._cumulative(at_s))
        self._scaled.append(scaled)
        self._factors.append(float(factor))

    @property
    def rate_scale(self):
        """The factor in force after the last planned change."""
        return self._factors[-1]

    def _scaled_at(self, t):
        j = int(np.searchsorted(self._starts, t, side="right")) - 1
        return self._scaled[j] + self._factors[j] * (self.schedule._cumulative(t) - self._base[j])

    def _time_of(self, points):
        scaled = np.asarray(self._scaled)
        j = np.searchsorted(scaled, points, side="right") - 1
        base = np.asarray(self._base)[j] + (points - scaled[j]) / np.asarray(self._factors)[j]
        return self.schedule._inverse(base)

    def _deterministic_points(self, max_count, end):
        step = self.schedule.shard_count
        available = max(0, math.ceil((end - self._next_key) / step))
        n = min(max_count, available)
        points = self._next_key + step * np.arange(n, dtype=np.float64)
        self._next_key += step * n
        return points

    def _poisson_points(self, max_count, end):
        schedule = self.schedule
        while len(self._pending) < max_count and self._point < end:
            points = self._point + np.cumsum(self._gaps.standard_exponential(_POISSON_CHUNK))
            keys = self._keys.integers(0, _KEY_LIMIT, _POISSON_CHUNK)
            self._point = float(points[-1])
            mine = points[keys % schedule.shard_count == schedule.shard_index]
            self._pending = np.concatenate((self._pending, mine))
        n = min(max_count, int(np.searchsorted(self._pending, end, side="left")))
        points, self._pending = self._pending[:n], self._pending[n:]
        return points


_MODELS = {
    ArrivalModel.CONSTANT: ConstantRate,
    ArrivalModel.POISSON: Poisson,
    ArrivalModel.RAMP: Ramp,
    ArrivalModel.STEPS: Steps,
    ArrivalModel.CLOSED: ClosedLoop,
}


def schedule_from_dict(d):
    """The schedule ``to_dict`` described; ConfigError for anything else."""
    try:
        fields = dict(d)
        cls = _MODELS[ArrivalModel(fields.pop("model"))]
        if cls is Steps:
            fields["steps"] = tuple(tuple(step) for step in fields["steps"])
        return cls(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"not a schedule description: {d!r} ({exc})") from None


def make_schedule(arrival, rate, duration_s, seed=None, *, end_rate=None, steps=None,
                  concurrency=None, think_time_s=0.0):
    """The schedule a command line asks for; ``arrival`` is an ArrivalModel value.

    Poisson without a seed draws one, so the schedule (and its ``to_dict``) stays reproducible.
    """
    try:
        model = ArrivalModel(arrival)
    except ValueError:
        names = ", ".join(m.value for m in ArrivalModel)
        raise ConfigError(f"unknown arrival model {arrival!r} (one of {names})") from None
    if model is ArrivalModel.CONSTANT:
        return ConstantRate(rate, duration_s)
    if model is ArrivalModel.POISSON:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
        return Poisson(rate, duration_s, seed)
    if model is ArrivalModel.RAMP:
        if end_rate is None:
            raise ConfigError("a ramp needs an end rate")
        return Ramp(rate, end_rate, duration_s)
    if model is ArrivalModel.STEPS:
        if not steps:
            raise ConfigError("a step schedule needs steps")
        return Steps(tuple(steps))
    if concurrency is None or concurrency < 1:
        raise ConfigError("a closed loop needs a concurrency of at least 1")
    return ClosedLoop(concurrency, duration_s, think_time_s)
