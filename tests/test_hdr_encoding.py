"""Hostile and corrupted encodings: every one raises EncodingError, none allocates much."""
import base64
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgate.native._hdr import Histogram
from loadgate.native.errors import EncodingError, HistogramError

COMPRESSED_COOKIE = 0x1C849314
ENCODING_COOKIE = 0x1C849313
HEADER = struct.Struct(">IIIIqqd")


def sample_histogram():
    hist = Histogram()
    hist.record_array(np.random.default_rng(5).integers(1, 10**8, 2000))
    return hist


def payload(counts_bytes, *, length=None, figures=3, low=1, high=3_600_000_000,
            cookie=ENCODING_COOKIE):
    length = len(counts_bytes) if length is None else length
    return HEADER.pack(cookie, length, 0, figures, low, high, 1.0) + counts_bytes


def wrap(raw_payload, *, length=None, cookie=COMPRESSED_COOKIE):
    compressed = zlib.compress(raw_payload)
    length = len(compressed) if length is None else length
    return struct.pack(">II", cookie, length) + compressed


def zigzag(value):
    bits = ((value << 1) ^ (value >> 63)) & (2**64 - 1)
    out = bytearray()
    while len(out) < 8 and bits >= 0x80:
        out.append((bits & 0x7F) | 0x80)
        bits >>= 7
    out.append(bits)
    return bytes(out)


def peak_python_allocation(function, *args):
    tracemalloc.start()
    try:
        function(*args)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_hand_built_payload_decodes():
    body = zigzag(-5) + zigzag(3) + zigzag(0) + zigzag(7)
    hist = Histogram.decode_binary(wrap(payload(body)))
    assert list(hist.recorded()) == [(5, 5, 3), (7, 7, 7)]
    assert Histogram.decode_binary(payload(body)) == hist


def test_every_truncation_raises():
    data = sample_histogram().encode_binary()
    for cut in range(len(data)):
        with pytest.raises(EncodingError):
            Histogram.decode_binary(data[:cut])


def test_every_truncation_of_the_inflated_payload_raises():
    raw = zlib.decompress(sample_histogram().encode_binary()[8:])
    for cut in range(0, len(raw), 7):
        with pytest.raises(EncodingError):
            Histogram.decode_binary(wrap(raw[:cut]))


@pytest.mark.parametrize("data", [
    b"",
    b"HIST",
    struct.pack(">II", 0xDEADBEEF, 0),
    struct.pack(">II", 0x1C849301, 4) + b"abcd",
])
def test_bad_outer_cookie_or_too_short(data):
    with pytest.raises(EncodingError):
        Histogram.decode_binary(data)


def test_bad_inner_cookie():
    with pytest.raises(EncodingError):
        Histogram.decode_binary(wrap(payload(b"", cookie=0x12345678)))


def test_outer_length_beyond_data():
    data = sample_histogram().encode_binary()
    cookie, length = struct.unpack_from(">II", data)
    with pytest.raises(EncodingError):
        Histogram.decode_binary(struct.pack(">II", cookie, length + 1) + data[8:])
    with pytest.raises(EncodingError):
        Histogram.decode_binary(struct.pack(">II", cookie, 0xFFFFFFFF) + data[8:])


@pytest.mark.parametrize("fields", [
    dict(figures=6), dict(figures=0xFFFFFFFF), dict(low=0), dict(low=-5),
    dict(high=1), dict(high=2**63 - 1), dict(low=2**61, high=2**62 - 1, figures=5),
])
def test_absurd_layouts(fields):
    with pytest.raises(EncodingError):
        Histogram.decode_binary(wrap(payload(b"", **fields)))


def test_payload_length_no_histogram_could_need():
    with pytest.raises(EncodingError):
        Histogram.decode_binary(wrap(payload(b"\x02", length=0xFFFFFFFF)))
    with pytest.raises(EncodingError):
        Histogram.decode_binary(wrap(payload(b"\x02", length=23552 * 9 + 1)))


def test_counts_past_the_layout():
    # Histogram(1, 1000, 2) has 512 counts: 256 sub-buckets, then two halves of 128.
    layout = dict(low=1, high=1000, figures=2)
    assert Histogram.decode_binary(wrap(payload(zigzag(-511) + zigzag(1), **layout))).max == 1023
    for body in (zigzag(-512) + zigzag(1), zigzag(-513), zigzag(-(2**63))):
        with pytest.raises(EncodingError):
            Histogram.decode_binary(wrap(payload(body, **layout)))


def test_total_count_overflow():
    body = zigzag(2**62) + zigzag(2**62) + zigzag(2**62)
    with pytest.raises(EncodingError):
        Histogram.decode_binary(wrap(payload(body)))


def test_payload_ending_inside_a_count():
    body = zigzag(300)[:1]
    with pytest.raises(EncodingError):
        Histogram.decode_binary(wrap(payload(body)))


