# distutils: sources = native/lg_hdr.c native/lg_hdr_codec.c native/lg_hdr_recorder.c
"""HdrHistogram-compatible histograms for loadgate (values are integers, microseconds by
convention).

``Histogram`` has HdrHistogram's bucket layout and its V2 compressed encoding, so the
``hdrhistogram`` package, HdrHistogram (Java) and HdrHistogram_c read what it writes and the
reverse.  ``IntervalRecorder`` takes per-interval snapshots without blocking its recorders.
"""
import base64
import binascii
import struct
import threading
import time
import zlib

import numpy as np

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc

from loadgate.native.errors import EncodingError, HistogramError

DEFAULT_LOWEST = 1
DEFAULT_HIGHEST = 3_600_000_000
DEFAULT_SIGNIFICANT_FIGURES = 3

# Decoding refuses layouts needing more counts than this (64 MiB of address space): every
# layout 0..5 significant figures can describe fits, a hostile header cannot ask for more.
MAX_DECODED_COUNTS = 1 << 23
# Decompressed bytes handed to the count decoder at a time, so a zlib bomb never expands
# past this before it is found out.
_DECODE_CHUNK = 1 << 16
# Arrays shorter than this are recorded without releasing the GIL.
_NOGIL_MIN_LENGTH = 4096

_EXTERNAL_HEADER = struct.Struct(">II")


cdef _raise_for(int rc, str what):
    if rc == LG_HDR_ENOMEM:
        raise MemoryError(what)
    if rc == LG_HDR_ECORRUPT:
        raise EncodingError(what)
    raise HistogramError(what)


cdef lg_hdr_histogram* _new_counts(int64_t lowest, int64_t highest, int figures) except NULL:
    cdef lg_hdr_histogram* h = NULL
    cdef int rc = lg_hdr_init(lowest, highest, figures, &h)
    if rc != LG_HDR_OK:
        _raise_for(rc, f"invalid histogram layout: lowest={lowest} highest={highest} "
                       f"significant_figures={figures} (need 1 <= lowest, "
                       f"2 * lowest <= highest, 0 <= significant_figures <= 5)")
    return h


# Passed as lowest, makes a Histogram with no counts yet, for _wrap to fill.
cdef object _ADOPT = object()


cdef Histogram _wrap(lg_hdr_histogram* h):
    # Takes ownership of h.
    cdef Histogram out = Histogram.__new__(Histogram, _ADOPT)
    out.h = h
    return out


cdef object _int64_array(values):
    array = np.asarray(values)
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.dtype.kind == "u" and array.dtype.itemsize == 8:
        array = np.minimum(array, np.uint64(INT64_MAX))
    elif array.dtype.kind not in "iu":
        raise HistogramError(f"record_array needs an integer array, got dtype {array.dtype}")
    return np.ascontiguousarray(array.reshape(-1), dtype=np.int64)


