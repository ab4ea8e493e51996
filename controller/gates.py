"""Gates: pure functions from measurements (HDR histograms, counts, telemetry) to verdicts.

No I/O, no clock.  Every gate returns a ``GateResult`` that is PASS only when the evidence
supports the claim at the plan's confidence, FAIL only when it supports the opposite, and
INCONCLUSIVE otherwise, including whenever there are too few samples.

Minimum-sample rule for a percentile claim ("p99 < 200 ms" at confidence c).  The number of
samples below the true q-quantile is Binomial(n, q), so the k-th smallest sample X_(k) is an
upper confidence bound for the quantile when P(Binomial(n, q) <= k - 1) >= c; such a k <= n
exists only if 1 - q**n >= c, i.e. n >= ln(1 - c) / ln(q) (p99 at 95 %: 299 samples; p95:
59; p99.9: 2995).  Below that the gate is INCONCLUSIVE.  It PASSes when that upper bound
(the bucket's highest equivalent value) is within the limit and FAILs when the matching lower
bound (largest j with P(Binomial(n, q) >= j) >= c) is above it.  Distribution-free: no
assumption about the latency's shape.

Error rate: Wilson score bounds at the same confidence.  Relative gates compare canary and
baseline measured in the same window: a one-sided Mann-Whitney U test (or Kolmogorov-Smirnov
D+) computed exactly from bucket counts (ties share mid-ranks), failing only when the shift
is both significant at alpha and at least min_effect (P(canary slower) above 50 % by that
many points), and percentile-ratio limits whose bounds combine the two order-statistic
bounds, each at confidence 1 - (1 - c) / 2.
"""
import enum
import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from loadgate.controller.plan_model import RelativeTest
from loadgate.controller.plan_units import percentile_key


class GateStatus(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class GateResult:
    """One gate judged on one window.  ``measured``/``threshold`` are in ``unit``."""

    name: str
    measured: float
    threshold: float
    window: str
    samples: int
    status: GateStatus
    reason: str
    unit: str = ""
    lower: float = None
    upper: float = None

    def to_dict(self):
        """Plain JSON: a value that could not be measured (NaN) becomes null."""
        data = {key: (None if isinstance(value, float) and not math.isfinite(value)
                      else value) for key, value in asdict(self).items()}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data):
        measured = data.get("measured")
        return cls(**{**data, "status": GateStatus(data["status"]),
                      "measured": float("nan") if measured is None else measured})


def _z(confidence):
    return NormalDist().inv_cdf(confidence)


def min_samples_for_percentile(percentile, confidence):
    """The smallest n for which an order statistic bounds the percentile from above."""
    q = percentile / 100.0
    return math.ceil(math.log(1.0 - confidence) / math.log(q) - 1e-9)


def _binomial_cdf(n, q):
    """(first k, cdf array) of Binomial(n, q) over the range that holds all its mass."""
    if n <= 20000:
        lo, hi = 0, n
    else:
        sigma = math.sqrt(n * q * (1.0 - q))
        lo = max(0, int(n * q - 40 * sigma - 50))
        hi = min(n, int(n * q + 40 * sigma + 50))
    ks = np.arange(lo, hi, dtype=np.float64)
    log_first = (math.lgamma(n + 1) - math.lgamma(lo + 1) - math.lgamma(n - lo + 1)
                 + lo * math.log(q) + (n - lo) * math.log1p(-q))
    steps = np.log((n - ks) / (ks + 1.0)) + math.log(q) - math.log1p(-q)
    log_pmf = np.concatenate(([log_first], log_first + np.cumsum(steps)))
    pmf = np.exp(log_pmf - log_pmf.max())
    return lo, np.cumsum(pmf) / pmf.sum()


def order_statistic_ranks(n, percentile, confidence):
    """(lower rank j or None, upper rank k or None), 1-based, bounding the percentile."""
    q = percentile / 100.0
    lo, cdf = _binomial_cdf(n, q)
    # upper: smallest k with cdf(k - 1) >= c
    index = int(np.searchsorted(cdf, confidence, side="left"))
    upper = lo + index + 1 if lo + index + 1 <= n and index < len(cdf) else None
    # lower: largest j with cdf(j - 1) <= 1 - c
    index = int(np.searchsorted(cdf, 1.0 - confidence, side="right")) - 1
    lower = lo + index + 1 if index >= 0 else (lo if lo >= 1 else None)
    return lower, upper


def buckets(hist):
    """(lowest values, highest values, cumulative counts) of the non-empty buckets, as arrays."""
    rows = np.array(list(hist.recorded()), dtype=np.int64).reshape(-1, 3)
    return rows[:, 0], rows[:, 1], np.cumsum(rows[:, 2])


