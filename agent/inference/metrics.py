"""What an inference run measured, and the gates that judge it.

Every metric is an HDR histogram of integers: durations in microseconds, rates in
milli-units per second (a tokens-per-second histogram in whole tokens would lose the
fraction that matters at 5 tok/s).  Either way the summary divides by 1000, so durations read
in milliseconds and rates in units per second.  Percentiles come from the histograms, never
from averaging, and a gate whose percentile has too few samples behind it is INCONCLUSIVE.
"""
import enum
import math
import re
import time
from collections import Counter
from dataclasses import dataclass

from loadgate.native._hdr import Histogram
from loadgate.native.errors import ConfigError

SUMMARY_PERCENTILES = (50.0, 90.0, 99.0)
# Recorded integers per reported unit: µs per ms, and milli-units per unit.
SCALE = 1000.0


class GateVerdict(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


class Comparison(enum.Enum):
    AT_MOST = "<="
    AT_LEAST = ">="


def samples_needed(percentile):
    """The fewest samples for which a percentile names a sample rather than the maximum."""
    if percentile >= 100.0:
        return 1
    return math.ceil(100.0 / (100.0 - percentile) - 1e-9)


_GATE = re.compile(r"^\s*(?P<metric>[a-z_]+)\s*(?::\s*p(?P<pct>\d+(?:\.\d+)?))?\s*"
                   r"(?P<op><=|>=)\s*(?P<limit>[-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Gate:
    """A limit on one figure of a result: ``ttft_ms:p99<=2000`` or ``error_rate<=0.01``.

    ``percentile`` is None for scalar figures (``error_rate``, throughputs); for a histogram
    metric it names the percentile compared, as MLPerf's TTFT/TPOT constraints do.
    """
    metric: str
    comparison: Comparison
    limit: float
    percentile: float = None

    @classmethod
    def parse(cls, text):
        match = _GATE.match(text)
        if not match:
            raise ConfigError(f"not a gate: {text!r} (expected METRIC:pNN<=LIMIT or METRIC<=LIMIT)")
        try:
            limit = float(match["limit"])
        except ValueError:
            raise ConfigError(f"not a number in gate {text!r}") from None
        pct = float(match["pct"]) if match["pct"] is not None else None
        if pct is not None and not 0.0 < pct <= 100.0:
            raise ConfigError(f"percentile out of range in gate {text!r}")
        return cls(match["metric"], Comparison(match["op"]), limit, pct)

    def __str__(self):
        where = f":p{self.percentile:g}" if self.percentile is not None else ""
        return f"{self.metric}{where}{self.comparison.value}{self.limit:g}"

    def judge(self, result):
        """This gate's verdict on a ``Measurement.to_dict()``: a dict for the report."""
        verdict, observed, samples = GateVerdict.INCONCLUSIVE, None, None
        if self.percentile is None:
            observed = result["figures"].get(self.metric)
            if observed is None:
                raise ConfigError(f"gate {self}: no figure {self.metric!r} in this result")
            samples = result["requests"]["scheduled"]
            enough = samples > 0
        else:
            summary = result["metrics"].get(self.metric)
            if summary is None:
                raise ConfigError(f"gate {self}: no metric {self.metric!r} in this result")
            samples = summary["count"]
            enough = samples >= samples_needed(self.percentile)
            if enough:
                observed = summary["histogram"].value_at_percentile(self.percentile) / SCALE
        if enough:
            within = observed <= self.limit if self.comparison is Comparison.AT_MOST \
                else observed >= self.limit
            verdict = GateVerdict.PASS if within else GateVerdict.FAIL
        return {"gate": str(self), "metric": self.metric, "percentile": self.percentile,
                "limit": self.limit, "observed": observed, "samples": samples,
                "samples_needed": samples_needed(self.percentile) if self.percentile else 1,
                "verdict": verdict.value}


# Scalar figures every result has; each target kind adds its own (its module's FIGURES).
COMMON_FIGURES = ("requests_per_s", "error_rate", "elapsed_s", "generator_cpu_percent",
                  "intended_rate")


def parse_gates(texts, metrics, figures=()):
    """Gates from their text, checked against what a run of this kind will measure, so a
    typo fails before the run rather than after it."""
    gates = [Gate.parse(text) for text in texts]
    for gate in gates:
        known = metrics if gate.percentile is not None else COMMON_FIGURES + tuple(figures)
        if gate.metric not in known:
            kind = "metric" if gate.percentile is not None else "figure"
            raise ConfigError(f"gate {gate}: no {kind} {gate.metric!r} here "
                              f"(one of {', '.join(known)})")
    return gates


def overall_verdict(judged):
    """FAIL if any gate failed, else INCONCLUSIVE if any lacked evidence, else PASS."""
    verdicts = {GateVerdict(g["verdict"]) for g in judged}
    for verdict in (GateVerdict.FAIL, GateVerdict.INCONCLUSIVE):
        if verdict in verdicts:
            return verdict
    return GateVerdict.PASS


def summarize(hist):
    """Count, min, mean, p50/p90/p99 and max of a histogram, in reported units."""
    if hist.total_count == 0:
        return {"count": 0}
    values = hist.percentiles(SUMMARY_PERCENTILES)
    out = {"count": hist.total_count, "min": hist.min / SCALE, "mean": hist.mean / SCALE}
    for pct, value in zip(SUMMARY_PERCENTILES, values):
        out[f"p{pct:g}"] = value / SCALE
    out["max"] = hist.max / SCALE
    return out


class Measurement:
    """The histograms and outcome counters of one run against one target.

    ``metrics`` names the histograms (``latency_ms`` ...); outcomes are members of the
    target kind's outcome enum, whose ``is_success`` property says what counts as completed.
    ``generator_cpu_percent`` is this process's CPU over the run, in percent of one core (for
    an in-process model, the model's work included).
    """

    def __init__(self, kind, target, schedule, metrics, outcome_enum, log=None):
        self.kind = kind
        self.target = target
        self.schedule = schedule
        self.histograms = {name: Histogram() for name in metrics}
        self.outcome_enum = outcome_enum
        self.outcomes = Counter()
        self.figures = {}
        self.started_ns = None
        self.ended_ns = None
        self.log = log                  # an IntervalLog, or None
        self._cpu_at_start = None       # process CPU seconds when the clock started

    def begin(self, start_ns):
        """The run's clock starts at ``start_ns`` (monotonic), and so does its first interval."""
        self.started_ns = start_ns
        self._cpu_at_start = time.process_time()
        if self.log is not None:
            self.log.open(start_ns)

    def record(self, metric, value):
        """Records one value (µs or milli-units) into a named histogram; clamps, never raises."""
        self.histograms[metric].record_clamped(int(value))
        if self.log is not None:
            self.log.record(metric, int(value))

    def end(self, last_completion_ns):
        """The run is over: throughput counts up to ``last_completion_ns``; the last interval
        closes now."""
        self.ended_ns = last_completion_ns
        # The generator judges itself: a client that used most of a core was likely the
        # bottleneck, and its latencies are its own as much as the target's.
        self.figures["generator_cpu_percent"] = (
            100.0 * (time.process_time() - self._cpu_at_start) / self.elapsed_s)
        if self.schedule.is_open_loop:
            self.figures["intended_rate"] = self.schedule.total_count() / self.schedule.duration_s
        if self.log is not None:
            self.log.roll(max(time.monotonic_ns(), self.log.opened_ns))

    def count(self, outcome, n=1):
        self.outcomes[outcome] += n

    @property
    def completed(self):
        return sum(n for o, n in self.outcomes.items() if o.is_success)

    @property
    def elapsed_s(self):
        return max(1e-9, (self.ended_ns - self.started_ns) / 1e9)

    def to_dict(self, gates=()):
        """The JSON-able result: counts, per-metric summaries, encoded histograms, gates.

        ``metrics[name]["histogram"]`` holds the Histogram itself until ``json_ready`` swaps it
        for its base64 V2 encoding, so gates are judged on exact counts.
        """
        total = sum(self.outcomes.values())
        completed = self.completed
        figures = {"requests_per_s": completed / self.elapsed_s,
                   "error_rate": (total - completed) / total if total else 0.0,
                   "elapsed_s": self.elapsed_s}
        figures.update(self.figures)
        metrics = {}
        for name, hist in self.histograms.items():
            metrics[name] = dict(summarize(hist), histogram=hist)
        result = {
            "kind": self.kind,
            "target": self.target,
            "schedule": self.schedule.to_dict(),
            "requests": {"scheduled": total, "completed": completed,
                         "outcomes": {o.name.lower(): self.outcomes.get(o, 0)
                                      for o in self.outcome_enum}},
            "figures": figures,
            "metrics": metrics,
        }
        judged = [gate.judge(result) for gate in gates]
        result["gates"] = judged
        result["verdict"] = overall_verdict(judged).value if judged else None
        return result


def json_ready(result):
    """A copy of ``to_dict``'s result with each histogram replaced by its "HISTF..." encoding."""
    out = dict(result)
    out["metrics"] = {name: dict(summary, histogram=summary["histogram"].encode().decode("ascii"))
                      for name, summary in result["metrics"].items()}
    return out
