"""Interval logs and V2 encodings against HdrHistogram's own Java implementation: our logs
through HistogramLogProcessor and HistogramLogReader, and Java's HistogramLogWriter and
encodings through our reader and decoder."""
import base64
import csv
import glob
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from loadgate.native._hdr import Histogram
from loadgate.native.hlog import HlogWriter, read_hlog

JAVA = shutil.which("java")
JARS = sorted(path for path in glob.glob("/usr/share/java/*.jar")
              if Path(path).name.lower().startswith("hdrhistogram"))
JAR = JARS[0] if JARS else None
TOOL = Path(__file__).with_name("HdrJavaTool.java")
pytestmark = pytest.mark.skipif(
    JAVA is None or JAR is None,
    reason="needs java and HdrHistogram's jar (apt-get install default-jre-headless "
           "libhdrhistogram-java)")

START = 1_764_201_600.0  # whole seconds, so the logs' millisecond times are exact
INTERVALS = 4
# tag -> (lowest discernible value, highest trackable value, significant figures): every
# precision from 0 to 5, and a lowest value above 1 (nanoseconds kept at microsecond
# resolution).
LAYOUTS = {
    None: (1, 3_600_000_000, 3),
    "sf0": (1, 3_600_000_000, 0),
    "sf1": (1, 3_600_000_000, 1),
    "sf2": (1, 3_600_000_000, 2),
    "sf4": (1, 3_600_000_000, 4),
    "sf5": (1, 3_600_000_000, 5),
    "ns": (1000, 3_600_000_000_000, 3),
}
JAVA_TIMEOUT_S = 120


