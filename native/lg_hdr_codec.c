/*
 * lg_hdr_codec: HdrHistogram's V2 encoding (EncodableHistogram) of an lg_hdr histogram, both
 * directions.  See lg_hdr.h for the contract.
 */
#include <limits.h>
#include <string.h>

#include "lg_hdr.h"

/* Writes value big-endian in size bytes. */
static void lg_hdr_put_big_endian(uint8_t* buffer, uint64_t value, int size)
{
    int i;
    for (i = size - 1; i >= 0; i--)
    {
        buffer[i] = (uint8_t) value;
        value >>= 8;
    }
}

/* Reads a big-endian value of size bytes. */
static uint64_t lg_hdr_get_big_endian(const uint8_t* buffer, int size)
{
    uint64_t value = 0;
    int i;
    for (i = 0; i < size; i++)
    {
        value = (value << 8) | buffer[i];
    }
    return value;
}

/* Writes value zig-zag LEB128 (the ninth byte carries eight bits); returns bytes written. */
static size_t lg_hdr_put_zigzag(uint8_t* buffer, int64_t value)
{
    uint64_t bits = ((uint64_t) value << 1) ^ (uint64_t) (value >> 63);
    size_t written = 0;
    while (written < 8 && bits >= 0x80)
    {
        buffer[written++] = (uint8_t) ((bits & 0x7f) | 0x80);
        bits >>= 7;
    }
    buffer[written++] = (uint8_t) bits;
    return written;
}

size_t lg_hdr_encode_v2_bound(const lg_hdr_histogram* h)
{
    return LG_HDR_V2_HEADER_SIZE + (size_t) h->counts_len * LG_HDR_V2_MAX_BYTES_PER_COUNT;
}

size_t lg_hdr_encode_v2(const lg_hdr_histogram* h, uint8_t* buffer, size_t capacity)
{
    int32_t limit = 0;
    int32_t index = 0;
    size_t at = LG_HDR_V2_HEADER_SIZE;
    union { double d; uint64_t u; } ratio;

    if (h->max_value > 0 || h->total_count > 0)
    {
        limit = h->counts_len;
        while (limit > 0 && h->counts[limit - 1] == 0)
        {
            limit--;
        }
    }
    if (capacity < LG_HDR_V2_HEADER_SIZE + (size_t) limit * LG_HDR_V2_MAX_BYTES_PER_COUNT)
    {
        return 0;
    }
    while (index < limit)
    {
        int64_t count = h->counts[index++];
        if (count == 0)
        {
            int64_t zeros = 1;
            while (index < limit && h->counts[index] == 0)
            {
                zeros++;
                index++;
            }
            at += lg_hdr_put_zigzag(buffer + at, zeros > 1 ? -zeros : 0);
        }
        else
        {
            at += lg_hdr_put_zigzag(buffer + at, count);
        }
    }
    ratio.d = h->conversion_ratio;
    lg_hdr_put_big_endian(buffer, LG_HDR_V2_ENCODING_COOKIE, 4);
    lg_hdr_put_big_endian(buffer + 4, at - LG_HDR_V2_HEADER_SIZE, 4);
    lg_hdr_put_big_endian(buffer + 8, 0, 4);
    lg_hdr_put_big_endian(buffer + 12, (uint64_t) h->significant_figures, 4);
    lg_hdr_put_big_endian(buffer + 16, (uint64_t) h->lowest_discernible_value, 8);
    lg_hdr_put_big_endian(buffer + 24, (uint64_t) h->highest_trackable_value, 8);
    lg_hdr_put_big_endian(buffer + 32, ratio.u, 8);
    return at;
}

int lg_hdr_decode_v2_header(const uint8_t* buffer, lg_hdr_v2_header* header,
                            int64_t max_counts_len)
{
    union { double d; uint64_t u; } ratio;
    int64_t counts_len;
    header->cookie = (uint32_t) lg_hdr_get_big_endian(buffer, 4);
    header->payload_length = (uint32_t) lg_hdr_get_big_endian(buffer + 4, 4);
    header->normalizing_index_offset = (uint32_t) lg_hdr_get_big_endian(buffer + 8, 4);
    header->significant_figures = (uint32_t) lg_hdr_get_big_endian(buffer + 12, 4);
    header->lowest_discernible_value = (int64_t) lg_hdr_get_big_endian(buffer + 16, 8);
    header->highest_trackable_value = (int64_t) lg_hdr_get_big_endian(buffer + 24, 8);
    ratio.u = lg_hdr_get_big_endian(buffer + 32, 8);
    header->conversion_ratio = ratio.d;
    if ((header->cookie & LG_HDR_COOKIE_BASE_MASK) != LG_HDR_V2_ENCODING_COOKIE_BASE
        || header->significant_figures > 5)
    {
        return LG_HDR_ECORRUPT;
    }
    counts_len = lg_hdr_counts_len_for(header->lowest_discernible_value,
                                       header->highest_trackable_value,
                                       (int) header->significant_figures);
    if (counts_len < 0 || counts_len > max_counts_len
        || (int64_t) header->payload_length > counts_len * LG_HDR_V2_MAX_BYTES_PER_COUNT)
    {
        return LG_HDR_ECORRUPT;
    }
    return LG_HDR_OK;
}

void lg_hdr_decode_v2_start(lg_hdr_decode_state* state)
{
    state->index = 0;
    state->first_nonzero_above_zero = -1;
    state->last_nonzero = -1;
    state->total = 0;
}

