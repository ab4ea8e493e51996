/*
 * lg_hdr: an HdrHistogram-compatible histogram.  See lg_hdr.h for the contract.
 *
 * The bucket layout follows HdrHistogram: bucket 0 holds sub_bucket_count values at unit
 * resolution, every later bucket holds sub_bucket_half_count values at twice the previous
 * resolution.  The V2 encoding follows HdrHistogram's EncodableHistogram.
 */
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "lg_hdr.h"

/* floor(log2(value)) for value > 0. */
static int32_t lg_hdr_log2_floor(int64_t value)
{
    return 63 - __builtin_clzll((uint64_t) value);
}

/* Buckets needed so that value is trackable; mirrors HdrHistogram's bucketsNeededToCoverValue,
 * stopping before the smallest untrackable value overflows. */
static int32_t lg_hdr_buckets_needed(int64_t value, int32_t sub_bucket_count, int32_t unit_magnitude)
{
    int64_t smallest_untrackable_value = ((int64_t) sub_bucket_count) << unit_magnitude;
    int32_t buckets_needed = 1;
    while (smallest_untrackable_value <= value)
    {
        if (smallest_untrackable_value > INT64_MAX / 2)
        {
            return buckets_needed + 1;
        }
        smallest_untrackable_value <<= 1;
        buckets_needed++;
    }
    return buckets_needed;
}

/* Fills the layout fields of h from the range; returns LG_HDR_OK or LG_HDR_EINVAL. */
static int lg_hdr_layout(int64_t lowest_discernible_value, int64_t highest_trackable_value,
                         int significant_figures, lg_hdr_histogram* h)
{
    int64_t largest_value_with_single_unit_resolution;
    int32_t sub_bucket_count_magnitude;
    int64_t counts_len;

    if (lowest_discernible_value < 1 || significant_figures < 0 || significant_figures > 5
        || highest_trackable_value > INT64_MAX / 2
        || lowest_discernible_value > highest_trackable_value / 2)
    {
        return LG_HDR_EINVAL;
    }
    largest_value_with_single_unit_resolution = 2 * (int64_t) pow(10, significant_figures);
    sub_bucket_count_magnitude =
        (int32_t) ceil(log2((double) largest_value_with_single_unit_resolution));
    h->lowest_discernible_value = lowest_discernible_value;
    h->highest_trackable_value = highest_trackable_value;
    h->significant_figures = significant_figures;
    h->unit_magnitude = lg_hdr_log2_floor(lowest_discernible_value);
    h->sub_bucket_half_count_magnitude =
        (sub_bucket_count_magnitude > 1 ? sub_bucket_count_magnitude : 1) - 1;
    if (h->unit_magnitude + h->sub_bucket_half_count_magnitude > 61)
    {
        return LG_HDR_EINVAL;
    }
    h->sub_bucket_count = 1 << (h->sub_bucket_half_count_magnitude + 1);
    h->sub_bucket_half_count = h->sub_bucket_count / 2;
    h->sub_bucket_mask = ((int64_t) h->sub_bucket_count - 1) << h->unit_magnitude;
    h->bucket_count = lg_hdr_buckets_needed(highest_trackable_value, h->sub_bucket_count,
                                            h->unit_magnitude);
    counts_len = ((int64_t) h->bucket_count + 1) * h->sub_bucket_half_count;
    if (counts_len > INT32_MAX)
    {
        return LG_HDR_EINVAL;
    }
    h->counts_len = (int32_t) counts_len;
    h->normalizing_index_offset = 0;
    h->conversion_ratio = 1.0;
    return LG_HDR_OK;
}

int64_t lg_hdr_counts_len_for(int64_t lowest_discernible_value, int64_t highest_trackable_value,
                              int significant_figures)
{
    lg_hdr_histogram layout;
    if (lg_hdr_layout(lowest_discernible_value, highest_trackable_value, significant_figures,
                      &layout) != LG_HDR_OK)
    {
        return -1;
    }
    return layout.counts_len;
}

