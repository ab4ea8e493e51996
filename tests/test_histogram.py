"""loadgate.native._hdr against the hdrhistogram package (the reference) and against exact
sample arithmetic."""
import math
import pickle
import zlib

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgate.native._hdr import Histogram
from loadgate.native.errors import HistogramError, LoadgateError

# (lowest, highest) pairs per significant-figure count, each spanning many decades.
WIDE_RANGES = {
    1: [(1, 2**62 - 1), (1000, 10**15)],
    2: [(1, 10**15), (7, 3_600_000_000_000)],
    3: [(1, 3_600_000_000), (1, 10**15), (100, 10**12)],
    4: [(1, 10**13), (1000, 10**12)],
    5: [(1, 10**12), (10, 10**11)],
}
LAYOUTS = [(figures, low, high) for figures, pairs in WIDE_RANGES.items() for low, high in pairs]


def log_uniform(rng, low, high, size):
    """Integers spread evenly over the decades of [low, high], with the ends included."""
    values = np.exp(rng.uniform(math.log(max(low, 1)), math.log(high), size)).astype(np.int64)
    values = np.clip(values, 0, high)
    return np.concatenate([values, [0, low, high, high - 1]]).astype(np.int64)


def reference_counts(ref):
    """{lowest equivalent value: count} of an hdrhistogram histogram's non-zero buckets."""
    counts = np.ctypeslib.as_array(ref.counts)
    return {ref.get_value_from_index(int(i)): int(counts[i]) for i in np.flatnonzero(counts)}


def our_counts(hist):
    return {low: count for low, _, count in hist.recorded()}


def build_pair(figures, low, high, seed=7, size=3000):
    rng = np.random.default_rng(seed)
    values = log_uniform(rng, low, high, size)
    ours = Histogram(low, high, figures)
    ref = HdrHistogram(low, high, figures)
    assert ours.record_array(values) == 0
    for value in values.tolist():
        assert ref.record_value(value)
    return ours, ref


@pytest.mark.parametrize("figures,low,high", LAYOUTS)
def test_bucket_layout_matches_reference(figures, low, high):
    ours, ref = build_pair(figures, low, high, size=500)
    for low_value, high_value, _ in ours.recorded():
        assert ref.get_lowest_equivalent_value(low_value) == low_value
        assert ref.get_highest_equivalent_value(low_value) == high_value
    assert our_counts(ours) == reference_counts(ref)
    assert ours.total_count == ref.get_total_count()
    assert ours.max == ref.get_max_value()
    assert ours.min == ref.get_min_value()


@pytest.mark.parametrize("figures,low,high", LAYOUTS)
def test_our_encoding_decodes_in_reference(figures, low, high):
    ours, ref = build_pair(figures, low, high)
    decoded = HdrHistogram.decode(ours.encode())
    assert (decoded.lowest_trackable_value, decoded.highest_trackable_value,
            decoded.significant_figures) == (low, high, figures)
    assert reference_counts(decoded) == reference_counts(ref)
    assert decoded.get_total_count() == ours.total_count


@pytest.mark.parametrize("figures,low,high", LAYOUTS)
def test_reference_encoding_decodes_in_ours(figures, low, high):
    ours, ref = build_pair(figures, low, high, seed=11)
    decoded = Histogram.decode(ref.encode())
    assert decoded == ours
    assert our_counts(decoded) == reference_counts(ref)
    assert (decoded.lowest, decoded.highest, decoded.significant_figures) == (low, high, figures)
    assert decoded.max == ref.get_max_value()
    assert decoded.min == ref.get_min_value()


def test_round_trips_through_both_forms_and_str():
    hist, _ = build_pair(3, 1, 3_600_000_000, size=200)
    assert Histogram.decode(hist.encode()) == hist
    assert Histogram.decode(hist.encode().decode("ascii")) == hist
    assert Histogram.decode_binary(hist.encode_binary()) == hist
    assert hist.encode().startswith(b"HISTF")


def test_empty_histogram_round_trips():
    empty = Histogram()
    decoded = Histogram.decode(empty.encode())
    assert decoded == empty and decoded.total_count == 0
    assert HdrHistogram.decode(empty.encode()).get_total_count() == 0
    assert (empty.min, empty.max, empty.mean, empty.stddev) == (0, 0, 0.0, 0.0)
    assert empty.value_at_percentile(99) == 0
    assert list(empty.recorded()) == []


