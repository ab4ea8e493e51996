"""Interval logs: ours read by the hdrhistogram package's HistogramLogReader and the reverse."""
import io

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader, HistogramLogWriter

from loadgate.native._hdr import Histogram
from loadgate.native.errors import EncodingError, HistogramError
from loadgate.native.hlog import HlogWriter, read_hlog

START = 1_764_201_600.0  # an epoch instant, whole seconds so the log's 3 decimals are exact


def intervals(count=5, seed=23):
    rng = np.random.default_rng(seed)
    result = []
    for k in range(count):
        hist = Histogram()
        hist.record_array(rng.integers(50, 2_000_000, 500 + 100 * k))
        result.append((START + k, START + k + 1, "lat" if k % 2 else None, hist))
    return result


def reference_counts(ref):
    counts = np.ctypeslib.as_array(ref.counts)
    return {ref.get_value_from_index(int(i)): int(counts[i]) for i in np.flatnonzero(counts)}


def test_our_log_read_by_reference_reader(tmp_path):
    path = tmp_path / "run.hlog"
    written = intervals()
    with open(path, "w") as handle:
        writer = HlogWriter(handle, start_time=START)
        writer.write_comment("loadgate test run")
        for start, end, tag, hist in written:
            writer.write_interval(hist, start, end, tag=tag)
    reader = HistogramLogReader(str(path), HdrHistogram(1, 3_600_000_000, 3))
    for start, end, tag, hist in written:
        ref = reader.get_next_interval_histogram()
        assert ref is not None
        assert reference_counts(ref) == {low: n for low, _, n in hist.recorded()}
        assert ref.get_start_time_stamp() == pytest.approx(start * 1000.0)
        assert ref.get_end_time_stamp() == pytest.approx(end * 1000.0)
        assert ref.get_tag() == tag
    assert reader.get_next_interval_histogram() is None
    reader.close()
    assert [line for line in path.read_text().splitlines() if line.startswith("#")][:3] == [
        "#[Histogram log format version 1.3]",
        "#[StartTime: 1764201600.000 (seconds since epoch), Thu Nov 27 00:00:00 UTC 2025]",
        "#[BaseTime: 1764201600.000 (seconds since epoch)]",
    ]


def test_reference_log_read_by_ours(tmp_path):
    path = tmp_path / "ref.hlog"
    written = intervals(seed=29)
    with open(path, "w") as handle:
        writer = HistogramLogWriter(handle)
        writer.output_log_format_version()
        writer.output_base_time(START * 1000.0)
        writer.output_legend()
        for start, end, _, hist in written:
            ref = HdrHistogram.decode(hist.encode())
            writer.output_interval_histogram(ref, start - START, end - START)
    read = list(read_hlog(path))
    assert len(read) == len(written)
    for (tag, start, end, hist), (w_start, w_end, _, w_hist) in zip(read, written):
        assert tag is None
        assert hist == w_hist
        assert (start, end) == (pytest.approx(w_start), pytest.approx(w_end))
        assert (hist.start_time, hist.end_time) == (start, end)


def test_round_trip_through_our_own_reader_and_writer():
    buffer = io.StringIO()
    writer = HlogWriter(buffer, start_time=START)
    written = intervals(3)
    for start, end, tag, hist in written:
        hist.start_time, hist.end_time, hist.tag = start, end, tag
        writer.write_interval(hist)
    buffer.seek(0)
    read = list(read_hlog(buffer))
    assert [(t, s, e) for t, s, e, _ in read] == [(t, s, e) for s, e, t, _ in written]
    assert [h for *_, h in read] == [h for *_, h in written]


def test_relative_times_and_missing_headers():
    hist = Histogram()
    hist.record(1000)
    buffer = io.StringIO()
    writer = HlogWriter(buffer, start_time=START)
    writer.write_interval(hist, 2.0, 3.5)
    line = buffer.getvalue().splitlines()[-1]
    assert line.startswith("2.000,1.500,1.000,HISTF")
    (_, start, end, _), = read_hlog(io.StringIO(buffer.getvalue()))
    assert (start, end) == (START + 2.0, START + 3.5)
    # A bare log with neither StartTime nor BaseTime holds absolute times.
    bare = f"{START + 1:.3f},1.000,1.000,{hist.encode().decode()}\n"
    (_, start, end, decoded), = read_hlog(io.StringIO(bare))
    assert (start, end) == (START + 1, START + 2) and decoded == hist


def test_reads_bytes_lines_and_skips_comments_and_legend():
    hist = Histogram()
    hist.record(7)
    text = (b'#[StartTime: 100.000 (seconds since epoch), whenever]\n#free comment\n'
            b'"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"\n\n'
            b"Tag=svc,5.000,1.000,0.007," + hist.encode() + b"\n")
    (tag, start, end, decoded), = read_hlog(io.BytesIO(text))
    assert (tag, start, end) == ("svc", 5.0, 6.0) and decoded == hist


@pytest.mark.parametrize("line", ["1.0,2.0,HISTFAAA", "x,1.0,2.0,HISTFAAA", "1.0,1.0,1.0,HISTF!!"])
def test_malformed_lines_raise_with_line_number(line):
    with pytest.raises(EncodingError, match="line 2"):
        list(read_hlog(io.StringIO("#comment\n" + line + "\n")))


@pytest.mark.parametrize("tag", ["", "a b", "a,b", "a\nb"])
def test_tags_that_readers_would_split_are_refused(tag):
    writer = HlogWriter(io.StringIO(), start_time=START)
    with pytest.raises(HistogramError):
        writer.write_interval(Histogram(), START, START + 1, tag=tag)


def test_interval_that_ends_before_it_starts_is_refused():
    writer = HlogWriter(io.StringIO(), start_time=START)
    with pytest.raises(HistogramError):
        writer.write_interval(Histogram(), START + 2, START + 1)
