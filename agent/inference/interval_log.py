"""Percentiles over time: a run's histograms cut into intervals, in HdrHistogram's ``.hlog``.

Every interval writes one line per metric that recorded something, tagged with the metric's
name (``Tag=ttft_ms``), so HistogramLogProcessor (``-tag ttft_ms``), HdrHistogram_c and the
``hdrhistogram`` package plot any metric over time; the run's whole histograms stay in the
result.  Values are the result's: microseconds, or milli-units per second for rates.
"""
import asyncio
import time

from loadgate.native._hdr import Histogram
from loadgate.native.hlog import HlogWriter


class IntervalLog:
    """Interval histograms of one run, written to an open text file as they close."""

    def __init__(self, fileobj, metrics, interval_s):
        self.writer = HlogWriter(fileobj)
        self.interval_ns = int(interval_s * 1e9)
        self.current = {name: Histogram() for name in metrics}
        # Wall-clock epoch seconds of a monotonic instant, fixed once so intervals abut.
        self._wall_minus_monotonic = time.time() - time.monotonic_ns() / 1e9
        self.opened_ns = self.due_ns = None

    def open(self, now_ns):
        """Starts the first interval at ``now_ns`` (monotonic)."""
        self.opened_ns = now_ns
        self.due_ns = now_ns + self.interval_ns

    def record(self, metric, value):
        self.current[metric].record_clamped(value)

    def roll(self, now_ns):
        """Writes the interval that ends at ``now_ns`` and opens the next one."""
        start_s = self._wall_minus_monotonic + self.opened_ns / 1e9
        end_s = self._wall_minus_monotonic + now_ns / 1e9
        for name, hist in self.current.items():
            if hist.total_count:
                self.writer.write_interval(hist, start_s, end_s, tag=name)
                hist.reset()
        self.opened_ns = now_ns
        self.due_ns = max(self.due_ns + self.interval_ns, now_ns + 1)


async def roll_periodically(log):
    """Closes ``log``'s intervals on time until cancelled (the caller rolls the last one)."""
    while True:
        await asyncio.sleep(max(0.0, (log.due_ns - time.monotonic_ns()) / 1e9))
        log.roll(time.monotonic_ns())
