/*
 * lg_hdr: an HdrHistogram-compatible histogram.  See lg_hdr.h for the contract.
 *
 * The bucket layout follows HdrHistogram: bucket 0 holds sub_bucket_count values at unit
 * resolution, every later bucket holds sub_bucket_half_count values at twice the previous
 * resolution.  The V2 encoding (lg_hdr_codec.c) and the interval recorder (lg_hdr_recorder.c)
 * live beside it.
 */
#include <limits.h>
#include <math.h>
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