int lg_hdr_init(int64_t lowest_discernible_value, int64_t highest_trackable_value,
                int significant_figures, lg_hdr_histogram** result)
{
    lg_hdr_histogram* h = calloc(1, sizeof(lg_hdr_histogram));
    int rc;
    if (h == NULL)
    {
        return LG_HDR_ENOMEM;
    }
    rc = lg_hdr_layout(lowest_discernible_value, highest_trackable_value, significant_figures, h);
    if (rc != LG_HDR_OK)
    {
        free(h);
        return rc;
    }
    h->counts = calloc((size_t) h->counts_len, sizeof(int64_t));
    if (h->counts == NULL)
    {
        free(h);
        return LG_HDR_ENOMEM;
    }
    h->min_value = INT64_MAX;
    h->max_value = 0;
    *result = h;
    return LG_HDR_OK;
}

void lg_hdr_close(lg_hdr_histogram* h)
{
    if (h != NULL)
    {
        free(h->counts);
        free(h);
    }
}

int64_t lg_hdr_record_array_clamped(lg_hdr_histogram* h, const int64_t* values, int64_t length)
{
    int64_t clamped = 0;
    int64_t i;
    for (i = 0; i < length; i++)
    {
        clamped += lg_hdr_record_clamped(h, values[i]);
    }
    return clamped;
}

int64_t lg_hdr_value_at_index(const lg_hdr_histogram* h, int32_t index)
{
    int32_t bucket_index = (index >> h->sub_bucket_half_count_magnitude) - 1;
    int32_t sub_bucket_index = (index & (h->sub_bucket_half_count - 1)) + h->sub_bucket_half_count;
    if (bucket_index < 0)
    {
        sub_bucket_index -= h->sub_bucket_half_count;
        bucket_index = 0;
    }
    return ((int64_t) sub_bucket_index) << (bucket_index + h->unit_magnitude);
}

/* Width of the range of values equivalent to value. */
static int64_t lg_hdr_size_of_equivalent_value_range(const lg_hdr_histogram* h, int64_t value)
{
    int32_t pow2ceiling = 64 - __builtin_clzll((uint64_t) (value | h->sub_bucket_mask));
    int32_t bucket_index = pow2ceiling - h->unit_magnitude - (h->sub_bucket_half_count_magnitude + 1);
    int32_t sub_bucket_index = (int32_t) (value >> (bucket_index + h->unit_magnitude));
    int32_t adjusted_bucket = (sub_bucket_index >= h->sub_bucket_count) ? bucket_index + 1 : bucket_index;
    return ((int64_t) 1) << (h->unit_magnitude + adjusted_bucket);
}

int64_t lg_hdr_lowest_equivalent_value(const lg_hdr_histogram* h, int64_t value)
{
    int32_t pow2ceiling = 64 - __builtin_clzll((uint64_t) (value | h->sub_bucket_mask));
    int32_t bucket_index = pow2ceiling - h->unit_magnitude - (h->sub_bucket_half_count_magnitude + 1);
    int64_t sub_bucket_index = value >> (bucket_index + h->unit_magnitude);
    return sub_bucket_index << (bucket_index + h->unit_magnitude);
}

int64_t lg_hdr_highest_equivalent_value(const lg_hdr_histogram* h, int64_t value)
{
    return lg_hdr_lowest_equivalent_value(h, value) + lg_hdr_size_of_equivalent_value_range(h, value) - 1;
}

int64_t lg_hdr_median_equivalent_value(const lg_hdr_histogram* h, int64_t value)
{
    return lg_hdr_lowest_equivalent_value(h, value) + (lg_hdr_size_of_equivalent_value_range(h, value) >> 1);
}

int lg_hdr_same_layout(const lg_hdr_histogram* a, const lg_hdr_histogram* b)
{
    return a->unit_magnitude == b->unit_magnitude
        && a->sub_bucket_half_count_magnitude == b->sub_bucket_half_count_magnitude
        && a->counts_len == b->counts_len
        && a->highest_trackable_value == b->highest_trackable_value;
}

int32_t lg_hdr_next_nonzero_index(const lg_hdr_histogram* h, int32_t index)
{
    while (index < h->counts_len && h->counts[index] == 0)
    {
        index++;
    }
    return index;
}