def test_statistics_match_reference():
    ours, ref = build_pair(3, 1, 3_600_000_000, size=5000)
    assert ours.mean == pytest.approx(ref.get_mean_value(), rel=1e-12)
    assert ours.stddev == pytest.approx(ref.get_stddev(), rel=1e-9)
    assert (ours.lowest, ours.highest, ours.significant_figures) == (1, 3_600_000_000, 3)


def nearest_rank(samples_sorted, percentile):
    """The exact percentile: the sample of nearest rank, with the histogram's rounding."""
    exact = (percentile * len(samples_sorted)) / 100.0
    rank = max(1, math.ceil(exact - exact * 1e-12))
    return samples_sorted[rank - 1]


@settings(max_examples=150, deadline=None)
@given(samples=st.lists(st.integers(0, 10**12), min_size=1, max_size=400),
       percentiles=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=8),
       figures=st.integers(1, 5))
def test_percentiles_within_precision_of_exact(samples, percentiles, figures):
    hist = Histogram(1, 10**12, figures)
    hist.record_array(np.array(samples, dtype=np.int64))
    ordered = sorted(samples)
    together = hist.percentiles(percentiles)
    for percentile, value in zip(percentiles, together):
        exact = nearest_rank(ordered, percentile)
        assert hist.value_at_percentile(percentile) == value
        # One bucket is at most value / 10**figures wide: that is the promised precision.
        assert abs(value - exact) <= exact / 10**figures
        assert hist.lowest_equivalent_value(exact) <= value <= hist.highest_equivalent_value(exact)


def test_percentile_ends_and_decimal_ranks():
    hist = Histogram()
    hist.record_array(np.arange(1, 1001, dtype=np.int64))
    assert hist.value_at_percentile(0) == 1
    assert hist.value_at_percentile(100) == 1000
    assert hist.value_at_percentile(99.9) == 999
    assert hist.value_at_percentile(50) == 500
    with pytest.raises(HistogramError):
        hist.value_at_percentile(100.5)
    with pytest.raises(HistogramError):
        hist.percentiles([50, -1])


histogram_samples = st.lists(st.integers(0, 3_600_000_000), max_size=200)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(histogram_samples, min_size=1, max_size=6))
def test_merged_histograms_equal_histogram_of_all_samples(parts):
    everything = Histogram()
    merged = Histogram()
    summed = Histogram()
    from_encoded = Histogram()
    for part in parts:
        piece = Histogram()
        for value in part:
            piece.record(value)
            everything.record(value)
        merged.add(piece)
        summed += Histogram.decode(piece.encode())
        from_encoded.decode_and_add(piece.encode_binary())
    assert merged == everything
    assert summed == everything
    assert from_encoded == everything
    assert (from_encoded.min, from_encoded.max) == (everything.min, everything.max)
    assert merged.total_count == sum(len(p) for p in parts)
    assert merged.percentiles([50, 99, 100]) == everything.percentiles([50, 99, 100])
    assert (merged.min, merged.max) == (everything.min, everything.max)


@settings(max_examples=60, deadline=None)
@given(base=histogram_samples, extra=histogram_samples)
def test_subtract_undoes_add(base, extra):
    first = Histogram()
    first.record_array(np.array(base, dtype=np.int64))
    second = Histogram()
    second.record_array(np.array(extra, dtype=np.int64))
    total = first + second
    assert total.total_count == len(base) + len(extra)
    assert total.copy().subtract(second) == first
    assert total.copy().subtract(first) == second


def test_add_across_layouts_records_bucket_values():
    narrow = Histogram(1, 100_000, 2)
    narrow.record_array(np.array([5, 150, 99_000], dtype=np.int64))
    wide = Histogram()
    wide.add(narrow)
    assert wide.total_count == 3
    assert [low for low, _, _ in wide.recorded()] == [
        narrow.lowest_equivalent_value(v) for v in (5, 150, 99_000)]


def test_add_that_does_not_fit_raises_and_leaves_target_unchanged():
    small = Histogram(1, 1000, 3)
    small.record(10)
    big = Histogram()
    big.record(3_000_000)
    before = small.copy()
    with pytest.raises(HistogramError):
        small.add(big)
    assert small == before


def test_subtract_more_than_recorded_raises_and_leaves_target_unchanged():
    first = Histogram()
    first.record(10)
    second = Histogram()
    second.record(10, 2)
    with pytest.raises(HistogramError):
        first.subtract(second)
    assert first.total_count == 1 and first.count_at(10) == 1


def test_subtract_recomputes_min_and_max():
    hist = Histogram()
    hist.record_array(np.array([3, 50, 9000], dtype=np.int64))
    top = Histogram()
    top.record(9000)
    hist.subtract(top)
    assert (hist.min, hist.max, hist.total_count) == (3, 50, 2)


