"""Inference results: summaries from HDR histograms, percentile gates and their evidence."""
import enum
import json

import pytest
from hdrh.histogram import HdrHistogram

from loadgate.agent.inference.metrics import (
    Comparison, Gate, GateVerdict, Measurement, json_ready, overall_verdict, parse_gates,
    samples_needed,
)
from loadgate.native.errors import ConfigError
from loadgate.native.schedule import ConstantRate


class Result(enum.Enum):
    GOOD = "good"
    BAD = "bad"

    @property
    def is_success(self):
        return self is Result.GOOD


def _measurement(latencies_us, bad=0):
    m = Measurement("test", "target", ConstantRate(10, 1.0), ("latency_ms",), Result)
    for value in latencies_us:
        m.record("latency_ms", value)
        m.count(Result.GOOD)
    m.count(Result.BAD, bad)
    m.started_ns, m.ended_ns = 0, 2_000_000_000
    return m


def test_samples_needed_for_a_percentile():
    assert samples_needed(50) == 2
    assert samples_needed(90) == 10
    assert samples_needed(99) == 100
    assert samples_needed(99.9) == 1000
    assert samples_needed(100) == 1


def test_gate_parsing():
    gate = Gate.parse("ttft_ms:p99<=2000")
    assert (gate.metric, gate.percentile, gate.comparison, gate.limit) == (
        "ttft_ms", 99.0, Comparison.AT_MOST, 2000.0)
    assert str(gate) == "ttft_ms:p99<=2000"
    assert Gate.parse(" error_rate <= 0.05 ").percentile is None
    assert Gate.parse("tokens_per_s:p10>=20").comparison is Comparison.AT_LEAST
    for bad in ("ttft_ms<2000", "p99<=1", "ttft_ms:p0<=1", "ttft_ms:p101<=1", "x:p50<=abc"):
        with pytest.raises(ConfigError):
            Gate.parse(bad)


def test_summary_and_gates_use_exact_histogram_percentiles():
    m = _measurement(range(1000, 101000, 1000))  # 1 ms .. 100 ms, 100 samples
    result = m.to_dict([Gate.parse("latency_ms:p99<=100"), Gate.parse("latency_ms:p50<=40"),
                        Gate.parse("latency_ms:p99.9<=1000"), Gate.parse("error_rate<=0.1")])
    summary = result["metrics"]["latency_ms"]
    assert summary["count"] == 100
    assert summary["p50"] == pytest.approx(50.0, rel=1e-3)
    assert summary["p99"] == pytest.approx(99.0, rel=1e-3)
    verdicts = [g["verdict"] for g in result["gates"]]
    assert verdicts == ["PASS", "FAIL", "INCONCLUSIVE", "PASS"]
    assert result["gates"][2]["samples_needed"] == 1000
    assert result["verdict"] == "FAIL"
    assert result["figures"]["requests_per_s"] == pytest.approx(50.0)


def test_error_rate_counts_every_unsuccessful_outcome():
    result = _measurement([1000] * 90, bad=10).to_dict([Gate.parse("error_rate<=0.05")])
    assert result["requests"] == {"scheduled": 100, "completed": 90,
                                  "outcomes": {"good": 90, "bad": 10}}
    assert result["figures"]["error_rate"] == pytest.approx(0.1)
    assert result["verdict"] == "FAIL"
    all_failed = _measurement([], bad=5).to_dict([Gate.parse("error_rate<=0.05")])
    assert all_failed["verdict"] == "FAIL"
    nothing = _measurement([]).to_dict([Gate.parse("error_rate<=0.05")])
    assert nothing["verdict"] == "INCONCLUSIVE"


def test_a_gate_on_an_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError):
        _measurement([1000]).to_dict([Gate.parse("ttft_ms:p50<=1")])
    with pytest.raises(ConfigError):
        _measurement([1000]).to_dict([Gate.parse("nothing<=1")])


def test_gates_are_checked_against_what_the_run_measures_before_it_runs():
    gates = parse_gates(["ttft_ms:p99<=2000", "error_rate<=0.01", "tokens_out<=5"],
                        ("ttft_ms",), ("tokens_out",))
    assert [g.metric for g in gates] == ["ttft_ms", "error_rate", "tokens_out"]
    with pytest.raises(ConfigError, match="no metric 'ttft'"):
        parse_gates(["ttft:p99<=2000"], ("ttft_ms",))
    with pytest.raises(ConfigError, match="no figure"):
        parse_gates(["ttft_ms<=2000"], ("ttft_ms",))


def test_overall_verdict_order():
    judged = [{"verdict": "PASS"}, {"verdict": "INCONCLUSIVE"}]
    assert overall_verdict(judged) is GateVerdict.INCONCLUSIVE
    assert overall_verdict(judged + [{"verdict": "FAIL"}]) is GateVerdict.FAIL
    assert overall_verdict([{"verdict": "PASS"}]) is GateVerdict.PASS


def test_json_result_carries_histograms_the_reference_decoder_reads():
    m = _measurement([1500, 2500, 2500, 40000])
    text = json.dumps(json_ready(m.to_dict()))
    encoded = json.loads(text)["metrics"]["latency_ms"]["histogram"]
    reference = HdrHistogram.decode(encoded)
    assert reference.get_total_count() == 4
    ours = m.histograms["latency_ms"]
    assert reference.get_value_at_percentile(50) == ours.value_at_percentile(50)