/* Recomputes min and max from the counts after a merge whose bounds are not value-exact. */
static void lg_hdr_bounds_from_counts(lg_hdr_histogram* h)
{
    int32_t first = -1;
    int32_t last = -1;
    int32_t i;
    for (i = 0; i < h->counts_len; i++)
    {
        if (h->counts[i] != 0)
        {
            if (first < 0)
            {
                first = i;
            }
            last = i;
        }
    }
    h->min_value = INT64_MAX;
    h->max_value = 0;
    if (last < 0)
    {
        return;
    }
    h->max_value = lg_hdr_highest_equivalent_value(h, lg_hdr_value_at_index(h, last));
    if (first == 0)
    {
        first = lg_hdr_next_nonzero_index(h, 1);
    }
    if (first < h->counts_len)
    {
        h->min_value = lg_hdr_value_at_index(h, first);
        if (h->min_value == 0)
        {
            h->min_value = INT64_MAX;
        }
    }
}

/* Index range [first, last] outside which h has no counts except at index 0, from its
 * minimum and maximum: merges touch only the recorded span. */
static void lg_hdr_recorded_range(const lg_hdr_histogram* h, int32_t* first, int32_t* last)
{
    *first = h->min_value == INT64_MAX ? h->counts_len : lg_hdr_counts_index_for(h, h->min_value);
    *last = h->max_value == 0 ? 0 : lg_hdr_counts_index_for(h, h->max_value);
    if (*last >= h->counts_len)
    {
        *last = h->counts_len - 1;
    }
}

/* Checks that every recorded src value fits dst; returns LG_HDR_OK or LG_HDR_ERANGE. */
static int lg_hdr_fits(const lg_hdr_histogram* dst, const lg_hdr_histogram* src)
{
    int32_t last = src->counts_len;
    while (last > 0 && src->counts[last - 1] == 0)
    {
        last--;
    }
    if (last > 0 && lg_hdr_value_at_index(src, last - 1) > dst->highest_trackable_value)
    {
        return LG_HDR_ERANGE;
    }
    return LG_HDR_OK;
}

int lg_hdr_add(lg_hdr_histogram* dst, const lg_hdr_histogram* src)
{
    int32_t i;
    if (lg_hdr_same_layout(dst, src))
    {
        int64_t* restrict out = dst->counts;
        const int64_t* restrict in = src->counts;
        int32_t first;
        int32_t last;
        lg_hdr_recorded_range(src, &first, &last);
        out[0] += in[0];
        for (i = first > 0 ? first : 1; i <= last; i++)
        {
            out[i] += in[i];
        }
        dst->total_count += src->total_count;
        if (src->min_value < dst->min_value)
        {
            dst->min_value = src->min_value;
        }
        if (src->max_value > dst->max_value)
        {
            dst->max_value = src->max_value;
        }
        return LG_HDR_OK;
    }
    if (lg_hdr_fits(dst, src) != LG_HDR_OK)
    {
        return LG_HDR_ERANGE;
    }
    for (i = lg_hdr_next_nonzero_index(src, 0); i < src->counts_len;
         i = lg_hdr_next_nonzero_index(src, i + 1))
    {
        lg_hdr_record_unchecked(dst, lg_hdr_value_at_index(src, i), src->counts[i]);
    }
    return LG_HDR_OK;
}

int lg_hdr_subtract(lg_hdr_histogram* dst, const lg_hdr_histogram* src)
{
    int32_t i;
    int same = lg_hdr_same_layout(dst, src);
    if (!same && lg_hdr_fits(dst, src) != LG_HDR_OK)
    {
        return LG_HDR_ERANGE;
    }
    for (i = lg_hdr_next_nonzero_index(src, 0); i < src->counts_len;
         i = lg_hdr_next_nonzero_index(src, i + 1))
    {
        int32_t at = same ? i : lg_hdr_counts_index_for(dst, lg_hdr_value_at_index(src, i));
        if (dst->counts[at] < src->counts[i])
        {
            return LG_HDR_ERANGE;
        }
    }
    for (i = lg_hdr_next_nonzero_index(src, 0); i < src->counts_len;
         i = lg_hdr_next_nonzero_index(src, i + 1))
    {
        int32_t at = same ? i : lg_hdr_counts_index_for(dst, lg_hdr_value_at_index(src, i));
        dst->counts[at] -= src->counts[i];
        dst->total_count -= src->counts[i];
    }
    lg_hdr_bounds_from_counts(dst);
    return LG_HDR_OK;
}