/* How lg_hdr_v2_walk treats the counts it decodes. */
typedef enum lg_hdr_v2_walk_mode
{
    LG_HDR_WALK_STORE,      /* counts[i] = value (decoding into an empty histogram) */
    LG_HDR_WALK_ADD,        /* counts[i] += value (merging a stream) */
    LG_HDR_WALK_SUBTRACT    /* counts[i] -= value (undoing a merge that failed part-way) */
} lg_hdr_v2_walk_mode;

/* Walks a zig-zag LEB128 counts stream for a layout of counts_len counts, advancing state;
 * returns LG_HDR_ECORRUPT on an overrun or a total overflow, with *consumed the bytes of
 * whole words used.  The one decoding loop every decode path shares. */
static int lg_hdr_v2_walk(int32_t counts_len, int64_t* counts, lg_hdr_v2_walk_mode mode,
                          const uint8_t* buffer, size_t length, lg_hdr_decode_state* state,
                          size_t* consumed)
{
    /* Locals, not state's fields, in the loop: stores into counts could alias those. */
    size_t at = 0;
    int32_t next = state->index;
    int32_t first = state->first_nonzero_above_zero;
    int32_t last = state->last_nonzero;
    int64_t total = state->total;
    int rc = LG_HDR_OK;
    while (at < length)
    {
        uint64_t bits = buffer[at];
        int64_t value;
        if (bits < 0x80)
        {
            at++;
        }
        else
        {
            size_t start = at;
            int shift = 0;
            bits = 0;
            for (;;)
            {
                uint8_t byte;
                if (at == length)
                {
                    at = start;
                    goto done;
                }
                byte = buffer[at++];
                if (shift == 56)
                {
                    bits |= ((uint64_t) byte) << 56;
                    break;
                }
                bits |= ((uint64_t) (byte & 0x7f)) << shift;
                if ((byte & 0x80) == 0)
                {
                    break;
                }
                shift += 7;
            }
        }
        value = (int64_t) (bits >> 1) ^ -(int64_t) (bits & 1);
        if (value < 0)
        {
            if (value < -(int64_t) (counts_len - next))
            {
                rc = LG_HDR_ECORRUPT;
                goto done;
            }
            next += (int32_t) -value;
            continue;
        }
        if (next >= counts_len || __builtin_add_overflow(total, value, &total))
        {
            rc = LG_HDR_ECORRUPT;
            goto done;
        }
        if (value > 0)
        {
            first = (first < 0 && next > 0) ? next : first;
            last = next;
        }
        if (mode == LG_HDR_WALK_STORE)
        {
            counts[next] = value;
        }
        else if (mode == LG_HDR_WALK_ADD)
        {
            counts[next] += value;
        }
        else
        {
            counts[next] -= value;
        }
        next++;
    }
done:
    state->index = next;
    state->first_nonzero_above_zero = first;
    state->last_nonzero = last;
    state->total = total;
    *consumed = at;
    return rc;
}

int lg_hdr_decode_v2_counts(lg_hdr_histogram* h, const uint8_t* buffer, size_t length,
                            lg_hdr_decode_state* state, size_t* consumed)
{
    return lg_hdr_v2_walk(h->counts_len, h->counts, LG_HDR_WALK_STORE, buffer, length, state,
                          consumed);
}

int lg_hdr_decode_v2_add(lg_hdr_histogram* dst, const uint8_t* buffer, size_t length)
{
    lg_hdr_decode_state state;
    size_t consumed;
    int rc;
    lg_hdr_decode_v2_start(&state);
    state.total = dst->total_count;
    rc = lg_hdr_v2_walk(dst->counts_len, dst->counts, LG_HDR_WALK_ADD, buffer, length, &state,
                        &consumed);
    if (rc != LG_HDR_OK || consumed != length)
    {
        /* Streams are merged in one pass; the rare bad one is taken back out, which the
         * prefix already walked (every word of it valid) allows exactly. */
        size_t undone;
        lg_hdr_decode_v2_start(&state);
        lg_hdr_v2_walk(dst->counts_len, dst->counts, LG_HDR_WALK_SUBTRACT, buffer, consumed,
                       &state, &undone);
        return LG_HDR_ECORRUPT;
    }
    dst->total_count = state.total;
    if (state.first_nonzero_above_zero > 0)
    {
        int64_t low = lg_hdr_value_at_index(dst, state.first_nonzero_above_zero);
        if (low < dst->min_value)
        {
            dst->min_value = low;
        }
    }
    if (state.last_nonzero >= 0)
    {
        int64_t high = lg_hdr_highest_equivalent_value(dst, lg_hdr_value_at_index(dst, state.last_nonzero));
        if (high > dst->max_value)
        {
            dst->max_value = high;
        }
    }
    return LG_HDR_OK;
}

void lg_hdr_decode_v2_finish(lg_hdr_histogram* h, const lg_hdr_decode_state* state)
{
    h->total_count = state->total;
    h->min_value = INT64_MAX;
    h->max_value = 0;
    if (state->last_nonzero >= 0)
    {
        h->max_value = lg_hdr_highest_equivalent_value(h, lg_hdr_value_at_index(h, state->last_nonzero));
    }
    if (state->first_nonzero_above_zero > 0)
    {
        h->min_value = lg_hdr_value_at_index(h, state->first_nonzero_above_zero);
    }
}
