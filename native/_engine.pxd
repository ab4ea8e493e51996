# The load engine's hot path: one WorkerEngine per worker process, on that process's uvloop.
# Python (engine_worker.py) drives it: build, preconnect, start, take_interval, stop.  Nothing
# per request crosses into Python except uvloop's own protocol callbacks.
from libc.stdint cimport int64_t
from loadgate.native._hdr cimport Histogram

# Indices of the per-target counters; the same numbers as loadgate.native.outcomes.Outcome.
cdef enum:
    LG_OK_2XX = 0
    LG_REDIRECT_3XX = 1
    LG_CLIENT_4XX = 2
    LG_SERVER_5XX = 3
    LG_CONNECT_ERROR = 4
    LG_TIMEOUT = 5
    LG_RESET = 6
    LG_PARSE_ERROR = 7
    LG_NOT_SENT = 8
    LG_OUTCOME_COUNT = 9


# Intended send instants (absolute monotonic ns) waiting for a free connection, oldest first.
cdef class PendingQueue:
    cdef int64_t* items
    cdef Py_ssize_t capacity, head, length
    cdef int push(self, int64_t intended) except -1
    cdef int64_t pop(self) noexcept
    cdef int64_t peek(self) noexcept


# One target as one worker sees it: pool, queue, histograms (us) and outcome counters.
cdef class TargetState:
    cdef readonly str name
    cdef readonly str host
    cdef readonly int port
    cdef object ssl_context
    cdef object server_hostname
    cdef list requests
    cdef Py_ssize_t next_request
    cdef list idle
    cdef Py_ssize_t open_count, connecting, max_connections
    cdef PendingQueue pending
    cdef Histogram latency, service_time, schedule_lag
    cdef int64_t counts[LG_OUTCOME_COUNT]
    cdef int64_t sent, late, bytes_read
    cdef double weight, credit
    # The next raw request of the rotation.
    cdef bytes next_request_bytes(self)


# One keep-alive connection (an asyncio protocol); at most one request in flight.
cdef class Connection:
    cdef WorkerEngine engine
    cdef TargetState target
    cdef object transport
    cdef object parser
    cdef bint busy, closed
    # The transport holds part of a request: later writes must go through it too.
    cdef bint queued
    # The general parser holds part of a response: later bytes must go to it too.
    cdef bint mid_message
    # The request in flight is HEAD: its response ends at the headers.  head_status is set
    # (with head_keep_alive) once they are read, until the request completes.
    cdef bint head, head_keep_alive
    cdef int head_status
    # The socket while its answers are harvested (lg_harvest.h), else -1.
    cdef int fd
    cdef int64_t intended, sent_at
    # Writes the next request for an arrival due at ``intended``; the engine calls it.
    cdef void send(self, int64_t intended, int64_t now) except *
    # Writes a request's bytes: straight to a harvested socket, else through the transport.
    cdef void write(self, bytes request) except *
    # Feeds bytes that arrived at ``rx_ns`` (monotonic) to the response parser.
    cdef void received(self, bytes data, int64_t rx_ns) except *
    # The response to the request in flight is complete: records it and frees or closes.
    cdef void complete(self, int status, bint keep_alive, int64_t now) except *
    # The harvest saw end of stream or an error: the request in flight is a RESET.
    cdef void peer_closed(self) except *
    # Closes (or aborts) the transport, leaving the harvest first.
    cdef void close_transport(self, bint abort) except *
    # Ends the request in flight with ``outcome`` at ``now``, recording service time.
    cdef void end_request(self, int outcome, int64_t now) except *


# One shard of a schedule against its targets on the worker's uvloop.
cdef class WorkerEngine:
    cdef object loop
    cdef list targets
    cdef set busy
    cdef object cursor
    cdef int64_t[::1] batch
    cdef Py_ssize_t batch_pos, batch_len, batch_size
    cdef int timer_fd
    cdef int64_t start_mono, end_mono, timeout_ns, window_ns
    cdef int64_t early_ns, wake_target
    # Every answer is read by the harvest (plain HTTP, open loop): the engine may then sleep
    # in place between close sends (see may_sleep).
    cdef bint harvest_all
    # Connections whose transport holds bytes a direct write could not take.
    cdef set queued
    cdef bint open_loop, generating, started, users_started, stopped
    cdef Py_ssize_t closed_users
    cdef double think_time_s
    cdef int64_t intended, dispatched, unscheduled
    cdef object on_drained
    cdef object sweep_handle
    # Responses read without a wake-up of their own (lg_harvest.h): fd -> Connection.
    cdef int harvest_fd
    cdef dict harvested
    cdef bint harvest_watched
    cdef int64_t rx_ns
    cdef char* recv_buffer
    cdef int ready_fds[256]
    # Lets uvloop wake the engine for answers (wanted) or leaves them to the pacer.
    cdef void watch_harvest(self, bint wanted) except *
    # Reads every answer that has arrived, with its kernel receive time.
    cdef void harvest(self) except *
    # Adapts the early wake-up to where the last wake-up landed against its target.
    cdef void track_wake(self, int64_t now) noexcept
    # True when sleeping inside the timer callback cannot delay anything uvloop would do.
    cdef bint may_sleep(self) except -1
    # Loads the next batch of arrivals; False once the schedule is exhausted.
    cdef bint refill(self) except -1
    # No more arrivals: what is in flight drains, then on_drained is called.
    cdef void end_generation(self) except *
    # A connect failed: the longest-waiting request without a connect of its own fails.
    cdef void connect_failed(self, TargetState target) except *
    # The next target of the weighted split (smooth weighted round-robin).
    cdef TargetState pick_target(self)
    # Sends an arrival due at ``intended`` now, or queues it (late) for a free connection.
    cdef void dispatch(self, int64_t intended, int64_t now) except *
    # A connection is free: it takes the oldest queued request or goes idle.
    cdef void connection_free(self, Connection conn) except *
    # Opens connections for queued requests, up to the target's cap.
    cdef void ensure_capacity(self, TargetState target) except *
    # Records one request's outcome and latency; a closed loop issues its next request.
    cdef void finish(self, TargetState target, int outcome, int64_t intended, int64_t sent_at,
                     int64_t now) except *
    # Calls on_drained once generation has ended and nothing is outstanding.
    cdef void check_drained(self) except *