int lg_hdr_copy_counts(lg_hdr_histogram* dst, const lg_hdr_histogram* src)
{
    if (!lg_hdr_same_layout(dst, src))
    {
        return LG_HDR_ELAYOUT;
    }
    memcpy(dst->counts, src->counts, (size_t) src->counts_len * sizeof(int64_t));
    dst->total_count = src->total_count;
    dst->min_value = src->min_value;
    dst->max_value = src->max_value;
    return LG_HDR_OK;
}

int lg_hdr_equal(const lg_hdr_histogram* a, const lg_hdr_histogram* b)
{
    return lg_hdr_same_layout(a, b)
        && a->lowest_discernible_value == b->lowest_discernible_value
        && a->significant_figures == b->significant_figures
        && a->total_count == b->total_count
        && memcmp(a->counts, b->counts, (size_t) a->counts_len * sizeof(int64_t)) == 0;
}

void lg_hdr_reset(lg_hdr_histogram* h)
{
    memset(h->counts, 0, (size_t) h->counts_len * sizeof(int64_t));
    h->total_count = 0;
    h->min_value = INT64_MAX;
    h->max_value = 0;
}

/* Nearest rank of percentile among total samples, at least 1.  The relative nudge keeps
 * decimal percentiles such as 99.9 of 1000 at rank 999 despite binary rounding. */
static int64_t lg_hdr_rank_for(double percentile, int64_t total)
{
    double requested = percentile < 0.0 ? 0.0 : (percentile > 100.0 ? 100.0 : percentile);
    double exact = (requested * (double) total) / 100.0;
    int64_t rank = (int64_t) ceil(exact - exact * 1e-12);
    return rank > 1 ? rank : 1;
}

int64_t lg_hdr_value_at_percentile(const lg_hdr_histogram* h, double percentile)
{
    int64_t values[1];
    lg_hdr_values_at_percentiles(h, &percentile, values, 1);
    return values[0];
}

/* Orders percentile indexes by percentile for lg_hdr_values_at_percentiles (insertion sort:
 * callers ask for a handful). */