def value_at_rank(table, rank, highest):
    """The bound (highest or lowest equivalent value) of the bucket holding the rank-th
    sample, in a buckets() table."""
    lows, highs, cumulative = table
    index = int(np.searchsorted(cumulative, rank, side="left"))
    if index >= len(cumulative):
        raise ValueError(f"rank {rank} beyond {cumulative[-1] if len(cumulative) else 0} "
                         "samples")
    return int(highs[index] if highest else lows[index])


def percentile_bounds(hist, percentile, confidence):
    """(lower, upper) confidence bounds of a percentile, either None when unavailable."""
    n = hist.total_count
    if n == 0:
        return None, None
    lower_rank, upper_rank = order_statistic_ranks(n, percentile, confidence)
    table = buckets(hist)
    lower = value_at_rank(table, lower_rank, False) if lower_rank else None
    upper = value_at_rank(table, upper_rank, True) if upper_rank else None
    return lower, upper


def _ms(us):
    return None if us is None else us / 1000.0


def latency_gate(name, hist, percentile, limit_s, confidence, window):
    """'p<percentile> latency below limit_s' judged on an HDR histogram of µs."""
    n = hist.total_count
    limit_ms = limit_s * 1000.0
    needed = min_samples_for_percentile(percentile, confidence)
    measured = _ms(hist.value_at_percentile(percentile)) if n else float("nan")
    common = dict(name=name, measured=measured, threshold=limit_ms, window=window, samples=n,
                  unit="ms")
    label = percentile_key(percentile)
    if n < needed:
        return GateResult(status=GateStatus.INCONCLUSIVE, reason=(
            f"{n} samples; a {label} claim at {confidence:.0%} confidence needs {needed}"),
            **common)
    lower, upper = (_ms(v) for v in percentile_bounds(hist, percentile, confidence))
    bounds = dict(lower=lower, upper=upper)
    if upper is not None and upper <= limit_ms:
        return GateResult(status=GateStatus.PASS, reason=(
            f"{label} {measured:.3f} ms; upper {confidence:.0%} bound {upper:.3f} ms within "
            f"{limit_ms:g} ms"), **common, **bounds)
    if lower is not None and lower > limit_ms:
        return GateResult(status=GateStatus.FAIL, reason=(
            f"{label} {measured:.3f} ms; lower {confidence:.0%} bound {lower:.3f} ms exceeds "
            f"{limit_ms:g} ms"), **common, **bounds)
    return GateResult(status=GateStatus.INCONCLUSIVE, reason=(
        f"{label} {measured:.3f} ms; its {confidence:.0%} bounds straddle {limit_ms:g} ms"),
        **common, **bounds)


def wilson_bounds(errors, total, confidence):
    """One-sided Wilson score (lower, upper) bounds of a proportion at confidence."""
    z = _z(confidence)
    p = errors / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def error_rate_gate(name, errors, total, limit_percent, confidence, window):
    """'failed / total below limit_percent' with Wilson bounds."""
    limit = limit_percent / 100.0
    z = _z(confidence)
    needed = math.floor(z * z * (1 - limit) / limit) + 1 if limit > 0 else None
    measured = 100.0 * errors / total if total else float("nan")
    common = dict(name=name, measured=measured, threshold=limit_percent, window=window,
                  samples=total, unit="%")
    if total == 0 or (needed is not None and total < needed and errors == 0):
        return GateResult(status=GateStatus.INCONCLUSIVE, reason=(
            f"{total} requests; claiming an error rate below {limit_percent:g}% at "
            f"{confidence:.0%} confidence needs {needed}"), **common)
    lower, upper = wilson_bounds(errors, total, confidence)
    bounds = dict(lower=100 * lower, upper=100 * upper)
    if upper < limit:
        return GateResult(status=GateStatus.PASS, reason=(
            f"{errors}/{total} failed; upper bound {100 * upper:.3f}% below "
            f"{limit_percent:g}%"), **common, **bounds)
    if lower > limit or (limit == 0 and errors > 0):
        return GateResult(status=GateStatus.FAIL, reason=(
            f"{errors}/{total} failed; lower bound {100 * lower:.3f}% above "
            f"{limit_percent:g}%"), **common, **bounds)
    return GateResult(status=GateStatus.INCONCLUSIVE, reason=(
        f"{errors}/{total} failed ({measured:.3f}%); bounds straddle {limit_percent:g}%"),
        **common, **bounds)


