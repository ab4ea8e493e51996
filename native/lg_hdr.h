/*
 * lg_hdr: an HdrHistogram-compatible histogram (same bucket layout as HdrHistogram_c and
 * HdrHistogram Java, so encoded forms interoperate).  Counts are int64.
 *
 * Thread-safety: none inside; callers serialise.  Every function here is safe to call
 * without the GIL.
 */
#ifndef LG_HDR_H
#define LG_HDR_H

#include <stdint.h>
#include <stddef.h>

typedef struct lg_hdr_histogram
{
    int64_t lowest_discernible_value;
    int64_t highest_trackable_value;
    int32_t unit_magnitude;
    int32_t significant_figures;
    int32_t sub_bucket_half_count_magnitude;
    int32_t sub_bucket_half_count;
    int64_t sub_bucket_mask;
    int32_t sub_bucket_count;
    int32_t bucket_count;
    int64_t min_value;
    int64_t max_value;
    int32_t normalizing_index_offset;
    double conversion_ratio;
    int32_t counts_len;
    int64_t total_count;
    int64_t* counts;
} lg_hdr_histogram;

/* Error codes returned by the functions below; 0 is success. */
#define LG_HDR_OK 0
#define LG_HDR_EINVAL 1      /* bad range or significant figures */
#define LG_HDR_ENOMEM 2      /* allocation failed */
#define LG_HDR_ERANGE 3      /* value outside the trackable range */
#define LG_HDR_ELAYOUT 4     /* histograms of different layouts where one is required */

/* Allocates and initialises a histogram; returns an LG_HDR_* code, *result set on success. */
int lg_hdr_init(int64_t lowest_discernible_value, int64_t highest_trackable_value,
                int significant_figures, lg_hdr_histogram** result);

/* Frees a histogram from lg_hdr_init; NULL is allowed. */
void lg_hdr_close(lg_hdr_histogram* h);

/* Records count occurrences of value; returns LG_HDR_OK or LG_HDR_ERANGE (nothing recorded). */
int lg_hdr_record_values(lg_hdr_histogram* h, int64_t value, int64_t count);

/* Records value, clamped into [lowest, highest] so a recording is never lost; returns 1 when
 * the value was clamped, 0 otherwise.  The engine's hot path uses this one. */
int lg_hdr_record_clamped(lg_hdr_histogram* h, int64_t value);

/* Index in counts of the bucket holding value (caller has checked the range). */
int32_t lg_hdr_counts_index_for(const lg_hdr_histogram* h, int64_t value);

/* Lowest value equivalent to counts[index]'s bucket. */
int64_t lg_hdr_value_at_index(const lg_hdr_histogram* h, int32_t index);

/* Adds every count of src into dst; returns LG_HDR_OK or LG_HDR_ERANGE if some src value
 * does not fit dst (then dst is unchanged). */
int lg_hdr_add(lg_hdr_histogram* dst, const lg_hdr_histogram* src);

/* Subtracts src from dst; LG_HDR_ERANGE (dst unchanged) if any count would go negative. */
int lg_hdr_subtract(lg_hdr_histogram* dst, const lg_hdr_histogram* src);

/* Zeroes counts, total, min and max. */
void lg_hdr_reset(lg_hdr_histogram* h);

/* Value at percentile (0..100), as HdrHistogram_c's hdr_value_at_percentile. */
int64_t lg_hdr_value_at_percentile(const lg_hdr_histogram* h, double percentile);

/* Mean and standard deviation as HdrHistogram computes them (bucket median values). */
double lg_hdr_mean(const lg_hdr_histogram* h);
double lg_hdr_stddev(const lg_hdr_histogram* h);

/* min/max as HdrHistogram reports them (lowest/highest equivalent values); 0 when empty. */
int64_t lg_hdr_min(const lg_hdr_histogram* h);
int64_t lg_hdr_max(const lg_hdr_histogram* h);

/* Helpers for equivalent-value ranges, as HdrHistogram defines them. */
int64_t lg_hdr_lowest_equivalent_value(const lg_hdr_histogram* h, int64_t value);
int64_t lg_hdr_highest_equivalent_value(const lg_hdr_histogram* h, int64_t value);
int64_t lg_hdr_median_equivalent_value(const lg_hdr_histogram* h, int64_t value);

#endif
