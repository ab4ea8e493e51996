/*
 * lg_hdr_recorder: the interval recorder (a writer-reader phaser over two histograms).  See
 * lg_hdr.h for the contract.
 */
#include <sched.h>
#include <stdlib.h>

#include "lg_hdr.h"

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
