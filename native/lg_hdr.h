/*
 * lg_hdr: an HdrHistogram-compatible histogram (same bucket layout as HdrHistogram_c and
 * HdrHistogram Java, so encoded forms interoperate).  Counts are int64.
 *
 * Thread-safety: none inside a histogram; callers serialise.  lg_hdr_recorder is the
 * exception: any number of threads record into it while one thread takes snapshots.
 * Every function here is safe to call without the GIL.
 *
 * The recording path (lg_hdr_counts_index_for, lg_hdr_record_values, lg_hdr_record_clamped,
 * lg_hdr_recorder_record) is static inline in this header so that any Cython module that
 * cimports loadgate.native._hdr records without linking lg_hdr.c and without a call.
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
#define LG_HDR_ECORRUPT 5    /* an encoded payload is malformed */

/* The V2 encoding: cookies (their low nibble pair carries the word size, 0x10 as written by
 * HdrHistogram), the uncompressed payload header size, and the worst-case bytes per count. */
#define LG_HDR_V2_ENCODING_COOKIE 0x1c849313
#define LG_HDR_V2_COMPRESSED_COOKIE 0x1c849314
#define LG_HDR_V2_ENCODING_COOKIE_BASE 0x1c849303
#define LG_HDR_V2_COMPRESSED_COOKIE_BASE 0x1c849304
#define LG_HDR_COOKIE_BASE_MASK (~0xf0)
#define LG_HDR_V2_HEADER_SIZE 40
#define LG_HDR_V2_MAX_BYTES_PER_COUNT 9

/* Allocates and initialises a histogram; returns an LG_HDR_* code, *result set on success.
 * Counts are calloc'ed, so a wide layout costs address space until it is recorded into. */
int lg_hdr_init(int64_t lowest_discernible_value, int64_t highest_trackable_value,
                int significant_figures, lg_hdr_histogram** result);

/* Number of counts a layout needs, or -1 if the layout is invalid; allocates nothing.
 * Decoders call it to refuse absurd layouts before allocating. */
int64_t lg_hdr_counts_len_for(int64_t lowest_discernible_value, int64_t highest_trackable_value,
                              int significant_figures);

/* Frees a histogram from lg_hdr_init; NULL is allowed. */
void lg_hdr_close(lg_hdr_histogram* h);

/* Index in counts of the bucket holding value (caller has checked the range). */
static inline int32_t lg_hdr_counts_index_for(const lg_hdr_histogram* h, int64_t value)
{
    int32_t pow2ceiling = 64 - __builtin_clzll((uint64_t) (value | h->sub_bucket_mask));
    int32_t bucket_index = pow2ceiling - h->unit_magnitude
        - (h->sub_bucket_half_count_magnitude + 1);
    int32_t sub_bucket_index = (int32_t) (value >> (bucket_index + h->unit_magnitude));
    int32_t bucket_base_index = (bucket_index + 1) << h->sub_bucket_half_count_magnitude;
    return bucket_base_index + sub_bucket_index - h->sub_bucket_half_count;
}

/* Adds count at a checked value; the common tail of the recording functions. */
static inline void lg_hdr_record_unchecked(lg_hdr_histogram* h, int64_t value, int64_t count)
{
    h->counts[lg_hdr_counts_index_for(h, value)] += count;
    h->total_count += count;
    if (value != 0 && value < h->min_value)
    {
        h->min_value = value;
    }
    if (value > h->max_value)
    {
        h->max_value = value;
    }
}

/* Records count occurrences of value; returns LG_HDR_OK or LG_HDR_ERANGE (nothing recorded).
 * The trackable range is [0, highest_trackable_value]; values below the lowest discernible
 * value share the first bucket, as in HdrHistogram. */
static inline int lg_hdr_record_values(lg_hdr_histogram* h, int64_t value, int64_t count)
{
    if (value < 0 || value > h->highest_trackable_value || count < 0)
    {
        return LG_HDR_ERANGE;
    }
    lg_hdr_record_unchecked(h, value, count);
    return LG_HDR_OK;
}

/* Records value, clamped into [0, highest_trackable_value] so a recording is never lost;
 * returns 1 when the value was clamped, 0 otherwise.  The engine's hot path uses this one. */
