"""Gates on real HDR histograms filled from chosen distributions."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from loadgate.controller.gates import (
    MIN_RELATIVE_SAMPLES, GateStatus, combine, distribution_gate, error_rate_gate, evaluate,
    ks_one_sided, latency_gate, mann_whitney, min_samples_for_percentile,
    order_statistic_ranks, percentile_bounds, ratio_gate, samples_to_fail, samples_to_pass,
    saturation_gate, throughput_gate)
from loadgate.controller.plan_model import RelativeTest
from loadgate.controller.plan_types import (
    GatesPlan, RelativeGates, SaturationLimits, ThroughputLimit)
from loadgate.controller.readiness_protocol import (
    TargetWindow, TelemetrySample, WindowMeasurement)
from loadgate.native._hdr import Histogram


def histogram(values):
    hist = Histogram()
    hist.record_array(np.maximum(1, np.asarray(values)).astype(np.int64))
    return hist


def lognormal(n, median_us=20_000, sigma=0.4, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return rng.lognormal(np.log(median_us * scale), sigma, n)


def binomial_cdf(k, n, q):
    return sum(math.comb(n, i) * q ** i * (1 - q) ** (n - i) for i in range(0, k + 1))


@pytest.mark.parametrize("n, percentile, confidence", [(299, 99, 0.95), (400, 99, 0.95),
                                                        (60, 95, 0.9), (200, 50, 0.99)])
def test_order_statistic_ranks_are_the_exact_binomial_ones(n, percentile, confidence):
    q = percentile / 100
    lower, upper = order_statistic_ranks(n, percentile, confidence)
    assert binomial_cdf(upper - 1, n, q) >= confidence > binomial_cdf(upper - 2, n, q)
    assert 1 - binomial_cdf(lower - 1, n, q) >= confidence > 1 - binomial_cdf(lower, n, q)


def test_minimum_sample_rule():
    assert min_samples_for_percentile(99, 0.95) == 299
    assert min_samples_for_percentile(95, 0.95) == 59
    assert min_samples_for_percentile(99.9, 0.95) == 2995
    assert order_statistic_ranks(298, 99, 0.95)[1] is None
    assert order_statistic_ranks(299, 99, 0.95)[1] == 299


def test_too_few_samples_are_inconclusive_never_pass():
    fast = histogram(np.full(298, 1_000))
    result = latency_gate("p99", fast, 99, 0.2, 0.95, "w")
    assert result.status is GateStatus.INCONCLUSIVE and "needs 299" in result.reason
    assert result.samples == 298
    assert latency_gate("p99", histogram(np.full(299, 1_000)), 99, 0.2, 0.95,
                        "w").status is GateStatus.PASS


def test_latency_gate_pass_fail_and_straddle():
    hist = histogram(lognormal(20_000))
    p95_ms = hist.value_at_percentile(95) / 1000
    passed = latency_gate("p95", hist, 95, 2 * p95_ms / 1000, 0.95, "w")
    failed = latency_gate("p95", hist, 95, 0.5 * p95_ms / 1000, 0.95, "w")
    near = latency_gate("p95", hist, 95, p95_ms / 1000, 0.95, "w")
    assert passed.status is GateStatus.PASS and passed.upper <= passed.threshold
    assert failed.status is GateStatus.FAIL and failed.lower > failed.threshold
    assert near.status is GateStatus.INCONCLUSIVE
    assert passed.unit == "ms" and passed.window == "w" and passed.samples == 20_000


def test_percentile_bounds_cover_the_true_quantile_at_the_stated_rate():
    sigma, median, q = 0.4, 20_000, 0.99
    truth = median * math.exp(sigma * 2.3263478740408408)
    misses = 0
    for seed in range(200):
        lower, upper = percentile_bounds(histogram(lognormal(500, seed=seed)), 99, 0.9)
        misses += not (upper >= truth * 0.999)
    assert misses <= 40, misses


def test_error_rate_gate():
    assert error_rate_gate("e", 3, 1000, 5, 0.95, "w").status is GateStatus.PASS
    assert error_rate_gate("e", 120, 1000, 5, 0.95, "w").status is GateStatus.FAIL
    assert error_rate_gate("e", 50, 1000, 5, 0.95, "w").status is GateStatus.INCONCLUSIVE
    few = error_rate_gate("e", 0, 20, 5, 0.95, "w")
    assert few.status is GateStatus.INCONCLUSIVE and "needs" in few.reason


def test_throughput_and_saturation_gates():
    def ratio(achieved, seconds):
        return throughput_gate("t", achieved, 1000, int(achieved * seconds), None, 95, "w",
                               seconds, 0.95).status
    assert ratio(990, 60) is GateStatus.PASS
    assert ratio(900, 60) is GateStatus.FAIL
    assert ratio(945, 5) is GateStatus.INCONCLUSIVE
    assert throughput_gate("t", 90, 100, 900, 100, None, "w", 10, 0.95).status is \
        GateStatus.FAIL
    assert throughput_gate("t", 0, 100, 0, 100, None, "w", 10, 0.95).status is \
        GateStatus.INCONCLUSIVE
    assert saturation_gate("cpu", [40, 50, 60, 55], 80, "w").status is GateStatus.PASS
    assert saturation_gate("cpu", [40, 90, 95, 92], 80, "w").status is GateStatus.FAIL
    none = saturation_gate("gpu", [None, None, None], 80, "w", "NVML not found")
    assert none.status is GateStatus.INCONCLUSIVE and none.reason == "NVML not found"


def test_mann_whitney_and_ks_match_the_sample_level_statistics():
    stats = pytest.importorskip("scipy.stats")
    baseline = np.maximum(1, lognormal(5000, seed=1)).astype(np.int64)
    canary = np.maximum(1, lognormal(800, seed=2, scale=1.05)).astype(np.int64)
    # Quantise to the histogram's buckets so ties are the same on both sides.
    hb, hc = histogram(baseline), histogram(canary)
    bucketed_b = np.array([hb.lowest_equivalent_value(int(v)) for v in baseline])
    bucketed_c = np.array([hc.lowest_equivalent_value(int(v)) for v in canary])
    auc, _, p = mann_whitney(hb, hc)
    reference = stats.mannwhitneyu(bucketed_c, bucketed_b, alternative="greater",
                                  use_continuity=False, method="asymptotic")
    assert auc == pytest.approx(reference.statistic / (5000 * 800), rel=1e-9)
    assert p == pytest.approx(reference.pvalue, rel=1e-6)
    d, _ = ks_one_sided(hb, hc)
    reference = stats.ks_2samp(bucketed_c, bucketed_b, alternative="less", method="asymp")
    assert d == pytest.approx(reference.statistic, rel=1e-9)


@pytest.mark.parametrize("test", list(RelativeTest))
def test_distribution_gate_catches_a_shift_and_passes_an_identical_canary(test):
    baseline = histogram(lognormal(40_000, seed=3))
    same = histogram(lognormal(10_000, seed=4))
    slower = histogram(lognormal(10_000, seed=5, scale=1.3))
    assert distribution_gate("d", baseline, same, test, 1, 5, 0.95,
                             "w").status is GateStatus.PASS
    result = distribution_gate("d", baseline, slower, test, 1, 5, 0.95, "w")
    assert result.status is GateStatus.FAIL and result.measured > 5
    tiny = distribution_gate("d", baseline, histogram(lognormal(10, seed=6)), test, 1, 5,
                             0.95, "w")
    assert tiny.status is GateStatus.INCONCLUSIVE


def test_ratio_gate_on_p99():
    baseline = histogram(lognormal(50_000, seed=7))
    assert ratio_gate("r", baseline, histogram(lognormal(5_000, seed=8)), 99, 1.2, 0.95,
                      "w").status is GateStatus.PASS
    regressed = ratio_gate("r", baseline, histogram(lognormal(5_000, seed=9, scale=1.3)), 99,
                           1.2, 0.95, "w")
    assert regressed.status is GateStatus.FAIL and regressed.measured == pytest.approx(1.3,
                                                                                       rel=0.1)
    few = ratio_gate("r", baseline, histogram(lognormal(100, seed=10)), 99, 1.2, 0.95, "w")
    assert few.status is GateStatus.INCONCLUSIVE and "needs" in few.reason


def test_evaluate_runs_every_gate_of_the_plan_and_combine_orders_statuses():
    gates = GatesPlan(confidence=95.0, latency=((95.0, 0.2), (99.0, 0.5)), error_rate=5.0,
                      saturation=SaturationLimits(cpu=80.0),
                      relative=RelativeGates(RelativeTest.MANN_WHITNEY, 1.0, 5.0,
                                             ((99.0, 1.2),)))
    targets = {"base": TargetWindow("base", histogram(lognormal(9000, seed=11)), 9000, 3,
                                    900, 900),
               "can": TargetWindow("can", histogram(lognormal(1000, seed=12)), 1000, 1,
                                   100, 100)}
    telemetry = tuple(TelemetrySample(t, cpu=30.0) for t in range(5))
    results = evaluate(gates, WindowMeasurement(0, 10, targets, telemetry), "step", ["can"],
                       "base", "can")
    names = [r.name for r in results]
    assert names == ["can.latency.p95", "can.latency.p99", "can.error_rate",
                     "saturation.cpu", "relative.mann-whitney", "relative.p99_ratio"]
    assert combine(results) is GateStatus.PASS
    statuses = [r.status for r in results]
    assert all(s is GateStatus.PASS for s in statuses)
    assert combine([]) is GateStatus.PASS
    mixed = [results[0], saturation_gate("x", [], 80, "w")]
    assert combine(mixed) is GateStatus.INCONCLUSIVE
    slow = throughput_gate("t", 1, 100, 10, 50, None, "w", 10, 0.95)
    assert combine(mixed + [slow]) is GateStatus.FAIL


def fresh_window(rate, seconds, latency_us, drop=0.0, seed=3):
    """A window cut `seconds` after its first Poisson arrival, the target answering each
    request after latency_us (±2 %), the generator never sending a `drop` fraction."""
    rng = np.random.default_rng(seed)
    intended = np.sort(rng.uniform(0.0, seconds, rng.poisson(rate * seconds)))
    sent = intended[rng.uniform(size=len(intended)) >= drop]
    latency = rng.normal(latency_us, latency_us * 0.02, len(sent))
    done = latency[sent + latency / 1e6 <= seconds]
    target = TargetWindow("slow", histogram(done), len(done), 0, len(intended) / seconds,
                          len(done) / seconds)
    return WindowMeasurement(0.0, seconds, {"slow": target})


def test_requests_in_flight_at_a_windows_end_are_not_missing_throughput():
    # A healthy target answering in 100 ms: a fresh 1-second window at 2000 req/s cuts off
    # the tenth of its arrivals still in flight; judged on completions alone it "fails".
    gates = GatesPlan(confidence=95.0, throughput=ThroughputLimit(min_ratio=95.0,
                                                                  min_rps=1800.0))
    measurement = fresh_window(2000, 1.0, 100_000)
    requests = measurement.targets["slow"].requests
    assert requests < 0.92 * 2000
    intended = measurement.targets["slow"].intended_rps
    assert throughput_gate("t", requests, intended, requests, None, 95, "w", 1.0, 0.95) \
        .status is GateStatus.FAIL
    results = evaluate(gates, measurement, "step", ["slow"])
    assert [r.status for r in results] == [GateStatus.PASS, GateStatus.PASS], results
    assert "in flight" in results[1].reason and results[1].measured > 97
    # A generator that drops 20 % of its arrivals still fails, 100 ms latency or not.
    dropped = evaluate(gates, fresh_window(2000, 1.0, 100_000, drop=0.2), "step", ["slow"])
    assert [r.status for r in dropped] == [GateStatus.FAIL, GateStatus.FAIL], dropped


def test_a_step_fails_on_no_less_evidence_than_a_pass_needs():
    gates = GatesPlan(confidence=95.0, latency=((95.0, 0.2), (99.0, 0.5)),
                      relative=RelativeGates(RelativeTest.MANN_WHITNEY, 1.0, 5.0,
                                             ((50.0, 1.1),)))
    assert samples_to_pass(gates) == 299
    assert samples_to_pass(GatesPlan(confidence=95.0, latency=((95.0, 0.2),))) == 59
    assert samples_to_pass(GatesPlan(confidence=95.0, relative=RelativeGates(
        RelativeTest.MANN_WHITNEY, 1.0, 5.0, ((50.0, 1.1),)))) == MIN_RELATIVE_SAMPLES
    cpu = saturation_gate("saturation.cpu", [90, 95, 99], 80, "w")
    assert samples_to_fail(cpu, gates) == 3
    ratio = ratio_gate("relative.p50_ratio", histogram(lognormal(6, seed=1)),
                       histogram(lognormal(6, seed=2, scale=20)), 50, 1.1, 0.95, "w")
    assert ratio.status is GateStatus.FAIL and samples_to_fail(ratio, gates) == 299


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=4000),
       st.sampled_from([50.0, 90.0, 95.0, 99.0, 99.9]),
       st.sampled_from([0.9, 0.95, 0.99]), st.integers(min_value=1, max_value=10**6))
def test_a_percentile_gate_never_passes_below_the_minimum_sample_count(n, percentile,
                                                                        confidence, value):
    hist = histogram(np.full(n, value))
    result = latency_gate("g", hist, percentile, 3600.0, confidence, "w")
    if n < min_samples_for_percentile(percentile, confidence):
        assert result.status is GateStatus.INCONCLUSIVE
    else:
        assert result.status is GateStatus.PASS