cdef class Histogram:
    """An HdrHistogram-layout histogram of non-negative integers.

    ``Histogram(lowest=1, highest=3_600_000_000, significant_figures=3)`` tracks values in
    [0, highest] with ``significant_figures`` decimal digits of precision; values below
    ``lowest`` share its resolution (HdrHistogram's "lowest discernible value").  One thread
    at a time (record_array runs without the GIL); IntervalRecorder is the shared one.
    """

    def __cinit__(self, lowest=DEFAULT_LOWEST, highest=DEFAULT_HIGHEST,
                  significant_figures=DEFAULT_SIGNIFICANT_FIGURES):
        self.start_time = 0.0
        self.end_time = 0.0
        self.tag = None
        if lowest is _ADOPT:
            return
        try:
            self.h = _new_counts(lowest, highest, significant_figures)
        except OverflowError as error:
            raise HistogramError(f"histogram range out of bounds: {error}") from error

    def __dealloc__(self):
        lg_hdr_close(self.h)

    def record(self, int64_t value, int64_t count=1):
        """Records ``count`` occurrences of ``value``; HistogramError if out of range."""
        if lg_hdr_record_values(self.h, value, count) != LG_HDR_OK:
            raise HistogramError(
                f"cannot record {value} x{count}: values must lie in "
                f"[0, {self.h.highest_trackable_value}] and counts be >= 0")

    def record_clamped(self, int64_t value):
        """Records ``value`` clamped into [0, highest]; True if it had to be clamped."""
        return lg_hdr_record_clamped(self.h, value) != 0

    def record_array(self, values):
        """Records every value of an integer array, clamped; returns how many were clamped."""
        cdef const int64_t[::1] view = _int64_array(values)
        cdef int64_t length = view.shape[0]
        cdef int64_t clamped
        if length == 0:
            return 0
        if length < _NOGIL_MIN_LENGTH:
            return lg_hdr_record_array_clamped(self.h, &view[0], length)
        with nogil:
            clamped = lg_hdr_record_array_clamped(self.h, &view[0], length)
        return clamped

    def value_at_percentile(self, double percentile):
        """Value at ``percentile`` (0..100): the highest value equivalent to the sample of
        nearest rank ceil(percentile/100 * total_count); 0 when empty."""
        if not 0.0 <= percentile <= 100.0:
            raise HistogramError(f"percentile {percentile} is outside [0, 100]")
        return lg_hdr_value_at_percentile(self.h, percentile)

    def percentiles(self, percentiles):
        """Values at each percentile, in the order given, from one pass over the counts."""
        cdef const double[::1] wanted = np.ascontiguousarray(percentiles, dtype=np.float64)
        cdef int32_t count = wanted.shape[0]
        cdef int64_t[::1] values
        if count == 0:
            return []
        if not np.all((np.asarray(wanted) >= 0.0) & (np.asarray(wanted) <= 100.0)):
            raise HistogramError(f"percentiles must lie in [0, 100]: {list(percentiles)}")
        values = np.empty(count, dtype=np.int64)
        lg_hdr_values_at_percentiles(self.h, &wanted[0], &values[0], count)
        return [int(v) for v in values]

    @property
    def min(self):
        return lg_hdr_min(self.h)

    @property
    def max(self):
        return lg_hdr_max(self.h)

    @property
    def mean(self):
        return lg_hdr_mean(self.h)

    @property
    def stddev(self):
        return lg_hdr_stddev(self.h)

    @property
    def total_count(self):
        return self.h.total_count

    @property
    def lowest(self):
        return self.h.lowest_discernible_value

    @property
    def highest(self):
        return self.h.highest_trackable_value

    @property
    def significant_figures(self):
        return self.h.significant_figures

    def lowest_equivalent_value(self, int64_t value):
        """Smallest value sharing ``value``'s bucket."""
        return lg_hdr_lowest_equivalent_value(self.h, value)

    def highest_equivalent_value(self, int64_t value):
        """Largest value sharing ``value``'s bucket."""
        return lg_hdr_highest_equivalent_value(self.h, value)

    def count_at(self, int64_t value):
        """Count recorded in ``value``'s bucket (0 outside the range)."""
        if value < 0 or value > self.h.highest_trackable_value:
            return 0
        return self.h.counts[lg_hdr_counts_index_for(self.h, value)]

    def recorded(self):
        """Iterates ``(value_from, value_to, count)`` over the non-empty buckets in order."""
        cdef int32_t index = lg_hdr_next_nonzero_index(self.h, 0)
        cdef int64_t value
        while index < self.h.counts_len:
            value = lg_hdr_value_at_index(self.h, index)
            yield (lg_hdr_lowest_equivalent_value(self.h, value),
                   lg_hdr_highest_equivalent_value(self.h, value),
                   self.h.counts[index])
            index = lg_hdr_next_nonzero_index(self.h, index + 1)

    def add(self, Histogram other not None):
        """Adds every count of ``other`` (any layout whose values fit); returns self."""
        if lg_hdr_add(self.h, other.h) != LG_HDR_OK:
            raise HistogramError(
                f"cannot add: other holds values above this histogram's highest "
                f"{self.h.highest_trackable_value}")
        self._merge_times(other)
        return self

    def subtract(self, Histogram other not None):
        """Removes ``other``'s counts (an earlier snapshot of this one); returns self."""
        if lg_hdr_subtract(self.h, other.h) != LG_HDR_OK:
            raise HistogramError("cannot subtract: other holds counts this histogram lacks")
        return self

    cdef _merge_times(self, Histogram other):
        if other.start_time and (not self.start_time or other.start_time < self.start_time):
            self.start_time = other.start_time
        if other.end_time > self.end_time:
            self.end_time = other.end_time

    def __add__(self, other):
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.copy().add(other)

    def __iadd__(self, other):
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.add(other)

    def copy(self):
        """An independent histogram with the same layout, counts, times and tag."""
        cdef Histogram out = _wrap(_new_counts(self.h.lowest_discernible_value,
                                               self.h.highest_trackable_value,
                                               self.h.significant_figures))
        lg_hdr_copy_counts(out.h, self.h)
        out.start_time = self.start_time
        out.end_time = self.end_time
        out.tag = self.tag
        return out

    def reset(self):
        """Empties the histogram (times and tag are kept)."""
        lg_hdr_reset(self.h)

    def __eq__(self, other):
        if not isinstance(other, Histogram):
            return NotImplemented
        return lg_hdr_equal(self.h, (<Histogram> other).h) != 0

    __hash__ = None

    def __repr__(self):
        return (f"Histogram(lowest={self.lowest}, highest={self.highest}, "
                f"significant_figures={self.significant_figures}, "
                f"total_count={self.total_count})")

    def __reduce__(self):
        return (_rebuild, (self.encode_binary(), self.start_time, self.end_time, self.tag))

    def encode_binary(self):
        """The V2 compressed form without base64 (for protobuf ``bytes`` fields)."""
        cdef size_t bound = lg_hdr_encode_v2_bound(self.h)
        cdef uint8_t* buffer = <uint8_t*> malloc(bound)
        cdef size_t length
        if buffer == NULL:
            raise MemoryError("encode buffer")
        try:
            length = lg_hdr_encode_v2(self.h, buffer, bound)
            compressed = zlib.compress(<bytes> PyBytes_FromStringAndSize(<char*> buffer, length))
        finally:
            free(buffer)
        return _EXTERNAL_HEADER.pack(LG_HDR_V2_COMPRESSED_COOKIE, len(compressed)) + compressed

    def encode(self):
        """The base64 V2 compressed form (the "HISTF..." string) as ASCII bytes."""
        return base64.b64encode(self.encode_binary())

    def decode_and_add(self, encoded):
        """Adds the histogram ``encoded`` holds (base64 as from encode(), or binary as from
        encode_binary()) to this one; returns self.  The same as ``add(decode(encoded))``;
        when the layouts match the counts are merged straight from the stream, in one pass
        and without a decoded copy."""
        cdef Histogram decoded = _decode_binary(_raw_encoding(encoded), self)
        if decoded is not self:
            self.add(decoded)
        return self

    @staticmethod
    def decode_binary(data):
        """Decodes a V2 compressed (or uncompressed) encoding; EncodingError if malformed."""
        return _decode_binary(bytes(data))

    @staticmethod
    def decode(encoded):
        """Decodes the base64 V2 compressed form (bytes or str); EncodingError if malformed."""
        return _decode_binary(_from_base64(encoded))