static inline int lg_hdr_record_clamped(lg_hdr_histogram* h, int64_t value)
{
    int clamped = 0;
    if (value < 0)
    {
        value = 0;
        clamped = 1;
    }
    else if (value > h->highest_trackable_value)
    {
        value = h->highest_trackable_value;
        clamped = 1;
    }
    lg_hdr_record_unchecked(h, value, 1);
    return clamped;
}

/* Records every value of an array, clamped; returns how many were clamped. */
int64_t lg_hdr_record_array_clamped(lg_hdr_histogram* h, const int64_t* values, int64_t length);

/* Lowest value equivalent to counts[index]'s bucket. */
int64_t lg_hdr_value_at_index(const lg_hdr_histogram* h, int32_t index);

/* 1 if a and b have the same layout (so their counts arrays line up), else 0. */
int lg_hdr_same_layout(const lg_hdr_histogram* a, const lg_hdr_histogram* b);

/* Adds every count of src into dst; returns LG_HDR_OK or LG_HDR_ERANGE if some src value
 * does not fit dst (then dst is unchanged). */
int lg_hdr_add(lg_hdr_histogram* dst, const lg_hdr_histogram* src);

/* Subtracts src from dst; LG_HDR_ERANGE (dst unchanged) if any count would go negative. */
int lg_hdr_subtract(lg_hdr_histogram* dst, const lg_hdr_histogram* src);

/* Copies src's counts, total, min and max into dst of the same layout; LG_HDR_ELAYOUT
 * otherwise. */
int lg_hdr_copy_counts(lg_hdr_histogram* dst, const lg_hdr_histogram* src);

/* 1 if a and b have the same layout and the same counts, else 0. */
int lg_hdr_equal(const lg_hdr_histogram* a, const lg_hdr_histogram* b);

/* Zeroes counts, total, min and max. */
void lg_hdr_reset(lg_hdr_histogram* h);

/* Value at percentile (0..100): the highest value equivalent to the bucket holding the
 * sample of nearest rank ceil(percentile / 100 * total) (HdrHistogram Java's definition;
 * percentile 0 gives the lowest equivalent value of the minimum).  0 when empty. */
int64_t lg_hdr_value_at_percentile(const lg_hdr_histogram* h, double percentile);

/* Values at each of count percentiles, in one pass; percentiles need not be sorted. */
void lg_hdr_values_at_percentiles(const lg_hdr_histogram* h, const double* percentiles,
                                  int64_t* values, int32_t count);

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

/* Index of the next non-zero count at or after index, or counts_len if none. */
int32_t lg_hdr_next_nonzero_index(const lg_hdr_histogram* h, int32_t index);

/* Bytes lg_hdr_encode_v2 may need for h: the payload header plus the worst-case counts. */
size_t lg_hdr_encode_v2_bound(const lg_hdr_histogram* h);

/* Writes h's uncompressed V2 payload (header, then zig-zag LEB128 counts with zero runs as
 * negative lengths) into buffer; returns the bytes written, or 0 if capacity is too small. */
size_t lg_hdr_encode_v2(const lg_hdr_histogram* h, uint8_t* buffer, size_t capacity);

/* The fields of a V2 payload header, as read by lg_hdr_decode_v2_header. */
typedef struct lg_hdr_v2_header
{
    uint32_t cookie;
    uint32_t payload_length;
    uint32_t normalizing_index_offset;
    uint32_t significant_figures;
    int64_t lowest_discernible_value;
    int64_t highest_trackable_value;
    double conversion_ratio;
} lg_hdr_v2_header;

/* Parses the 40-byte payload header; LG_HDR_ECORRUPT on a bad cookie, a layout
 * lg_hdr_counts_len_for refuses, more than max_counts_len counts, or a payload length that
 * no histogram of that layout could need. */
int lg_hdr_decode_v2_header(const uint8_t* buffer, lg_hdr_v2_header* header,
                            int64_t max_counts_len);

/* Progress of a chunked decode: the next count index, the lowest non-zero index above 0
 * (-1 until seen), the highest non-zero index (-1 until seen) and the running total. */
typedef struct lg_hdr_decode_state
{
    int32_t index;
    int32_t first_nonzero_above_zero;
    int32_t last_nonzero;
    int64_t total;
} lg_hdr_decode_state;

/* Starts a decode. */
void lg_hdr_decode_v2_start(lg_hdr_decode_state* state);