def throughput_gate(name, achieved_rps, intended_rps, requests, min_rps, min_ratio, window,
                    duration_s, confidence, in_flight=0.0):
    """Achieved rate against an absolute floor or a fraction of the intended rate.

    A request intended near the window's end is still in flight when the window is cut; it is
    not missing.  So the achieved rate counts the completed requests plus ``in_flight`` (those
    intended in the window and unanswered at its end, see in_flight_estimate): with 100 ms
    latency a fresh 2-second window would otherwise lose 5 % of its rate to its own edge.
    Arrival counts are noisy (Poisson arrivals, window edges), so the achieved rate gets a
    counting-error band of z * sqrt(count) / duration: PASS when the band's lower edge clears
    the floor, FAIL when its upper edge is below it, INCONCLUSIVE in between.
    """
    z = _z(confidence)
    pending = ""
    if duration_s > 0 and requests and in_flight >= 0.5:
        achieved_rps += in_flight / duration_s
        pending = f" ({in_flight:.0f} in flight at the window's end counted)"
    if duration_s <= 0 or requests == 0:
        floor = min_ratio if min_ratio is not None else min_rps
        return GateResult(name, float("nan"), floor, window, requests, GateStatus.INCONCLUSIVE,
                          "no completed requests in the window yet",
                          "%" if min_ratio is not None else "req/s")
    band = z * math.sqrt(requests) / duration_s
    if min_ratio is not None:
        if not intended_rps:
            return GateResult(name, float("nan"), min_ratio, window, requests,
                              GateStatus.INCONCLUSIVE, "no intended rate to compare with", "%")
        scale = 100.0 / intended_rps
        measured, floor, unit = achieved_rps * scale, min_ratio, "%"
        text = f"achieved {achieved_rps:.1f} of {intended_rps:.1f} req/s intended " \
               f"({measured:.1f}%, floor {min_ratio:g}%){pending}"
    else:
        scale, measured, floor, unit = 1.0, achieved_rps, min_rps, "req/s"
        text = f"achieved {achieved_rps:.1f} req/s (floor {min_rps:g}){pending}"
    lower, upper = measured - band * scale, measured + band * scale
    if lower >= floor:
        status = GateStatus.PASS
    elif upper < floor:
        status = GateStatus.FAIL
    else:
        status, text = GateStatus.INCONCLUSIVE, text + "; within counting error of the floor"
    return GateResult(name, measured, floor, window, requests, status, text, unit, lower, upper)


MIN_TELEMETRY_SAMPLES = 3


def saturation_gate(name, samples, limit_percent, window, unavailable=None):
    """The p95 of a window's telemetry samples (percent) against limit_percent."""
    values = [v for v in samples if v is not None]
    if len(values) < MIN_TELEMETRY_SAMPLES:
        why = (unavailable if not values else None) or \
            f"{len(values)} telemetry samples, {MIN_TELEMETRY_SAMPLES} needed"
        return GateResult(name, float("nan"), limit_percent, window, len(values),
                          GateStatus.INCONCLUSIVE, why, "%")
    p95 = float(np.percentile(values, 95))
    ok = p95 < limit_percent
    return GateResult(name, p95, limit_percent, window, len(values),
                      GateStatus.PASS if ok else GateStatus.FAIL,
                      f"p95 of {len(values)} samples {p95:.1f}% "
                      f"{'below' if ok else 'at or above'} {limit_percent:g}%", "%")


def _joint_buckets(baseline, canary):
    """Counts of both histograms over the union of their buckets, in value order."""
    rows = [np.array(list(h.recorded()), dtype=np.int64).reshape(-1, 3)
            for h in (baseline, canary)]
    keys, inverse = np.unique(np.concatenate([rows[0][:, 0], rows[1][:, 0]]),
                              return_inverse=True)
    split = len(rows[0])
    a = np.bincount(inverse[:split], weights=rows[0][:, 2], minlength=len(keys))
    b = np.bincount(inverse[split:], weights=rows[1][:, 2], minlength=len(keys))
    return a.astype(np.float64), b.astype(np.float64)


def mann_whitney(baseline, canary):
    """(auc, z, one-sided p) of 'canary is slower', from bucket counts with mid-ranks."""
    a, b = _joint_buckets(baseline, canary)
    n_a, n_b = float(a.sum()), float(b.sum())
    below_a = np.cumsum(a) - a
    u = float(np.sum(b * (below_a + a / 2.0)))
    auc = float(u / (n_a * n_b))
    total = n_a + n_b
    ties = a + b
    tie_term = float(np.sum(ties ** 3 - ties)) / (total * (total - 1))
    variance = n_a * n_b / 12.0 * ((total + 1) - tie_term)
    if variance <= 0:
        return auc, 0.0, 1.0
    z = (u - n_a * n_b / 2.0) / math.sqrt(variance)
    return auc, z, 1.0 - NormalDist().cdf(z)