def layout_values(tag, interval, seed):
    """Log-uniform values over the layout's whole range plus its edges; counts that vary so
    percentile ranks fall both on and between whole samples."""
    lowest, highest, _ = LAYOUTS[tag]
    rng = np.random.default_rng([seed, interval, list(LAYOUTS).index(tag)])
    values = np.exp(rng.uniform(0.0, math.log(highest), 1000 + 37 * interval)).astype(np.int64)
    edges = np.array([0, 1, lowest, lowest + 1, 2 * lowest, highest // 2, highest], np.int64)
    return np.concatenate([values, edges[: 1 + interval * 2]])


def histogram_of(tag, values):
    hist = Histogram(*LAYOUTS[tag])
    for value in values.tolist():
        hist.record(value)
    return hist


def run_java(*args):
    done = subprocess.run([JAVA, "-cp", JAR, *map(str, args)], capture_output=True, text=True,
                          timeout=JAVA_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"java {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def process_log(log, out, *options):
    run_java("org.HdrHistogram.HistogramLogProcessor", "-i", log, "-o", out,
             "-outputValueUnitRatio", "1", *options)


@pytest.fixture(scope="module")
def our_log(tmp_path_factory):
    """Our log of every layout, interleaved per interval, with what was written."""
    path = tmp_path_factory.mktemp("ours") / "run.hlog"
    written = {tag: [] for tag in LAYOUTS}
    with open(path, "w") as handle:
        writer = HlogWriter(handle, start_time=START)
        writer.write_comment("loadgate -> HdrHistogram (Java)")
        for interval in range(INTERVALS):
            for tag in LAYOUTS:
                hist = histogram_of(tag, layout_values(tag, interval, seed=41))
                writer.write_interval(hist, START + interval, START + interval + 1, tag=tag)
                written[tag].append(hist)
    return path, written


def tag_options(tag):
    return () if tag is None else ("-tag", tag)


@pytest.mark.parametrize("tag", list(LAYOUTS))
def test_log_processor_intervals_and_totals_match_ours(our_log, tmp_path, tag):
    path, written = our_log
    out = tmp_path / "intervals.csv"
    process_log(path, out, "-csv", *tag_options(tag))
    rows = [row for row in csv.reader(line for line in out.read_text().splitlines()
                                      if not line.startswith("#"))]
    assert rows[0] == ["Timestamp", "Int_Count", "Int_50%", "Int_90%", "Int_Max", "Total_Count",
                       "Total_50%", "Total_90%", "Total_99%", "Total_99.9%", "Total_99.99%",
                       "Total_Max"]
    assert len(rows) == 1 + INTERVALS
    total = Histogram(*LAYOUTS[tag])
    for interval, (row, hist) in enumerate(zip(rows[1:], written[tag])):
        total.add(hist)
        numbers = [float(field) for field in row]
        # The processor stamps each interval with its end, relative to the log's StartTime.
        assert numbers[0] == pytest.approx(interval + 1.0)
        assert numbers[1:5] == [hist.total_count, hist.value_at_percentile(50.0),
                                hist.value_at_percentile(90.0), hist.max]
        assert numbers[5:] == [total.total_count,
                               *total.percentiles([50.0, 90.0, 99.0, 99.9, 99.99]),
                               total.max]


@pytest.mark.parametrize("tag", list(LAYOUTS))
def test_log_processor_percentile_distribution_matches_ours(our_log, tmp_path, tag):
    path, written = our_log
    total = Histogram(*LAYOUTS[tag])
    for hist in written[tag]:
        total.add(hist)
    out = tmp_path / "csv"
    process_log(path, out, "-csv", *tag_options(tag))
    lines = [line for line in Path(f"{out}.hgrm").read_text().splitlines()
             if not line.startswith("#")]
    assert lines[0] == '"Value","Percentile","TotalCount","1/(1-Percentile)"'
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) > 20
    n = total.total_count
    # Rows name buckets by their highest equivalent value, which for the top bucket lies
    # above the highest trackable value, so buckets are looked up by that value here.
    cumulative = {}
    running = 0
    for _, high, count in total.recorded():
        running += count
        cumulative[high] = (count, running)
    for value_text, level_text, count_text, _ in rows[:-1]:
        value, level, count = int(float(value_text)), float(level_text) * 100.0, int(count_text)
        # Each row is the first non-empty bucket whose cumulative share reaches the level.
        in_bucket, through_bucket = cumulative[value]
        assert count == through_bucket
        assert 100.0 * (count - in_bucket) / n < level + 1e-6
        assert level <= 100.0 * count / n + 1e-6
    value_text, level_text, count_text, last = rows[-1]
    assert (float(value_text), float(level_text), int(count_text), last) == (
        total.max, 1.0, n, "Infinity")

    plain = tmp_path / "plain"
    process_log(path, plain, *tag_options(tag))
    footer = Path(f"{plain}.hgrm").read_text()
    mean, stddev = map(float, re.search(r"#\[Mean += *([0-9.]+), StdDeviation += *([0-9.]+)\]",
                                        footer).groups())
    maximum, count = re.search(r"#\[Max += *([0-9.]+), Total count += *([0-9]+)\]",
                               footer).groups()
    assert (float(maximum), int(count)) == (total.max, n)
    # Both take every bucket at its median equivalent value; the footer prints sf decimals.
    tolerance = 10.0 ** -LAYOUTS[tag][2]
    assert mean == pytest.approx(total.mean, rel=1e-9, abs=tolerance)
    assert stddev == pytest.approx(total.stddev, rel=1e-9, abs=tolerance)


def test_log_processor_lists_our_tags_and_selects_by_time(our_log, tmp_path):
    path, written = our_log
    listed = run_java("org.HdrHistogram.HistogramLogProcessor", "-i", path, "-listtags")
    assert listed.splitlines()[1:] == ["[NO TAG (default)]",
                                       *sorted(tag for tag in LAYOUTS if tag is not None)]
    out = tmp_path / "window.csv"
    process_log(path, out, "-csv", "-start", "1.5", "-end", "3.5")
    rows = [line.split(",") for line in out.read_text().splitlines()[3:]]
    # Intervals starting at 2 s and 3 s after StartTime, and only those.
    assert [(float(row[0]), int(row[1])) for row in rows] == [
        (3.0, written[None][2].total_count), (4.0, written[None][3].total_count)]


def test_java_log_reader_reads_our_buckets_exactly(our_log):
    path, written = our_log
    dumped = []
    for line in run_java(TOOL, "dump", path).splitlines():
        fields = line.split()
        if fields[0] == "INTERVAL":
            tag = None if fields[1] == "-" else fields[1]
            dumped.append((tag, [int(field) for field in fields[2:]], []))
        else:
            dumped[-1][2].append(tuple(int(field) for field in fields[1:]))
    expected = [(tag, interval) for interval in range(INTERVALS) for tag in LAYOUTS]
    assert len(dumped) == len(expected)
    for (tag, numbers, buckets), (w_tag, interval) in zip(dumped, expected):
        hist = written[w_tag][interval]
        start_ms = int((START + interval) * 1000)
        assert tag == w_tag
        assert numbers == [start_ms, start_ms + 1000, hist.lowest, hist.highest,
                           hist.significant_figures, hist.total_count, hist.max]
        assert buckets == list(hist.recorded())


@pytest.mark.parametrize("base_time", [START, START - 10.5, 0.0],
                         ids=["base-is-start", "earlier-base", "absolute-times"])
def test_java_reads_our_interval_times_for_any_base_time(tmp_path, base_time):
    path = tmp_path / "times.hlog"
    with open(path, "w") as handle:
        writer = HlogWriter(handle, start_time=START, base_time=base_time)
        for interval in range(3):
            hist = Histogram()
            hist.record(100 + interval)
            writer.write_interval(hist, START + interval + 0.25, START + interval + 1)
    intervals = [line.split() for line in run_java(TOOL, "dump", path).splitlines()
                 if line.startswith("INTERVAL")]
    start_ms = int(START * 1000)
    assert [(int(fields[2]), int(fields[3]), int(fields[8])) for fields in intervals] == [
        (start_ms + 1000 * k + 250, start_ms + 1000 * (k + 1), 100 + k) for k in range(3)]
    out = tmp_path / "window.csv"
    process_log(path, out, "-csv", "-start", "0.5")
    rows = [line.split(",") for line in out.read_text().splitlines()[3:]]
    # -start is relative to StartTime whatever the base: the intervals from 1.25 s on.
    assert [(float(row[0]), int(row[1]), float(row[4])) for row in rows] == [
        (2.0, 1, 101.0), (3.0, 1, 102.0)]


def test_java_written_log_and_encodings_read_by_ours(tmp_path):
    spec = tmp_path / "spec.txt"
    base_ms = int(START * 1000) - 250
    intervals = []
    lines = [f"{int(START * 1000)} {base_ms}"]
    for interval in range(INTERVALS):
        for tag in LAYOUTS:
            values = layout_values(tag, interval, seed=43)
            start_ms = int(START * 1000) + 1000 * interval + 7
            intervals.append((tag, start_ms, start_ms + 993, histogram_of(tag, values)))
            lowest, highest, figures = LAYOUTS[tag]
            lines.append(f"{tag or '-'} {lowest} {highest} {figures} {start_ms} {start_ms + 993} "
                         + ",".join(map(str, values.tolist())))
    spec.write_text("\n".join(lines) + "\n")
    log = tmp_path / "java.hlog"
    uncompressed = run_java(TOOL, "write", spec, log).split()

    read = list(read_hlog(log))
    assert len(read) == len(intervals) == len(uncompressed)
    for (tag, start, end, hist), (w_tag, start_ms, end_ms, expected), raw in zip(
            read, intervals, uncompressed):
        assert tag == w_tag
        assert (start, end) == (pytest.approx(start_ms / 1000.0, abs=1e-6),
                                pytest.approx(end_ms / 1000.0, abs=1e-6))
        assert (hist.lowest, hist.highest, hist.significant_figures) == LAYOUTS[tag]
        assert list(hist.recorded()) == list(expected.recorded())
        assert (hist.total_count, hist.min, hist.max) == (
            expected.total_count, expected.min, expected.max)
        assert hist == expected
        assert Histogram.decode_binary(base64.b64decode(raw)) == expected