static void lg_hdr_sort_by_percentile(const double* percentiles, int32_t* order, int32_t count)
{
    int32_t i;
    for (i = 0; i < count; i++)
    {
        int32_t j = i;
        order[i] = i;
        while (j > 0 && percentiles[order[j - 1]] > percentiles[i])
        {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

void lg_hdr_values_at_percentiles(const lg_hdr_histogram* h, const double* percentiles,
                                  int64_t* values, int32_t count)
{
    int32_t order_on_stack[32];
    int32_t* order = count <= 32 ? order_on_stack : malloc((size_t) count * sizeof(int32_t));
    int64_t running = 0;
    int32_t index = 0;
    int32_t k;
    if (order == NULL)
    {
        for (k = 0; k < count; k++)
        {
            values[k] = lg_hdr_value_at_percentile(h, percentiles[k]);
        }
        return;
    }
    lg_hdr_sort_by_percentile(percentiles, order, count);
    for (k = 0; k < count; k++)
    {
        int32_t which = order[k];
        int64_t rank = lg_hdr_rank_for(percentiles[which], h->total_count);
        if (h->total_count == 0)
        {
            values[which] = 0;
            continue;
        }
        while (running < rank && index < h->counts_len)
        {
            running += h->counts[index++];
        }
        {
            int64_t value = lg_hdr_value_at_index(h, index - 1);
            values[which] = percentiles[which] <= 0.0
                ? lg_hdr_lowest_equivalent_value(h, value)
                : lg_hdr_highest_equivalent_value(h, value);
        }
    }
    if (order != order_on_stack)
    {
        free(order);
    }
}

double lg_hdr_mean(const lg_hdr_histogram* h)
{
    double total = 0.0;
    int32_t i;
    if (h->total_count == 0)
    {
        return 0.0;
    }
    for (i = lg_hdr_next_nonzero_index(h, 0); i < h->counts_len; i = lg_hdr_next_nonzero_index(h, i + 1))
    {
        total += (double) h->counts[i]
            * (double) lg_hdr_median_equivalent_value(h, lg_hdr_value_at_index(h, i));
    }
    return total / (double) h->total_count;
}

double lg_hdr_stddev(const lg_hdr_histogram* h)
{
    double mean = lg_hdr_mean(h);
    double deviations = 0.0;
    int32_t i;
    if (h->total_count == 0)
    {
        return 0.0;
    }
    for (i = lg_hdr_next_nonzero_index(h, 0); i < h->counts_len; i = lg_hdr_next_nonzero_index(h, i + 1))
    {
        double deviation =
            (double) lg_hdr_median_equivalent_value(h, lg_hdr_value_at_index(h, i)) - mean;
        deviations += deviation * deviation * (double) h->counts[i];
    }
    return sqrt(deviations / (double) h->total_count);
}

int64_t lg_hdr_min(const lg_hdr_histogram* h)
{
    if (h->total_count == 0 || h->counts[0] > 0 || h->min_value == INT64_MAX)
    {
        return 0;
    }
    return lg_hdr_lowest_equivalent_value(h, h->min_value);
}

int64_t lg_hdr_max(const lg_hdr_histogram* h)
{
    if (h->max_value == 0)
    {
        return 0;
    }
    return lg_hdr_highest_equivalent_value(h, h->max_value);
}

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

int lg_hdr_recorder_init(int64_t lowest_discernible_value, int64_t highest_trackable_value,
                         int significant_figures, lg_hdr_recorder** result)
{
    lg_hdr_recorder* r = calloc(1, sizeof(lg_hdr_recorder));
    int rc;
    if (r == NULL)
    {
        return LG_HDR_ENOMEM;
    }
    rc = lg_hdr_init(lowest_discernible_value, highest_trackable_value, significant_figures,
                     &r->active);
    if (rc != LG_HDR_OK)
    {
        free(r);
        return rc;
    }
    r->start_epoch = 0;
    r->even_end_epoch = 0;
    r->odd_end_epoch = INT64_MIN;
    *result = r;
    return LG_HDR_OK;
}

void lg_hdr_recorder_close(lg_hdr_recorder* r)
{
    if (r != NULL)
    {
        lg_hdr_close(r->active);
        free(r);
    }
}

int64_t lg_hdr_recorder_record_array(lg_hdr_recorder* r, const int64_t* values, int64_t length)
{
    int64_t clamped = 0;
    int64_t i;
    for (i = 0; i < length; i++)
    {
        clamped += lg_hdr_recorder_record(r, values[i], 1);
    }
    return clamped;
}

lg_hdr_histogram* lg_hdr_recorder_swap(lg_hdr_recorder* r, lg_hdr_histogram* replacement)
{
    lg_hdr_histogram* previous = __atomic_exchange_n(&r->active, replacement, __ATOMIC_SEQ_CST);
    int next_phase_is_even = __atomic_load_n(&r->start_epoch, __ATOMIC_SEQ_CST) < 0;
    int64_t initial_start_value = next_phase_is_even ? 0 : INT64_MIN;
    int64_t start_value_at_flip;
    int64_t* previous_end = next_phase_is_even ? &r->odd_end_epoch : &r->even_end_epoch;
    int spins = 0;

    __atomic_store_n(next_phase_is_even ? &r->even_end_epoch : &r->odd_end_epoch,
                     initial_start_value, __ATOMIC_SEQ_CST);
    start_value_at_flip = __atomic_exchange_n(&r->start_epoch, initial_start_value,
                                              __ATOMIC_SEQ_CST);
    while (__atomic_load_n(previous_end, __ATOMIC_SEQ_CST) != start_value_at_flip)
    {
        if (++spins > 64)
        {
            sched_yield();
        }
    }
    return previous;
}