def test_copy_is_independent_and_keeps_times_and_tag():
    hist = Histogram()
    hist.record(42)
    hist.start_time, hist.end_time, hist.tag = 10.5, 11.5, "lat"
    twin = hist.copy()
    assert twin == hist and twin is not hist
    assert (twin.start_time, twin.end_time, twin.tag) == (10.5, 11.5, "lat")
    twin.record(43)
    assert twin != hist and hist.total_count == 1


def test_equality_needs_same_layout_and_counts():
    a, b = Histogram(), Histogram()
    assert a == b
    a.record(7)
    assert a != b
    b.record(7)
    assert a == b
    other_layout = Histogram(1, 3_600_000_000, 2)
    other_layout.record(7)
    assert a != other_layout
    assert a != "histogram"
    with pytest.raises(TypeError):
        hash(a)


def test_reset_empties():
    hist = Histogram()
    hist.record_array(np.arange(100, dtype=np.int64))
    hist.reset()
    assert hist == Histogram() and hist.max == 0 and hist.min == 0


def test_add_merges_interval_times():
    first, second = Histogram(), Histogram()
    first.start_time, first.end_time = 100.0, 101.0
    second.start_time, second.end_time = 99.0, 100.5
    first.add(second)
    assert (first.start_time, first.end_time) == (99.0, 101.0)
    fresh = Histogram()
    fresh.add(second)
    assert (fresh.start_time, fresh.end_time) == (99.0, 100.5)


def test_record_range_and_clamping():
    hist = Histogram(1, 1000, 3)
    with pytest.raises(HistogramError):
        hist.record(1001)
    with pytest.raises(HistogramError):
        hist.record(-1)
    with pytest.raises(HistogramError):
        hist.record(5, -1)
    assert hist.total_count == 0
    assert hist.record_clamped(5000) is True
    assert hist.record_clamped(-3) is True
    assert hist.record_clamped(500) is False
    assert hist.count_at(1000) == 1 and hist.count_at(0) == 1 and hist.total_count == 3
    assert hist.record_array(np.array([-1, 2, 2000, 3], dtype=np.int64)) == 2
    assert hist.record_array(np.array([7, 8], dtype=np.uint32)) == 0
    assert hist.record_array([]) == 0
    assert hist.total_count == 9
    with pytest.raises(HistogramError):
        hist.record_array(np.array([1.5]))


def test_record_array_large_matches_single_records():
    rng = np.random.default_rng(3)
    values = rng.integers(-10, 4_000_000_000, 50_000)
    bulk = Histogram()
    clamped = bulk.record_array(values)
    single = Histogram()
    assert clamped == sum(single.record_clamped(int(v)) for v in values)
    assert bulk == single


@pytest.mark.parametrize("low,high,figures", [(0, 100, 3), (1, 1, 3), (50, 99, 3), (1, 100, -1),
                                               (1, 100, 6), (1, 2**63 - 1, 3)])
def test_invalid_layouts_raise(low, high, figures):
    with pytest.raises(HistogramError) as info:
        Histogram(low, high, figures)
    assert isinstance(info.value, LoadgateError)


def test_pickle_round_trip():
    hist, _ = build_pair(3, 1, 3_600_000_000, size=300)
    hist.start_time, hist.end_time, hist.tag = 1.0, 2.0, "t"
    back = pickle.loads(pickle.dumps(hist))
    assert back == hist
    assert (back.start_time, back.end_time, back.tag) == (1.0, 2.0, "t")


def test_payload_spanning_many_decode_chunks():
    rng = np.random.default_rng(13)
    hist = Histogram(1, 10**12, 5)
    hist.record_array(rng.integers(0, 2_000_000, 300_000))
    hist.record_array(rng.integers(0, 10**12, 1000))
    raw_length = len(zlib.decompress(hist.encode_binary()[8:]))
    assert raw_length > 4 * 65536
    assert Histogram.decode(hist.encode()) == hist
    merged = Histogram(1, 10**12, 5)
    merged.record(5)
    merged.decode_and_add(hist.encode_binary())
    assert merged.total_count == hist.total_count + 1
    assert reference_counts(HdrHistogram.decode(hist.encode())) == our_counts(hist)


def test_bare_new_and_huge_bounds_are_safe():
    bare = Histogram.__new__(Histogram)
    bare.record(5)
    assert bare.total_count == 1 and bare.highest == 3_600_000_000
    with pytest.raises(HistogramError):
        Histogram(1, 2**70, 3)
