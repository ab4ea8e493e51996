"""Histogram benchmark: loadgate.native._hdr against the hdrhistogram package, same run.

Measures (best of several repeats, one process, nothing else of ours running):
  1. record cost per value from Cython (Histogram.record_nogil in a nogil loop, compiled here
     into a temporary directory), from Python (record, record_array) and for the package;
  2. merging 1000 histograms into one;
  3. decoding 1000 base64 V2 histograms and merging them into one.
Prints each figure and the ratio package / loadgate (how many times faster loadgate is).

    python benchmarks/bench_histogram.py [--histograms 1000] [--values 1000] [--repeats 5]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
from hdrh.histogram import HdrHistogram

import loadgate.native
from loadgate.native._hdr import Histogram

LOWEST, HIGHEST, FIGURES = 1, 3_600_000_000, 3

RECORD_LOOP = """
# cython: language_level=3, boundscheck=False, wraparound=False
from libc.stdint cimport int64_t
from loadgate.native._hdr cimport Histogram

def record_loop(Histogram hist, const int64_t[::1] values, int repeats):
    cdef Py_ssize_t i
    cdef Py_ssize_t n = values.shape[0]
    cdef int r
    with nogil:
        for r in range(repeats):
            for i in range(n):
                hist.record_nogil(values[i])
"""


def best_of(repeats, function):
    """Smallest wall time of function() over repeats runs, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def build_record_loop(workdir):
    """Compiles RECORD_LOOP against the installed _hdr.pxd; returns the module."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    native_dir = os.path.dirname(os.path.abspath(loadgate.native.__file__))
    include_root = os.path.join(workdir, "include")
    os.makedirs(os.path.join(include_root, "loadgate"))
    # Cython finds a cimported module's .pxd by its package path.
    os.symlink(native_dir, os.path.join(include_root, "loadgate", "native"))
    source = os.path.join(workdir, "bench_record_loop.pyx")
    with open(source, "w") as handle:
        handle.write(RECORD_LOOP)
    extension = Extension("bench_record_loop", [source], include_dirs=[native_dir],
                          extra_compile_args=["-O3"])
    distribution = Distribution({"ext_modules": cythonize([extension], include_path=[include_root],
                                                          quiet=True)})
    command = distribution.get_command_obj("build_ext")
    command.build_lib = workdir
    command.build_temp = os.path.join(workdir, "build")
    command.ensure_finalized()
    command.run()
    sys.path.insert(0, workdir)
    import bench_record_loop
    return bench_record_loop


def latencies(rng, count):
    """Microsecond latencies shaped like a service: log-normal body, a slow tail."""
    body = rng.lognormal(mean=np.log(2_000), sigma=0.6, size=count)
    tail = rng.random(count) < 0.01
    body[tail] *= rng.uniform(10, 200, tail.sum())
    return np.clip(body, 1, HIGHEST).astype(np.int64)


def bench_record(args, rng, workdir):
    values = latencies(rng, 1_000_000)
    module = build_record_loop(workdir)
    ours = Histogram()
    cython_s = best_of(args.repeats, lambda: module.record_loop(ours, values, 10))
    cython_ns = cython_s / (10 * len(values)) * 1e9

    ours_array_s = best_of(args.repeats, lambda: Histogram().record_array(values))
    small = values[:100_000].tolist()

    def ours_python():
        hist = Histogram()
        for value in small:
            hist.record(value)

    def package_python():
        hist = HdrHistogram(LOWEST, HIGHEST, FIGURES)
        for value in small:
            hist.record_value(value)

    ours_python_s = best_of(args.repeats, ours_python)
    package_python_s = best_of(max(1, args.repeats // 2), package_python)
    package_ns = package_python_s / len(small) * 1e9
    return [
        ("record, Cython record_nogil (ns/value)", cython_ns, package_ns, "goal <= 10 ns"),
        ("record, Python record_array (ns/value)", ours_array_s / len(values) * 1e9, package_ns, ""),
        ("record, Python record() (ns/value)", ours_python_s / len(small) * 1e9, package_ns, ""),
    ]


def bench_merge(args, rng):
    samples = [latencies(rng, args.values) for _ in range(args.histograms)]
    ours = []
    package = []
    for batch in samples:
        hist = Histogram()
        hist.record_array(batch)
        ours.append(hist)
        ref = HdrHistogram(LOWEST, HIGHEST, FIGURES)
        for value in batch.tolist():
            ref.record_value(value)
        package.append(ref)
    encoded = [hist.encode() for hist in ours]
    assert all(HdrHistogram.decode(e).get_total_count() == args.values for e in encoded[:3])

    def ours_merge():
        total = Histogram()
        for hist in ours:
            total.add(hist)
        return total

    def package_merge():
        total = HdrHistogram(LOWEST, HIGHEST, FIGURES)
        for ref in package:
            total.add(ref)
        return total

    def ours_decode_merge():
        total = Histogram()
        for text in encoded:
            total.decode_and_add(text)
        return total

    def ours_decode_then_add():
        total = Histogram()
        for text in encoded:
            total.add(Histogram.decode(text))
        return total

    def package_decode_merge():
        total = HdrHistogram(LOWEST, HIGHEST, FIGURES)
        for text in encoded:
            total.decode_and_add(text)
        return total

    # Both sides must agree on the merged result before their speed means anything.
    merged, reference = ours_merge(), package_decode_merge()
    assert merged.total_count == reference.get_total_count() == args.histograms * args.values
    assert merged.value_at_percentile(99.0) == reference.get_value_at_percentile(99.0)
    assert ours_decode_merge() == merged == ours_decode_then_add()

    n = args.histograms
    package_decode_ms = best_of(args.repeats, package_decode_merge) * 1e3
    return [
        (f"merge {n} histograms (ms)", best_of(args.repeats, ours_merge) * 1e3,
         best_of(args.repeats, package_merge) * 1e3, "goal >= 3x"),
        (f"decode_and_add {n} encoded (ms)", best_of(args.repeats, ours_decode_merge) * 1e3,
         package_decode_ms, "goal >= 3x"),
        (f"add(decode()) {n} encoded (ms)", best_of(args.repeats, ours_decode_then_add) * 1e3,
         package_decode_ms, ""),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histograms", type=int, default=1000)
    parser.add_argument("--values", type=int, default=1000, help="values per histogram")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="lg-bench-hdr-") as workdir:
        rows = bench_record(args, rng, workdir) + bench_merge(args, rng)
    print(f"{'measure':<42} {'loadgate':>12} {'hdrhistogram':>14} {'ratio':>8}  goal")
    for name, ours, package, goal in rows:
        print(f"{name:<42} {ours:>12.2f} {package:>14.2f} {package / ours:>7.1f}x  {goal}")


if __name__ == "__main__":
    main()
