"""HdrHistogram interval logs (``.hlog``): the format of HdrHistogram's HistogramLogWriter,
which HistogramLogProcessor, HdrHistogram_c and the ``hdrhistogram`` package read.

A log is a few ``#`` header comments (format version, ``StartTime``, ``BaseTime``), a CSV
legend, then one line per interval: ``[Tag=<tag>,]<start>,<length>,<max>,<HISTF...>`` with
the start relative to ``BaseTime`` and every time in seconds (three decimals).
"""
import re
import time

from loadgate.native._hdr import Histogram
from loadgate.native.errors import EncodingError, HistogramError

FORMAT_VERSION = "1.3"
LEGEND = '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"'
# HdrHistogram's readers take a timestamp more than a year before StartTime as relative to
# it; the writer applies the same rule to the times it is given.
_RELATIVE_THRESHOLD_S = 365 * 24 * 3600.0
# Tags are split on these by HdrHistogram's log scanner.
_TAG_FORBIDDEN = re.compile(r"[ ,\r\n]")
_START_TIME = re.compile(r"#\[StartTime: *([0-9.]+)")
_BASE_TIME = re.compile(r"#\[BaseTime: *([0-9.]+)")


class HlogWriter:
    """Writes an interval log to an open text file (the caller closes it).

    ``start_time`` (epoch seconds, default now) is written as the log's StartTime;
    ``base_time`` (default ``start_time``) is what interval timestamps are relative to.
    Interval maxima are written in values / ``max_value_unit_ratio`` (microseconds to
    milliseconds by default), as HistogramLogWriter does.
    """

    def __init__(self, fileobj, start_time=None, base_time=None, max_value_unit_ratio=1000.0):
        self._file = fileobj
        self.start_time = time.time() if start_time is None else float(start_time)
        self.base_time = self.start_time if base_time is None else float(base_time)
        self.max_value_unit_ratio = float(max_value_unit_ratio)
        self._file.write(f"#[Histogram log format version {FORMAT_VERSION}]\n")
        stamp = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(self.start_time))
        self._file.write(f"#[StartTime: {self.start_time:.3f} (seconds since epoch), {stamp}]\n")
        self._file.write(f"#[BaseTime: {self.base_time:.3f} (seconds since epoch)]\n")
        self._file.write(LEGEND + "\n")

    def write_comment(self, text):
        """Writes ``text`` as ``#`` comment lines."""
        for line in str(text).splitlines() or [""]:
            self._file.write(f"#{line}\n")

    def write_interval(self, hist, start_s=None, end_s=None, tag=None):
        """Writes one interval: ``hist`` covering [start_s, end_s] in epoch seconds (default
        the histogram's own start_time/end_time), tagged ``tag`` (default ``hist.tag``)."""
        start_s = hist.start_time if start_s is None else float(start_s)
        end_s = hist.end_time if end_s is None else float(end_s)
        tag = hist.tag if tag is None else tag
        if end_s < start_s:
            raise HistogramError(f"interval ends ({end_s}) before it starts ({start_s})")
        if start_s >= self.base_time - _RELATIVE_THRESHOLD_S:
            start_s -= self.base_time
            end_s -= self.base_time
        prefix = ""
        if tag is not None:
            tag = str(tag)
            if not tag or _TAG_FORBIDDEN.search(tag):
                raise HistogramError(f"hlog tag {tag!r} is empty or holds a space, comma or newline")
            prefix = f"Tag={tag},"
        maximum = hist.max / self.max_value_unit_ratio
        self._file.write(f"{prefix}{start_s:.3f},{end_s - start_s:.3f},{maximum:.3f},"
                         f"{hist.encode().decode('ascii')}\n")


def read_hlog(path_or_file):
    """Yields ``(tag, start_s, end_s, Histogram)`` for every interval of a log, with times in
    epoch seconds (set on the histogram too); EncodingError names the first bad line."""
    if hasattr(path_or_file, "read"):
        yield from _read_lines(path_or_file)
        return
    with open(path_or_file, "r", encoding="ascii", errors="replace") as handle:
        yield from _read_lines(handle)


def _read_lines(lines):
    start_time = None
    base_time = None
    for number, raw in enumerate(lines, 1):
        line = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _START_TIME.match(line)
            if match:
                start_time = float(match.group(1))
            match = _BASE_TIME.match(line)
            if match:
                base_time = float(match.group(1))
            continue
        if line.startswith('"StartTimestamp"'):
            continue
        tag, start, length, encoded = _split_interval(line, number)
        if start_time is None:
            start_time = start
        if base_time is None:
            base_time = start_time if start < start_time - _RELATIVE_THRESHOLD_S else 0.0
        try:
            hist = Histogram.decode(encoded)
        except EncodingError as error:
            raise EncodingError(f"hlog line {number}: {error}") from error
        hist.start_time = base_time + start
        hist.end_time = hist.start_time + length
        hist.tag = tag
        yield tag, hist.start_time, hist.end_time, hist


def _split_interval(line, number):
    tag = None
    if line.startswith("Tag="):
        tag, _, line = line[4:].partition(",")
    fields = line.split(",")
    if len(fields) != 4:
        raise EncodingError(f"hlog line {number}: expected start,length,max,histogram")
    try:
        start = float(fields[0])
        length = float(fields[1])
        float(fields[2])
    except ValueError as error:
        raise EncodingError(f"hlog line {number}: {error}") from error
    return tag, start, length, fields[3]
