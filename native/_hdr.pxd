# The histogram contract other Cython modules cimport (the engine records through it without
# the GIL).  Implemented in lg_hdr.c; wrapped for Python by _hdr.pyx.  The recording
# functions are static inline in lg_hdr.h, so a module that only records (record_nogil) needs
# no link against lg_hdr.c.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t

cdef extern from "lg_hdr.h" nogil:
    ctypedef struct lg_hdr_histogram:
        int64_t lowest_discernible_value
        int64_t highest_trackable_value
        int32_t significant_figures
        int32_t counts_len
        int64_t total_count
        int64_t* counts

    int LG_HDR_OK
    int LG_HDR_EINVAL
    int LG_HDR_ENOMEM
    int LG_HDR_ERANGE
    int LG_HDR_ELAYOUT
    int LG_HDR_ECORRUPT

    int lg_hdr_init(int64_t lowest, int64_t highest, int significant_figures,
                    lg_hdr_histogram** result)
    void lg_hdr_close(lg_hdr_histogram* h)
    int lg_hdr_record_values(lg_hdr_histogram* h, int64_t value, int64_t count)
    int lg_hdr_record_clamped(lg_hdr_histogram* h, int64_t value)
    int32_t lg_hdr_counts_index_for(const lg_hdr_histogram* h, int64_t value)
    int64_t lg_hdr_value_at_index(const lg_hdr_histogram* h, int32_t index)
    int lg_hdr_add(lg_hdr_histogram* dst, const lg_hdr_histogram* src)
    int lg_hdr_subtract(lg_hdr_histogram* dst, const lg_hdr_histogram* src)
    void lg_hdr_reset(lg_hdr_histogram* h)
    int64_t lg_hdr_value_at_percentile(const lg_hdr_histogram* h, double percentile)
    double lg_hdr_mean(const lg_hdr_histogram* h)
    double lg_hdr_stddev(const lg_hdr_histogram* h)
    int64_t lg_hdr_min(const lg_hdr_histogram* h)
    int64_t lg_hdr_max(const lg_hdr_histogram* h)
    int64_t lg_hdr_lowest_equivalent_value(const lg_hdr_histogram* h, int64_t value)
    int64_t lg_hdr_highest_equivalent_value(const lg_hdr_histogram* h, int64_t value)
    int64_t lg_hdr_median_equivalent_value(const lg_hdr_histogram* h, int64_t value)

    int LG_HDR_V2_COMPRESSED_COOKIE
    int LG_HDR_V2_ENCODING_COOKIE_BASE
    int LG_HDR_V2_COMPRESSED_COOKIE_BASE
    int LG_HDR_V2_HEADER_SIZE

    int64_t lg_hdr_counts_len_for(int64_t lowest, int64_t highest, int significant_figures)
    int64_t lg_hdr_record_array_clamped(lg_hdr_histogram* h, const int64_t* values,
                                        int64_t length)
    int lg_hdr_same_layout(const lg_hdr_histogram* a, const lg_hdr_histogram* b)
    int lg_hdr_copy_counts(lg_hdr_histogram* dst, const lg_hdr_histogram* src)
    int lg_hdr_equal(const lg_hdr_histogram* a, const lg_hdr_histogram* b)
    void lg_hdr_values_at_percentiles(const lg_hdr_histogram* h, const double* percentiles,
                                      int64_t* values, int32_t count)
    int32_t lg_hdr_next_nonzero_index(const lg_hdr_histogram* h, int32_t index)
    size_t lg_hdr_encode_v2_bound(const lg_hdr_histogram* h)
    size_t lg_hdr_encode_v2(const lg_hdr_histogram* h, uint8_t* buffer, size_t capacity)

    ctypedef struct lg_hdr_v2_header:
        uint32_t cookie
        uint32_t payload_length
        uint32_t significant_figures
        int64_t lowest_discernible_value
        int64_t highest_trackable_value

    int lg_hdr_decode_v2_header(const uint8_t* buffer, lg_hdr_v2_header* header,
                                int64_t max_counts_len)
    ctypedef struct lg_hdr_decode_state:
        int32_t index

    void lg_hdr_decode_v2_start(lg_hdr_decode_state* state)
    int lg_hdr_decode_v2_counts(lg_hdr_histogram* h, const uint8_t* buffer, size_t length,
                                lg_hdr_decode_state* state, size_t* consumed)
    int lg_hdr_decode_v2_add(lg_hdr_histogram* dst, const uint8_t* buffer, size_t length)
    void lg_hdr_decode_v2_finish(lg_hdr_histogram* h, const lg_hdr_decode_state* state)

    ctypedef struct lg_hdr_recorder:
        lg_hdr_histogram* active

    int lg_hdr_recorder_init(int64_t lowest, int64_t highest, int significant_figures,
                             lg_hdr_recorder** result)
    void lg_hdr_recorder_close(lg_hdr_recorder* r)
    int lg_hdr_recorder_record(lg_hdr_recorder* r, int64_t value, int64_t count)
    int64_t lg_hdr_recorder_record_array(lg_hdr_recorder* r, const int64_t* values,
                                         int64_t length)
    lg_hdr_histogram* lg_hdr_recorder_swap(lg_hdr_recorder* r, lg_hdr_histogram* replacement)


cdef class Histogram:
    cdef lg_hdr_histogram* h
    # Interval bounds in epoch seconds and the interval log tag; not part of equality.
    cdef public double start_time
    cdef public double end_time
    cdef public object tag
    cdef _merge_times(self, Histogram other)
    # Records without the GIL; clamps into range so no sample is lost.  Returns 1 if clamped.
    cdef inline int record_nogil(self, int64_t value) noexcept nogil:
        return lg_hdr_record_clamped(self.h, value)


cdef class IntervalRecorder:
    cdef lg_hdr_recorder* r
    cdef object _snapshot_lock
    cdef double _interval_start
    # Records from any thread without the GIL; wait-free, clamps like Histogram.record_nogil.
    cdef inline int record_nogil(self, int64_t value) noexcept nogil:
        return lg_hdr_recorder_record(self.r, value, 1)
