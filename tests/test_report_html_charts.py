"""report.html's chart layer on its own: the percentile axis, ticks, paths with gaps and lone
points, exact grouping of long hlogs, and the ``loadgate report`` command's parser."""
import argparse
import math
import re

import numpy as np
import pytest

from loadgate.controller import report_html_cli
from loadgate.controller.report_html_charts import grouped_counts, thinned
from loadgate.controller.report_html_data import (
    MAX_POINTS, TIME_PERCENTILES, IntervalCounts, load_run)
from loadgate.controller.report_html_svg import (
    Chart, Series, nice_ticks, percentile_label, percentile_x, render)
from loadgate.native._hdr import Histogram
from loadgate.native.errors import InfrastructureError
from loadgate.native.hlog import HlogWriter
from loadgate.native.outcomes import Outcome


def test_percentile_axis_is_hdrhistograms():
    assert [percentile_x(p) for p in (0.0, 90.0, 99.0, 99.9)] == \
        pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert [percentile_label(x) for x in range(6)] == \
        ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (0.0, 0.37), (3.0, 1234.5), (0.0, 0.0)])
def test_ticks_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and len(ticks) <= 12
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1


def test_a_gap_breaks_the_line_and_a_lone_point_is_a_dot():
    chart = Chart("c", "A chart", "x (s)", "y (ms)",
                  [Series("s", [(0, 1.0), (1, 2.0), (2, None), (3, 4.0)], "#000")])
    svg = render(chart)
    d = re.search(r'data-series="s" data-points="3"[^>]* d="([^"]*)"', svg).group(1)
    assert re.findall(r"[MLh]", d) == ["M", "L", "M", "h"]
    assert "<title" in svg and "x (s)" in svg and "y (ms)" in svg


def test_long_logs_are_grouped_into_exact_histograms(tmp_path):
    """An hlog longer than MAX_POINTS intervals: each point is read from the exact sum of
    its intervals (checked against histograms added here), the total from all of them."""
    rng = np.random.default_rng(7)
    written = []
    (tmp_path / "hlog").mkdir()
    with open(tmp_path / "hlog" / "api.latency.hlog", "w") as handle:
        writer = HlogWriter(handle, start_time=1_700_000_000.0, base_time=1_700_000_000.0)
        for index in range(MAX_POINTS * 2 + 7):
            histogram = Histogram()
            histogram.record_array(rng.lognormal(8, 1 + index % 3, 50).astype(np.int64) + 1)
            writer.write_interval(histogram, 1_700_000_000.0 + index,
                                  1_700_000_001.0 + index)
            written.append(histogram)
        handle.write("0.0,1.0,2.0,HISTF")  # a torn line: the run is still writing
    data = load_run(tmp_path)
    target = data.targets["api"]
    size = math.ceil(len(written) / MAX_POINTS)
    assert len(target.points) == math.ceil(len(written) / size) <= MAX_POINTS
    for number, point in enumerate(target.points):
        exact = Histogram()
        for histogram in written[number * size:(number + 1) * size]:
            exact.add(histogram)
        assert (point.start, point.end) == pytest.approx(
            (1_700_000_000.0 + number * size,
             1_700_000_000.0 + min((number + 1) * size, len(written))), abs=1e-3)
        assert point.count == exact.total_count
        assert list(point.values) == exact.percentiles(TIME_PERCENTILES)
    everything = Histogram()
    for histogram in written:
        everything.add(histogram)
    assert target.total == everything
    assert not [m for m in data.missing if "damaged" in m]


def test_counts_are_summed_when_grouped():
    counts = [IntervalCounts(i, i + 1.0, intended=10, by_target={
        "a": {Outcome.OK_2XX: 9, Outcome.SERVER_5XX: i % 2}}) for i in range(MAX_POINTS + 1)]
    grouped = grouped_counts(counts)
    assert len(grouped) == math.ceil(len(counts) / 2)
    assert sum(c.intended for c in grouped) == 10 * len(counts)
    assert sum(c.by_target["a"][Outcome.SERVER_5XX] for c in grouped) == len(counts) // 2
    assert grouped_counts(counts[:10]) == counts[:10]


def test_telemetry_is_averaged_only_when_long():
    short = [(2.0, 5.0), (1.0, None), (3.0, 7.0)]
    assert thinned(short) == [(1.0, None), (2.0, 5.0), (3.0, 7.0)]
    long = [(float(i), float(i % 4)) for i in range(MAX_POINTS * 4)]
    result = thinned(long[::-1])
    assert len(result) == MAX_POINTS
    assert result[0] == (1.5, 1.5) and all(y == 1.5 for _, y in result)


def test_report_command(tmp_path):
    parser = argparse.ArgumentParser()
    report_html_cli.register(parser.add_subparsers())
    args = parser.parse_args(["report", str(tmp_path)])
    assert args.func(args) == 0
    text = (tmp_path / "report.html").read_text()
    assert "no load run in this directory" in text
    args = parser.parse_args(["report", str(tmp_path / "absent")])
    with pytest.raises(InfrastructureError):
        args.func(args)