def test_broken_zlib_stream():
    data = sample_histogram().encode_binary()
    broken = data[:8] + bytes(b ^ 0x5A for b in data[8:])
    with pytest.raises(EncodingError):
        Histogram.decode_binary(broken)


def test_bad_base64_and_text():
    with pytest.raises(EncodingError):
        Histogram.decode("HISTF!!!not-base64")
    with pytest.raises(EncodingError):
        Histogram.decode("HISTFé")
    with pytest.raises(EncodingError):
        Histogram.decode(base64.b64encode(b"\x1c\x84\x93\x14"))


def zlib_bomb(header_bytes, inflated_size):
    packer = zlib.compressobj(9)
    parts = [packer.compress(header_bytes)]
    block = bytes(1 << 20)
    for _ in range(inflated_size >> 20):
        parts.append(packer.compress(block))
    parts.append(packer.flush())
    compressed = b"".join(parts)
    return struct.pack(">II", COMPRESSED_COOKIE, len(compressed)) + compressed


def test_zlib_bomb_with_plausible_header_stops_early_and_small():
    # 64 MiB of zero counts behind a header claiming the largest legal payload: the stream
    # overruns the counts long before it is all inflated.
    bomb = zlib_bomb(HEADER.pack(ENCODING_COOKIE, 23552 * 9, 0, 3, 1, 3_600_000_000, 1.0),
                     64 << 20)
    assert len(bomb) < 200_000

    def decode():
        with pytest.raises(EncodingError):
            Histogram.decode_binary(bomb)

    assert peak_python_allocation(decode) < 2 * len(bomb) + (1 << 20)


def test_zlib_bomb_with_zero_header_stops_at_the_header():
    bomb = zlib_bomb(b"", 64 << 20)

    def decode():
        with pytest.raises(EncodingError):
            Histogram.decode_binary(bomb)

    assert peak_python_allocation(decode) < 2 * len(bomb) + (1 << 20)


def test_decoding_a_valid_histogram_allocates_little_python_memory():
    data = sample_histogram().encode_binary()
    assert peak_python_allocation(Histogram.decode_binary, data) < 256 * 1024


def test_encoding_errors_are_histogram_errors():
    assert issubclass(EncodingError, HistogramError)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data):
    for blob in (data, struct.pack(">II", COMPRESSED_COOKIE, len(data)) + data,
                 struct.pack(">II", COMPRESSED_COOKIE, len(zlib.compress(data)))
                 + zlib.compress(data)):
        try:
            Histogram.decode_binary(blob)
        except EncodingError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_payloads_decode_or_raise_encoding_error(data):
    raw = bytearray(zlib.decompress(sample_histogram().encode_binary()[8:]))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        hist = Histogram.decode_binary(wrap(bytes(raw)))
    except EncodingError:
        return
    assert hist.total_count == sum(count for _, _, count in hist.recorded())


def test_decode_and_add_matches_decode_then_add_and_survives_failures():
    parts = []
    rng = np.random.default_rng(9)
    for k in range(6):
        hist = Histogram()
        hist.record_array(rng.integers(0, 10 ** (3 + k), 300))
        parts.append(hist)
    expected = Histogram()
    merged = Histogram()
    good = parts[0].encode_binary()
    for k, part in enumerate(parts):
        expected.add(part)
        encoded = (part.encode(), part.encode().decode("ascii"), part.encode_binary())[k % 3]
        assert merged.decode_and_add(encoded) is merged
        # A failure half-way through a decode leaves neither target nor scratch dirty.
        raw = zlib.decompress(good[8:])
        before = merged.copy()
        with pytest.raises(EncodingError):
            merged.decode_and_add(wrap(raw[: len(raw) - 3]))
        assert merged == before
    assert merged == expected
    other_layout = Histogram(1, 10**6, 2)
    other_layout.record_array(np.array([5, 500, 50_000]))
    merged.decode_and_add(other_layout.encode())
    assert merged.total_count == expected.total_count + 3
    too_big = Histogram(1, 10**12, 3)
    too_big.record(10**11)
    before = merged.copy()
    with pytest.raises(HistogramError):
        merged.decode_and_add(too_big.encode())
    assert merged == before
    assert merged.decode_and_add(parts[1].encode()) == before.add(parts[1])


@pytest.mark.parametrize("body", [
    zigzag(3) + zigzag(-4) + zigzag(9) + zigzag(-(10**6)),
    zigzag(3) + zigzag(2**62) + zigzag(2**62),
    zigzag(3) + zigzag(7) + zigzag(300)[:1],
])
def test_decode_and_add_failing_part_way_leaves_the_target_unchanged(body):
    target = Histogram()
    target.record_array(np.array([0, 1, 5, 6, 900], dtype=np.int64))
    before = target.copy()
    for encoded in (wrap(payload(body)), payload(body)):
        with pytest.raises(EncodingError):
            target.decode_and_add(encoded)
        assert target == before
        assert (target.min, target.max, target.total_count) == (before.min, before.max, 5)