def ks_one_sided(baseline, canary):
    """(D+, p) of 'canary is slower': max over values of F_baseline - F_canary."""
    a, b = _joint_buckets(baseline, canary)
    n_a, n_b = a.sum(), b.sum()
    d = float(np.max(np.cumsum(a) / n_a - np.cumsum(b) / n_b))
    d = max(d, 0.0)
    return d, math.exp(-2.0 * d * d * n_a * n_b / (n_a + n_b))


MIN_RELATIVE_SAMPLES = 20


def distribution_gate(name, baseline, canary, test, alpha_percent, min_effect_percent,
                      confidence, window):
    """Canary vs baseline on the full latency distributions (no averages)."""
    n_a, n_b = baseline.total_count, canary.total_count
    alpha, effect = alpha_percent / 100.0, min_effect_percent / 100.0
    common = dict(name=name, window=window, samples=min(n_a, n_b), threshold=min_effect_percent,
                  unit="pts")
    if min(n_a, n_b) < MIN_RELATIVE_SAMPLES:
        return GateResult(measured=float("nan"), status=GateStatus.INCONCLUSIVE, reason=(
            f"{n_b} canary / {n_a} baseline samples; the test needs {MIN_RELATIVE_SAMPLES} "
            f"each"), **common)
    if test is RelativeTest.KS:
        shift, p = ks_one_sided(baseline, canary)
        margin = math.sqrt(math.log(1.0 / (1.0 - confidence)) * (n_a + n_b) / (2.0 * n_a * n_b))
        what = f"KS D+ {shift:.4f}"
    else:
        auc, _, p = mann_whitney(baseline, canary)
        shift = auc - 0.5
        margin = _z(confidence) * math.sqrt((n_a + n_b + 1) / (12.0 * n_a * n_b))
        what = f"P(canary slower) {auc:.4f}"
    measured = 100.0 * shift
    bounds = dict(lower=100.0 * (shift - margin), upper=100.0 * (shift + margin))
    if p < alpha and shift >= effect:
        return GateResult(measured=measured, status=GateStatus.FAIL, reason=(
            f"{what}, p={p:.2g} < {alpha:g}: canary slower by at least {min_effect_percent:g} "
            f"pts"), **common, **bounds)
    if shift + margin < effect:
        return GateResult(measured=measured, status=GateStatus.PASS, reason=(
            f"{what}, p={p:.2g}: any slowdown is below {min_effect_percent:g} pts at "
            f"{confidence:.0%} confidence"), **common, **bounds)
    return GateResult(measured=measured, status=GateStatus.INCONCLUSIVE, reason=(
        f"{what}, p={p:.2g}: not yet enough evidence either way"), **common, **bounds)


def ratio_gate(name, baseline, canary, percentile, max_ratio, confidence, window):
    """'canary pX / baseline pX <= max_ratio' with order-statistic bounds on both."""
    each = 1.0 - (1.0 - confidence) / 2.0
    needed = min_samples_for_percentile(percentile, each)
    n = min(baseline.total_count, canary.total_count)
    label = percentile_key(percentile)
    common = dict(name=name, threshold=max_ratio, window=window, samples=n, unit="x")
    if n < needed:
        return GateResult(measured=float("nan"), status=GateStatus.INCONCLUSIVE, reason=(
            f"{canary.total_count} canary / {baseline.total_count} baseline samples; a {label} "
            f"ratio at {confidence:.0%} needs {needed} each"), **common)
    measured = canary.value_at_percentile(percentile) / max(1, baseline.value_at_percentile(
        percentile))
    base_lo, base_hi = percentile_bounds(baseline, percentile, each)
    can_lo, can_hi = percentile_bounds(canary, percentile, each)
    lower = can_lo / base_hi if can_lo is not None and base_hi else None
    upper = can_hi / base_lo if can_hi is not None and base_lo else None
    bounds = dict(lower=lower, upper=upper)
    if upper is not None and upper <= max_ratio:
        return GateResult(measured=measured, status=GateStatus.PASS, reason=(
            f"canary/baseline {label} {measured:.3f}; upper bound {upper:.3f} within "
            f"{max_ratio:g}"), **common, **bounds)
    if lower is not None and lower > max_ratio:
        return GateResult(measured=measured, status=GateStatus.FAIL, reason=(
            f"canary/baseline {label} {measured:.3f}; lower bound {lower:.3f} exceeds "
            f"{max_ratio:g}"), **common, **bounds)
    return GateResult(measured=measured, status=GateStatus.INCONCLUSIVE, reason=(
        f"canary/baseline {label} {measured:.3f}; bounds straddle {max_ratio:g}"),
        **common, **bounds)


