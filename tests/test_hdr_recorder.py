"""IntervalRecorder: concurrent writers, snapshots in between, nothing lost or doubled."""
import threading
import time

import numpy as np
import pytest

from loadgate.native._hdr import Histogram, IntervalRecorder
from loadgate.native.errors import HistogramError


def merge(histograms):
    total = histograms[0].copy()
    for hist in histograms[1:]:
        total.add(hist)
    return total


def run_writers(recorder, batches_per_writer):
    """Starts one thread per list of batches; returns the threads."""
    threads = [threading.Thread(target=lambda bs=batches: [recorder.record_array(b) for b in bs])
               for batches in batches_per_writer]
    for thread in threads:
        thread.start()
    return threads


def snapshots_until_done(recorder, threads):
    """Snapshots taken over and over while the writer threads run, then the last one once
    they have all ended."""
    snapshots = []
    while any(thread.is_alive() for thread in threads):
        snapshots.append(recorder.snapshot())
    for thread in threads:
        thread.join()
    snapshots.append(recorder.snapshot())
    return snapshots


def test_concurrent_array_writers_never_lose_a_count():
    rng = np.random.default_rng(17)
    batches_per_writer = [[rng.integers(0, 4_000_000_000, 20_000) for _ in range(40)]
                          for _ in range(4)]
    recorder = IntervalRecorder()
    threads = run_writers(recorder, batches_per_writer)
    snapshots = snapshots_until_done(recorder, threads)

    expected = Histogram()
    for batches in batches_per_writer:
        for batch in batches:
            expected.record_array(batch)
    assert merge(snapshots) == expected
    assert sum(s.total_count for s in snapshots) == 4 * 40 * 20_000
    # The snapshots really were taken while the writers were recording.
    assert sum(1 for s in snapshots if s.total_count) >= 2


def test_concurrent_single_value_writers_never_lose_a_count():
    recorder = IntervalRecorder(1, 10**6, 2)
    per_thread = 100_000

    def write(offset):
        for value in range(offset, offset + per_thread):
            recorder.record(value % 10**6)
            if value % 1000 == 0:
                time.sleep(0)

    threads = [threading.Thread(target=write, args=(k * per_thread,)) for k in range(3)]
    for thread in threads:
        thread.start()
    snapshots = snapshots_until_done(recorder, threads)
    expected = Histogram(1, 10**6, 2)
    expected.record_array(np.arange(3 * per_thread) % 10**6)
    assert merge(snapshots) == expected
    assert sum(1 for s in snapshots if s.total_count) >= 2


def test_snapshot_is_the_delta_since_the_last_one_with_contiguous_times():
    recorder = IntervalRecorder()
    recorder.record(10)
    recorder.record(20)
    first = recorder.snapshot()
    assert first.total_count == 2 and first.max == 20 and first.min == 10
    assert recorder.record(-4) is True
    assert recorder.record_array(np.array([5, 2**40])) == 1
    second = recorder.snapshot()
    assert second.total_count == 3 and second.count_at(0) == 1
    assert second.count_at(3_600_000_000) == 1
    assert recorder.snapshot().total_count == 0
    assert first.start_time <= first.end_time == second.start_time <= second.end_time
    assert isinstance(first, Histogram) and (first.lowest, first.highest) == (1, 3_600_000_000)


def test_invalid_recorder_layout_raises():
    with pytest.raises(HistogramError):
        IntervalRecorder(1, 1, 3)