/* Decodes counts into h (empty, with the header's layout) chunk by chunk; returns LG_HDR_OK
 * with *consumed set to the bytes of whole words used (a word split across chunks is left
 * for the next call), or LG_HDR_ECORRUPT if the stream overruns the counts or the total
 * overflows.  Call lg_hdr_decode_v2_finish after the last chunk. */
int lg_hdr_decode_v2_counts(lg_hdr_histogram* h, const uint8_t* buffer, size_t length,
                            lg_hdr_decode_state* state, size_t* consumed);

/* Adds a whole counts stream (a V2 payload after its header, for dst's layout) to dst;
 * returns LG_HDR_OK, or LG_HDR_ECORRUPT with dst unchanged if the stream is malformed,
 * overruns the counts or overflows the total.  Merging without a decoded copy. */
int lg_hdr_decode_v2_add(lg_hdr_histogram* dst, const uint8_t* buffer, size_t length);

/* Sets total, min and max of h from a finished decode. */
void lg_hdr_decode_v2_finish(lg_hdr_histogram* h, const lg_hdr_decode_state* state);

/*
 * lg_hdr_recorder: interval recording without locks on the recording side.  Writers enter a
 * writer-reader phaser (one atomic increment), record into the active histogram with atomic
 * adds, and leave (one more increment).  The reader swaps in a fresh histogram and waits for
 * the writers of the previous phase to leave, so the histogram it takes holds every
 * recording that started before the swap and nothing is lost or counted twice.
 */
typedef struct lg_hdr_recorder
{
    int64_t start_epoch;
    int64_t even_end_epoch;
    int64_t odd_end_epoch;
    lg_hdr_histogram* active;
} lg_hdr_recorder;

/* Allocates a recorder whose histograms have the given layout; LG_HDR_* code. */
int lg_hdr_recorder_init(int64_t lowest_discernible_value, int64_t highest_trackable_value,
                         int significant_figures, lg_hdr_recorder** result);

/* Frees a recorder and its active histogram; NULL is allowed.  No writer may be inside. */
void lg_hdr_recorder_close(lg_hdr_recorder* r);

/* Atomic form of lg_hdr_record_unchecked for histograms shared between writers. */
static inline void lg_hdr_record_atomic(lg_hdr_histogram* h, int64_t value, int64_t count)
{
    int64_t seen;
    __atomic_fetch_add(&h->counts[lg_hdr_counts_index_for(h, value)], count, __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->total_count, count, __ATOMIC_RELAXED);
    seen = __atomic_load_n(&h->max_value, __ATOMIC_RELAXED);
    while (value > seen && !__atomic_compare_exchange_n(&h->max_value, &seen, value, 1,
                                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
    {
    }
    if (value != 0)
    {
        seen = __atomic_load_n(&h->min_value, __ATOMIC_RELAXED);
        while (value < seen && !__atomic_compare_exchange_n(&h->min_value, &seen, value, 1,
                                                            __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        {
        }
    }
}

/* Records value (clamped like lg_hdr_record_clamped) from any thread; returns 1 if clamped.
 * Wait-free: it never waits for the reader or for other writers. */
static inline int lg_hdr_recorder_record(lg_hdr_recorder* r, int64_t value, int64_t count)
{
    int clamped = 0;
    int64_t critical = __atomic_fetch_add(&r->start_epoch, 1, __ATOMIC_SEQ_CST);
    lg_hdr_histogram* h = __atomic_load_n(&r->active, __ATOMIC_SEQ_CST);
    if (value < 0)
    {
        value = 0;
        clamped = 1;
    }
    else if (value > h->highest_trackable_value)
    {
        value = h->highest_trackable_value;
        clamped = 1;
    }
    lg_hdr_record_atomic(h, value, count);
    __atomic_fetch_add(critical < 0 ? &r->odd_end_epoch : &r->even_end_epoch, 1,
                       __ATOMIC_SEQ_CST);
    return clamped;
}

/* Records an array of values from any thread; returns how many were clamped. */
int64_t lg_hdr_recorder_record_array(lg_hdr_recorder* r, const int64_t* values, int64_t length);

/* Swaps in the empty histogram replacement (same layout, caller-allocated) and returns the
 * previous one once every writer that may still be recording into it has left.  Only one
 * thread may call it at a time (the caller serialises readers). */
lg_hdr_histogram* lg_hdr_recorder_swap(lg_hdr_recorder* r, lg_hdr_histogram* replacement);

#endif