cdef bytes _from_base64(encoded):
    if isinstance(encoded, str):
        try:
            encoded = encoded.encode("ascii")
        except UnicodeEncodeError as error:
            raise EncodingError("encoded histogram is not ASCII base64") from error
    try:
        return base64.b64decode(bytes(encoded).strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise EncodingError(f"encoded histogram is not valid base64: {error}") from error


cdef bytes _raw_encoding(encoded):
    # Binary V2 forms start with the cookie's 0x1c byte, which base64 text never does.
    if isinstance(encoded, str) or encoded[:1] != b"\x1c":
        return _from_base64(encoded)
    return bytes(encoded)


def _rebuild(data, start_time, end_time, tag):
    cdef Histogram out = _decode_binary(data)
    out.start_time = start_time
    out.end_time = end_time
    out.tag = tag
    return out


cdef Histogram _decode_binary(bytes data, Histogram add_to=None):
    cdef uint32_t cookie
    cdef uint32_t length
    if len(data) < _EXTERNAL_HEADER.size:
        raise EncodingError(f"encoded histogram too short ({len(data)} bytes)")
    cookie, length = _EXTERNAL_HEADER.unpack_from(data)
    if (cookie & ~0xf0) == LG_HDR_V2_COMPRESSED_COOKIE_BASE:
        if length > len(data) - _EXTERNAL_HEADER.size:
            raise EncodingError(f"encoded histogram claims {length} compressed bytes, "
                                f"has {len(data) - _EXTERNAL_HEADER.size}")
        return _decode_payload(data[_EXTERNAL_HEADER.size:_EXTERNAL_HEADER.size + length], True,
                               add_to)
    if (cookie & ~0xf0) == LG_HDR_V2_ENCODING_COOKIE_BASE:
        return _decode_payload(data, False, add_to)
    raise EncodingError(f"not a V2 histogram encoding (cookie 0x{cookie:08x})")


cdef bint _fits_layout(Histogram hist, lg_hdr_v2_header* header):
    return (hist is not None
            and hist.h.lowest_discernible_value == header.lowest_discernible_value
            and hist.h.highest_trackable_value == header.highest_trackable_value
            and hist.h.significant_figures == <int32_t> header.significant_figures)


cdef Histogram _decode_payload(bytes payload, bint compressed, Histogram add_to):
    # A payload of at most one chunk for add_to's layout is merged into add_to (returned);
    # any other decodes into a new histogram, inflating at most _DECODE_CHUNK bytes at a time.
    cdef lg_hdr_v2_header header
    cdef Histogram out
    cdef lg_hdr_decode_state state
    cdef size_t consumed = 0
    cdef int64_t remaining
    cdef bytes chunk
    cdef int rc
    inflater = zlib.decompressobj() if compressed else None
    lg_hdr_decode_v2_start(&state)
    try:
        if compressed:
            head = inflater.decompress(payload, LG_HDR_V2_HEADER_SIZE)
            pending = inflater.unconsumed_tail
        else:
            head = payload[:LG_HDR_V2_HEADER_SIZE]
            pending = payload[LG_HDR_V2_HEADER_SIZE:]
        if len(head) < LG_HDR_V2_HEADER_SIZE:
            raise EncodingError("histogram payload truncated inside its header")
        if lg_hdr_decode_v2_header(<const uint8_t*> PyBytes_AS_STRING(head), &header,
                                   MAX_DECODED_COUNTS) != LG_HDR_OK:
            raise EncodingError("histogram payload header is invalid (cookie, layout or length)")
        if _fits_layout(add_to, &header) and header.payload_length <= _DECODE_CHUNK:
            body = (inflater.decompress(pending, header.payload_length) if compressed
                    else pending[:header.payload_length])
            if (len(body) != header.payload_length
                    or lg_hdr_decode_v2_add(add_to.h, <const uint8_t*> PyBytes_AS_STRING(body),
                                            len(body)) != LG_HDR_OK):
                raise EncodingError("histogram payload is truncated, overruns its layout or its "
                                    "total overflows")
            return add_to
        out = _wrap(_new_counts(header.lowest_discernible_value, header.highest_trackable_value,
                                header.significant_figures))
        remaining = header.payload_length
        carry = b""
        while remaining > 0:
            if compressed:
                chunk = inflater.decompress(pending, min(remaining, _DECODE_CHUNK))
                pending = inflater.unconsumed_tail
            else:
                chunk = pending[:remaining]
                pending = b""
            if not chunk:
                raise EncodingError(f"histogram payload truncated: {remaining} bytes missing")
            remaining -= len(chunk)
            if carry:
                chunk = carry + chunk
            rc = lg_hdr_decode_v2_counts(out.h, <const uint8_t*> PyBytes_AS_STRING(chunk),
                                         len(chunk), &state, &consumed)
            if rc != LG_HDR_OK:
                raise EncodingError("histogram counts overrun the layout or their total overflows")
            carry = chunk[consumed:]
        if carry:
            raise EncodingError("histogram payload ends inside a count")
    except zlib.error as error:
        raise EncodingError(f"histogram payload does not inflate: {error}") from error
    lg_hdr_decode_v2_finish(out.h, &state)
    return out


cdef class IntervalRecorder:
    """Records from any number of threads; ``snapshot()`` returns the histogram of everything
    recorded since the previous snapshot.  Recording never waits for a snapshot (a
    writer-reader phaser, as HdrHistogram's Recorder), and no recording is lost or counted
    twice.  ``snapshot()`` calls are serialised among themselves."""

    def __cinit__(self, int64_t lowest=DEFAULT_LOWEST, int64_t highest=DEFAULT_HIGHEST,
                  int significant_figures=DEFAULT_SIGNIFICANT_FIGURES):
        cdef int rc = lg_hdr_recorder_init(lowest, highest, significant_figures, &self.r)
        if rc != LG_HDR_OK:
            self.r = NULL
            _raise_for(rc, f"invalid histogram layout: lowest={lowest} highest={highest} "
                           f"significant_figures={significant_figures}")
        self._snapshot_lock = threading.Lock()
        self._interval_start = time.time()

    def __dealloc__(self):
        lg_hdr_recorder_close(self.r)

    def record(self, int64_t value):
        """Records ``value`` clamped into [0, highest]; True if it had to be clamped."""
        return lg_hdr_recorder_record(self.r, value, 1) != 0

    def record_array(self, values):
        """Records an integer array without holding the GIL; returns how many were clamped."""
        cdef const int64_t[::1] view = _int64_array(values)
        cdef int64_t length = view.shape[0]
        cdef int64_t clamped
        if length == 0:
            return 0
        with nogil:
            clamped = lg_hdr_recorder_record_array(self.r, &view[0], length)
        return clamped

    def snapshot(self):
        """The histogram of the recordings since the last snapshot (times set, epoch s)."""
        cdef lg_hdr_histogram* replacement
        cdef lg_hdr_histogram* previous
        cdef Histogram out
        with self._snapshot_lock:
            replacement = _new_counts(self.r.active.lowest_discernible_value,
                                      self.r.active.highest_trackable_value,
                                      self.r.active.significant_figures)
            with nogil:
                previous = lg_hdr_recorder_swap(self.r, replacement)
            out = _wrap(previous)
            out.start_time = self._interval_start
            out.end_time = time.time()
            self._interval_start = out.end_time
        return out