SATURATION = "saturation."


def samples_to_pass(gates):
    """The request samples a target needs before every gate of the GatesPlan can PASS: its
    strictest percentile claim (latency or ratio) and the relative test's minimum."""
    confidence = gates.confidence / 100.0
    needed = [min_samples_for_percentile(p, confidence) for p, _ in gates.latency]
    if gates.relative is not None:
        each = 1.0 - (1.0 - confidence) / 2.0
        needed += [min_samples_for_percentile(p, each) for p, _ in gates.relative.ratios]
        needed.append(MIN_RELATIVE_SAMPLES)
    return max(needed, default=1)


def samples_to_fail(result, gates):
    """The samples a failed GateResult must rest on before a step may FAIL on it: no less
    evidence than a PASS of the plan needs (telemetry samples for the saturation gates)."""
    if result.name.startswith(SATURATION):
        return MIN_TELEMETRY_SAMPLES
    return samples_to_pass(gates)


def in_flight_estimate(target):
    """Requests of a TargetWindow whose intended start lies in the window but which are still
    in flight at its end: intended rate x mean latency (Little's law, the latency being
    intended start to completion)."""
    if not target.latency.total_count:
        return 0.0
    return target.intended_rps * target.latency.mean / 1e6


def evaluate(gates, measurement, window, judged, baseline=None, canary=None,
             gpu_unavailable=None):
    """Every gate of an effective GatesPlan on one window.

    ``judged`` names the targets the absolute latency and error-rate gates apply to; relative
    gates run when ``baseline`` and ``canary`` name targets and the plan has relative gates.
    ``gpu_unavailable`` says why GPU telemetry is missing, for the GPU gates' reasons.
    """
    confidence = gates.confidence / 100.0
    results = []
    for name in judged:
        target = measurement.targets[name]
        for percentile, limit in gates.latency:
            results.append(latency_gate(f"{name}.latency.{percentile_key(percentile)}",
                                        target.latency, percentile, limit, confidence, window))
        if gates.error_rate is not None:
            results.append(error_rate_gate(f"{name}.error_rate", target.errors,
                                           target.requests, gates.error_rate, confidence,
                                           window))
    requests, _, intended, achieved = measurement.total()
    # A window that follows running load also completes what was in flight at its start, so
    # the estimate only fills the gap up to the intended count: never above 100 %.
    in_flight = min(sum(in_flight_estimate(t) for t in measurement.targets.values()),
                    max(0.0, intended * measurement.duration_s - requests))
    floor = gates.throughput
    if floor.min_rps is not None:
        results.append(throughput_gate("throughput.min_rps", achieved, intended, requests,
                                       floor.min_rps, None, window, measurement.duration_s,
                                       confidence, in_flight))
    if floor.min_ratio is not None:
        results.append(throughput_gate("throughput.min_ratio", achieved, intended, requests,
                                       None, floor.min_ratio, window, measurement.duration_s,
                                       confidence, in_flight))
    for metric in ("cpu", "gpu_utilization", "sm_activity", "gpu_memory"):
        limit = getattr(gates.saturation, metric)
        if limit is not None:
            results.append(saturation_gate(f"{SATURATION}{metric}",
                                           [getattr(s, metric) for s in measurement.telemetry],
                                           limit, window,
                                           None if metric == "cpu" else gpu_unavailable))
    relative = gates.relative
    if relative is not None and baseline and canary:
        base, can = measurement.targets[baseline].latency, measurement.targets[canary].latency
        results.append(distribution_gate(
            f"relative.{relative.test.value}", base, can, relative.test, relative.alpha,
            relative.min_effect, confidence, window))
        for percentile, max_ratio in relative.ratios:
            results.append(ratio_gate(f"relative.{percentile_key(percentile)}_ratio", base, can,
                                      percentile, max_ratio, confidence, window))
    return results


def combine(results):
    """FAIL if any gate failed, else INCONCLUSIVE if any was, else PASS (PASS if none)."""
    statuses = {r.status for r in results}
    if GateStatus.FAIL in statuses:
        return GateStatus.FAIL
    if GateStatus.INCONCLUSIVE in statuses:
        return GateStatus.INCONCLUSIVE
    return GateStatus.PASS
