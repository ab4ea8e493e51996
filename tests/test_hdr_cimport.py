"""The Cython contract: a separately compiled module cimports Histogram and IntervalRecorder
from loadgate.native._hdr and records without the GIL, as the engine does."""
import importlib
import os
import sys
import threading

import numpy as np
import pytest

import loadgate.native
from loadgate.native._hdr import Histogram, IntervalRecorder

CONSUMER = """
# cython: language_level=3, boundscheck=False, wraparound=False
from libc.stdint cimport int64_t
from loadgate.native._hdr cimport Histogram, IntervalRecorder

def record_into(Histogram hist, const int64_t[::1] values):
    cdef Py_ssize_t i
    cdef int64_t clamped = 0
    with nogil:
        for i in range(values.shape[0]):
            clamped += hist.record_nogil(values[i])
    return clamped

def record_into_recorder(IntervalRecorder recorder, const int64_t[::1] values):
    cdef Py_ssize_t i
    with nogil:
        for i in range(values.shape[0]):
            recorder.record_nogil(values[i])
"""


@pytest.fixture(scope="module")
def consumer(tmp_path_factory):
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    workdir = tmp_path_factory.mktemp("cimport")
    native_dir = os.path.dirname(os.path.abspath(loadgate.native.__file__))
    (workdir / "include" / "loadgate").mkdir(parents=True)
    # Cython looks a cimported module's .pxd up by its package path.
    os.symlink(native_dir, workdir / "include" / "loadgate" / "native")
    source = workdir / "hdr_consumer.pyx"
    source.write_text(CONSUMER)
    extension = Extension("hdr_consumer", [str(source)], include_dirs=[native_dir])
    modules = cythonize([extension], include_path=[str(workdir / "include")], quiet=True,
                        build_dir=str(workdir / "c"))
    command = Distribution({"ext_modules": modules}).get_command_obj("build_ext")
    command.build_lib = str(workdir)
    command.build_temp = str(workdir / "build")
    command.ensure_finalized()
    command.run()
    sys.path.insert(0, str(workdir))
    try:
        yield importlib.import_module("hdr_consumer")
    finally:
        sys.path.remove(str(workdir))


@pytest.mark.slow
def test_record_nogil_from_another_module(consumer):
    values = np.array([0, 1, 999, 10**6, 5 * 10**9, -2], dtype=np.int64)
    hist = Histogram()
    assert consumer.record_into(hist, values) == 2
    expected = Histogram()
    assert expected.record_array(values) == 2
    assert hist == expected and hist.total_count == len(values)


@pytest.mark.slow
def test_recorder_record_nogil_from_threads_loses_nothing(consumer):
    recorder = IntervalRecorder()
    batches = [np.random.default_rng(k).integers(0, 10**7, 200_000) for k in range(4)]
    threads = [threading.Thread(target=consumer.record_into_recorder, args=(recorder, b))
               for b in batches]
    for thread in threads:
        thread.start()
    snapshots = []
    while any(thread.is_alive() for thread in threads):
        snapshots.append(recorder.snapshot())
    for thread in threads:
        thread.join()
    snapshots.append(recorder.snapshot())
    merged = Histogram()
    for snapshot in snapshots:
        merged.add(snapshot)
    expected = Histogram()
    for batch in batches:
        expected.record_array(batch)
    assert merged == expected
