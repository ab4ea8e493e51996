# The histogram contract other Cython modules cimport (the engine records through it without
# the GIL).  Implemented in lg_hdr.c; wrapped for Python by _hdr.pyx.
from libc.stdint cimport int32_t, int64_t

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


cdef class Histogram:
    cdef lg_hdr_histogram* h
    # Records without the GIL; clamps into range so no sample is lost.  Returns 1 if clamped.
    cdef inline int record_nogil(self, int64_t value) noexcept nogil:
        return lg_hdr_record_clamped(self.h, value)
