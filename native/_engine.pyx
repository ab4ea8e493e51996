# distutils: sources = native/lg_hdr.c native/lg_hdr_codec.c native/lg_hdr_recorder.c native/lg_pacer.c native/lg_harvest.c native/lg_http.c
"""The open-loop HTTP/1.1 engine's hot path, one instance per worker process.

Pacing: a timerfd armed with the absolute CLOCK_MONOTONIC instant of the next arrival (plus
the pacing window, zero by default, minus the lower quartile of the wake-up latency, measured
as it runs) is watched by uvloop like a socket; on wake-up every arrival that is due goes
out, and one due within SPIN_NS is waited for by spinning rather than by another sleep.
Re-arming a timerfd clears its expiry count, so the descriptor is only read when it is not
re-armed (one system call per wake-up saved).  When the next send is near (HARVEST_WAKE_NS
plus the window) and uvloop has nothing to do that timing depends on, the callback sleeps in
place (clock_nanosleep) instead, for up to SLICE_NS: at high rates a trip through the event
loop per send costs as much CPU as the wake-up itself.  Each arrival picks a target by
smooth weighted round-robin, takes an idle keep-alive connection, and if none is idle it
queues (counted late) while a new connection opens, up to the target's cap: the schedule
never waits for the pool.  Requests are written to the socket directly while its transport
holds nothing.

Responses: in open loop, uvloop's reading of plain-HTTP sockets is paused and the engine
reads them itself (lg_harvest.h): at the wake-up for the next send when that is near, else
when uvloop reports them readable.  Completion is the kernel's receive timestamp, so neither
the collection delay nor the generator's own scheduling delay inflates latency.  TLS and
closed-loop connections are read by uvloop as usual.  A whole response of the common shape
is recognised in C (lg_http.h); everything else goes through llhttp (httptools).  A response
to HEAD ends at its headers.

Recording: latency (completion - intended), service time (completion - send) and schedule
lag (send - intended), in microseconds, into per-target histograms through
``Histogram.record_nogil``; outcomes are counters indexed like ``Outcome``.  A request that was
sent records all three; one that never got a connection records latency only; NOT_SENT
records nothing.  Python takes the interval's histograms and counters with ``take_interval``.
"""
import asyncio
import os

import httptools

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.errno cimport EAGAIN, EINTR
from libc.stdint cimport int64_t
from libc.string cimport memcmp, memcpy

from loadgate.native._hdr cimport Histogram

cdef extern from "lg_harvest.h" nogil:
    int lg_harvest_open()
    int lg_harvest_watch(int epoll_fd, int fd)
    int lg_harvest_unwatch(int epoll_fd, int fd)
    int lg_harvest_ready(int epoll_fd, int* ready_fds, int max)
    Py_ssize_t lg_harvest_recv(int fd, char* buffer, size_t length, int64_t* realtime_ns)
    Py_ssize_t lg_harvest_send(int fd, const char* buffer, size_t length)
    int64_t lg_harvest_realtime_offset_ns()

cdef extern from "lg_http.h" nogil:
    int lg_http_whole_response(const char* buffer, size_t length, int* keep_alive)

cdef extern from "lg_pacer.h" nogil:
    int64_t lg_pacer_now_ns()
    int lg_pacer_open()
    int lg_pacer_arm(int fd, int64_t deadline_ns)
    int lg_pacer_disarm(int fd)
    int64_t lg_pacer_consume(int fd)
    int64_t lg_pacer_spin_until(int64_t deadline_ns)
    int64_t lg_pacer_sleep_until(int64_t deadline_ns)
    int lg_pacer_tighten_timer_slack()

# A wake-up from epoll costs about 15 us of CPU on a virtual machine; spinning through a
# shorter gap is cheaper and exact.
DEF SPIN_NS = 15000
# Bounds and step of the early wake-up that absorbs the timer's own latency.
DEF EARLY_MAX_NS = 100000
DEF EARLY_STEP_NS = 500
# Batches from the schedule cursor are sized to cover about this long, so a live rate change
# takes effect within it while the cursor's cost (tens of microseconds of numpy per batch)
# stays negligible at high rates.
DEF BATCH_SPAN_MIN_NS = 100000000
DEF BATCH_SPAN_MAX_NS = 400000000
DEF BATCH_MAX = 4096
DEF UNSCHEDULED_BATCH = 65536
# Responses get a wake-up of their own only when the next send is further away than this
# plus the pacing window; closer, they are collected at that send's wake-up.
DEF HARVEST_WAKE_NS = 250000
# Within one timer callback the engine sleeps in place (clock_nanosleep) for sends closer than
# that, up to this long before it returns to uvloop: a trip through the event loop costs
# about as much CPU as the wake-up itself, and at high rates there is one per send.
DEF SLICE_NS = 5000000
DEF HARVEST_BUFFER = 65536
DEF HARVEST_READY_MAX = 256
DEF HARVEST_MAX_AGE_NS = 1000000000
# A closed loop whose target refuses connections would otherwise spin; it retries after this.
DEF CLOSED_RETRY_S = 0.01

_CONNECT_FAILURES = (OSError, asyncio.TimeoutError, ValueError)


def whole_response(bytes data):
    """(status, keep_alive) when ``data`` is exactly one complete response of the shape the
    harvest reads without the general parser (lg_http.h), else None."""
    cdef int keep_alive = 0
    cdef int status = lg_http_whole_response(data, len(data), &keep_alive)
    return None if status < 0 else (status, bool(keep_alive))


def monotonic_ns():
    """CLOCK_MONOTONIC in ns, the clock the engine paces on."""
    return lg_pacer_now_ns()


cdef inline int outcome_for_status(int status) noexcept:
    if 200 <= status < 600:
        return status // 100 - 2
    return LG_PARSE_ERROR


cdef inline int64_t micros(int64_t ns) noexcept:
    return ns // 1000 if ns > 0 else 0


include "_engine_connection.pxi"


cdef class WorkerEngine:
    """Runs one shard of a schedule against its targets on the running uvloop."""

    def __init__(self, loop, list targets, schedule, double timeout_s,
                 double pacing_window_s=0.0):
        self.loop = loop
        self.targets = targets
        self.busy = set()
        self.open_loop = schedule.is_open_loop
        self.cursor = schedule.cursor() if self.open_loop else None
        self.closed_users = 0 if self.open_loop else schedule.concurrency
        self.think_time_s = 0.0 if self.open_loop else schedule.think_time_s
        self.end_mono = <int64_t> (schedule.duration_s * 1e9)
        self.timeout_ns = <int64_t> (timeout_s * 1e9)
        self.window_ns = <int64_t> (pacing_window_s * 1e9)
        self.timer_fd = -1
        self.early_ns = self.wake_target = 0
        self.batch_size = 16
        self.batch_pos = self.batch_len = 0
        self.generating = self.started = self.users_started = self.stopped = False
        self.intended = self.dispatched = self.unscheduled = 0
        self.on_drained = None
        self.sweep_handle = None
        self.harvested = {}
        self.harvest_watched = False
        self.rx_ns = 0
        self.harvest_fd = -1
        self.queued = set()
        self.harvest_all = self.open_loop and all(
            (<TargetState> target).ssl_context is None for target in targets)
        if self.open_loop:
            fd = lg_harvest_open()
            if fd < 0:
                raise OSError(-fd, "epoll_create1 failed")
            self.harvest_fd = fd
            self.recv_buffer = <char*> PyMem_Malloc(HARVEST_BUFFER)
            if self.recv_buffer == NULL:
                raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.recv_buffer)

    async def preconnect(self, Py_ssize_t per_target):
        """Opens up to ``per_target`` connections to every target; failures here count nothing
        (no request was waiting), the run's own connects will count them."""
        tasks = []
        for target in self.targets:
            for _ in range(min(per_target, (<TargetState> target).max_connections)):
                tasks.append(self.open_connection(target))
        await asyncio.gather(*tasks)

    def open_connection(self, TargetState target):
        target.connecting += 1
        return self.loop.create_task(self._connect(target))

    async def _connect(self, TargetState target):
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: Connection(self, target), target.host,
                                            target.port, ssl=target.ssl_context,
                                            server_hostname=target.server_hostname),
                self.timeout_ns / 1e9)
        except _CONNECT_FAILURES:
            target.connecting -= 1
            self.connect_failed(target)

    def start(self, int64_t start_mono, on_drained):
        """Begins the schedule at the monotonic instant ``start_mono``; ``on_drained()`` is
        called once generation has ended and nothing is outstanding."""
        self.start_mono = start_mono
        self.end_mono += start_mono
        self.on_drained = on_drained
        self.generating = self.started = True
        lg_pacer_tighten_timer_slack()
        fd = lg_pacer_open()
        if fd < 0:
            raise OSError(-fd, "timerfd_create failed")
        self.timer_fd = fd
        self.loop.add_reader(fd, self._on_timer)
        lg_pacer_arm(fd, start_mono)
        self.watch_harvest(True)
        self._schedule_sweep()

    cdef void watch_harvest(self, bint wanted) except *:
        if self.harvest_fd < 0 or wanted == self.harvest_watched:
            return
        if wanted:
            self.loop.add_reader(self.harvest_fd, self._on_harvest_ready)
        else:
            self.loop.remove_reader(self.harvest_fd)
        self.harvest_watched = wanted

    def _on_harvest_ready(self):
        self.harvest()

    cdef void harvest(self) except *:
        cdef int count, i, fd, status, keep_alive
        cdef Py_ssize_t received
        cdef int64_t realtime_ns, offset, now, arrived
        cdef Connection conn
        if self.harvest_fd < 0 or not self.harvested:
            return
        count = lg_harvest_ready(self.harvest_fd, self.ready_fds, HARVEST_READY_MAX)
        if count <= 0:
            return
        offset = lg_harvest_realtime_offset_ns()
        now = lg_pacer_now_ns()
        for i in range(count):
            fd = self.ready_fds[i]
            conn = self.harvested.get(fd)
            if conn is None:
                lg_harvest_unwatch(self.harvest_fd, fd)
                continue
            while conn.fd == fd:
                received = lg_harvest_recv(fd, self.recv_buffer, HARVEST_BUFFER, &realtime_ns)
                if received > 0:
                    arrived = realtime_ns - offset
                    # A stepped wall clock would put the arrival in the future or far past.
                    if not now - HARVEST_MAX_AGE_NS <= arrived <= now:
                        arrived = now
                    if conn.busy and not conn.mid_message and not conn.head:
                        status = lg_http_whole_response(self.recv_buffer, received, &keep_alive)
                        if status >= 0:
                            conn.target.bytes_read += received
                            conn.complete(status, keep_alive, arrived)
                            break
                    conn.received(PyBytes_FromStringAndSize(self.recv_buffer, received), arrived)
                    if received < HARVEST_BUFFER:
                        break
                elif received == -EAGAIN or received == -EINTR:
                    break
                else:
                    conn.peer_closed()

    def _schedule_sweep(self):
        # A tenth of the timeout keeps a timeout's overshoot within 10 %, at a bounded cost.
        interval = min(max(self.timeout_ns / 1e10, 0.005), 0.1)
        self.sweep_handle = self.loop.call_later(interval, self._sweep)

    def _on_timer(self):
        cdef int64_t now, due, wake, slice_end
        if not self.generating:
            lg_pacer_consume(self.timer_fd)
            return
        now = lg_pacer_now_ns()
        self.track_wake(now)
        if not self.open_loop:
            if now >= self.end_mono:
                self.end_generation()
            elif not self.users_started:
                self.users_started = True
                for _ in range(self.closed_users):
                    self.dispatch(now, now)
                lg_pacer_arm(self.timer_fd, self.end_mono)
            else:
                lg_pacer_consume(self.timer_fd)
            return
        slice_end = now + SLICE_NS
        while self.generating:
            if self.batch_pos >= self.batch_len and not self.refill():
                self.end_generation()
                return
            due = self.start_mono + self.batch[self.batch_pos]
            # With a pacing window nothing spins: the window already allows that much lag.
            if due > now and (self.window_ns > 0 or due - self.early_ns > now + SPIN_NS):
                # With a pacing window the wake-up comes up to a window late and takes every
                # arrival due by then: fewer wake-ups, lag up to the window (wrk2 uses 1 ms).
                self.wake_target = due + self.window_ns
                wake = self.wake_target - self.early_ns
                # Responses are read after the sends, which should not wait for them.
                self.harvest()
                if (wake < slice_end and wake - now <= HARVEST_WAKE_NS + self.window_ns
                        and self.may_sleep()):
                    with nogil:
                        now = lg_pacer_sleep_until(wake)
                    self.track_wake(now)
                    continue
                lg_pacer_arm(self.timer_fd, wake)
                self.watch_harvest(due - now > HARVEST_WAKE_NS + self.window_ns)
                return
            if due > now:
                now = lg_pacer_spin_until(due)
            self.batch_pos += 1
            self.dispatch(due, now)
            now = lg_pacer_now_ns()

    cdef void track_wake(self, int64_t now) noexcept:
        if self.wake_target and not self.window_ns:
            # Track the lower quartile of the wake-up latency (three steps down for each one
            # up): arming that much early lands a quarter of the wake-ups just before their
            # send (a short spin) and the rest just after it (a short lag).
            if now < self.wake_target:
                self.early_ns = max(self.early_ns - 3 * EARLY_STEP_NS, 0)
            else:
                self.early_ns = min(self.early_ns + EARLY_STEP_NS, EARLY_MAX_NS)
        self.wake_target = 0

    cdef bint may_sleep(self) except -1:
        cdef TargetState target
        cdef Connection conn
        # While the engine sleeps here uvloop runs nothing: no answer may depend on it for its
        # timing, no connection may be opening for a queued request, no write may be queued.
        if not self.harvest_all:
            return False
        for target in self.targets:
            if target.pending.length or target.connecting:
                return False
        if self.queued:
            for conn in list(self.queued):
                if conn.closed or conn.transport.get_write_buffer_size() == 0:
                    conn.queued = False
                    self.queued.discard(conn)
        return not self.queued

    cdef bint refill(self) except -1:
        batch = self.cursor.next_batch(self.batch_size)
        self.batch_len = len(batch)
        self.batch_pos = 0
        if self.batch_len == 0:
            return False
        self.batch = batch
        span = self.batch[self.batch_len - 1] - self.batch[0]
        if span < BATCH_SPAN_MIN_NS and self.batch_size < BATCH_MAX:
            self.batch_size *= 2
        elif span > BATCH_SPAN_MAX_NS and self.batch_size > 1:
            self.batch_size //= 2
        return True

    cdef TargetState pick_target(self):
        # Smooth weighted round-robin: exact shares over any window, no randomness to seed.
        cdef TargetState target, best = None
        cdef double total = 0.0
        for target in self.targets:
            if target.weight <= 0.0:
                continue
            target.credit += target.weight
            total += target.weight
            if best is None or target.credit > best.credit:
                best = target
        best.credit -= total
        return best

    cdef void dispatch(self, int64_t intended, int64_t now) except *:
        cdef TargetState target = self.pick_target()
        cdef Connection conn
        self.intended += 1
        self.dispatched += 1
        if not target.idle:
            # Answers not read yet may free a connection.
            self.harvest()
        if target.idle:
            conn = target.idle.pop()
            conn.send(intended, now)
        else:
            target.late += 1
            target.pending.push(intended)
            self.ensure_capacity(target)

    cdef void connection_free(self, Connection conn) except *:
        cdef TargetState target = conn.target
        if target.pending.length:
            conn.send(target.pending.pop(), lg_pacer_now_ns())
            return
        target.idle.append(conn)
        self.check_drained()

    cdef void ensure_capacity(self, TargetState target) except *:
        while (target.pending.length > target.connecting
               and target.open_count + target.connecting < target.max_connections):
            self.open_connection(target)

    cdef void connect_failed(self, TargetState target) except *:
        # The request waiting longest for this connection gets the error; the others keep
        # waiting for connections still opening or busy ones coming free.
        if target.pending.length > target.connecting:
            self.finish(target, LG_CONNECT_ERROR, target.pending.pop(), 0, lg_pacer_now_ns())
        self.ensure_capacity(target)

    cdef void finish(self, TargetState target, int outcome, int64_t intended, int64_t sent_at,
                     int64_t now) except *:
        target.counts[outcome] += 1
        if outcome != LG_NOT_SENT:
            target.latency.record_nogil(micros(now - intended))
        if not self.open_loop and self.generating and outcome != LG_NOT_SENT:
            if outcome == LG_CONNECT_ERROR:
                self.loop.call_later(CLOSED_RETRY_S, self._next_user_request)
            elif self.think_time_s > 0.0:
                self.loop.call_later(self.think_time_s, self._next_user_request)
            else:
                self.dispatch(now, now)
        self.check_drained()

    def _next_user_request(self):
        cdef int64_t now
        if self.generating:
            now = lg_pacer_now_ns()
            self.dispatch(now, now)

    cdef void check_drained(self) except *:
        cdef TargetState target
        if self.generating or self.on_drained is None or self.busy:
            return
        for target in self.targets:
            if target.pending.length or target.connecting:
                return
        callback = self.on_drained
        self.on_drained = None
        callback()

    cdef void end_generation(self) except *:
        self.generating = False
        if self.timer_fd >= 0:
            lg_pacer_disarm(self.timer_fd)
        self.watch_harvest(True)
        self.check_drained()

    def stop(self):
        """Stops generating now (or before it started); arrivals not yet due are counted
        NOT_SENT, each charged to the target the weighted split gives it."""
        cdef Py_ssize_t remaining
        cdef TargetState target
        if self.stopped:
            return
        self.stopped = True
        if self.open_loop:
            remaining = self.batch_len - self.batch_pos
            self.batch_pos = self.batch_len
            while True:
                for _ in range(remaining):
                    target = self.pick_target()
                    target.counts[LG_NOT_SENT] += 1
                self.unscheduled += remaining
                remaining = len(self.cursor.next_batch(UNSCHEDULED_BATCH))
                if remaining == 0:
                    break
        self.end_generation()

    def set_rate_scale(self, double factor):
        """From now on arrivals come ``factor`` times as often as the schedule says."""
        cdef int64_t offset = lg_pacer_now_ns() - self.start_mono if self.started else 0
        if self.open_loop:
            self.cursor.set_rate_scale(factor, max(offset, 0))

    def set_weights(self, dict weights):
        """New traffic shares by target name (names not given keep theirs)."""
        cdef TargetState target
        for target in self.targets:
            if target.name in weights:
                target.weight = float(weights[target.name])
                target.credit = 0.0

    def _sweep(self):
        cdef int64_t now = lg_pacer_now_ns()
        cdef int64_t deadline = now - self.timeout_ns
        cdef Connection conn
        cdef TargetState target
        self.harvest()
        for conn in [c for c in self.busy if (<Connection> c).sent_at <= deadline]:
            conn.end_request(LG_TIMEOUT, now)
            conn.abort()
        for target in self.targets:
            while target.pending.length and target.pending.peek() <= deadline:
                self.finish(target, LG_TIMEOUT, target.pending.pop(), 0, now)
        if self.generating or self.on_drained is not None:
            self._schedule_sweep()

    def abandon(self):
        """Ends the run now: requests in flight are recorded as TIMEOUT with their elapsed
        latency, queued ones as NOT_SENT; every connection is closed."""
        cdef int64_t now = lg_pacer_now_ns()
        cdef Connection conn
        cdef TargetState target
        self.stop()
        self.on_drained = None
        for conn in list(self.busy):
            conn.end_request(LG_TIMEOUT, now)
        for target in self.targets:
            while target.pending.length:
                target.pending.pop()
                target.counts[LG_NOT_SENT] += 1
        self.close()

    def close(self):
        """Closes every connection and the pacer; the engine cannot be started again."""
        cdef TargetState target
        if self.sweep_handle is not None:
            self.sweep_handle.cancel()
            self.sweep_handle = None
        if self.timer_fd >= 0:
            self.loop.remove_reader(self.timer_fd)
            os.close(self.timer_fd)
            self.timer_fd = -1
        self.watch_harvest(False)
        for target in self.targets:
            for conn in target.idle:
                conn.abort()
            target.idle = []
        for conn in list(self.busy):
            conn.abort()
        if self.harvest_fd >= 0:
            os.close(self.harvest_fd)
            self.harvest_fd = -1

    def take_interval(self):
        """(intended, [(name, latency, service_time, schedule_lag, counts, sent, late,
        bytes_read)], open_connections) accumulated since the last call, reset to zero."""
        cdef TargetState target
        intended = self.intended
        self.intended = 0
        per_target = [(target.name,) + target.take() for target in self.targets]
        return intended, per_target, sum(t.open_connections for t in self.targets)

    @property
    def scheduled(self):
        """Arrivals this worker dispatched plus those it gave up unsent at stop."""
        return self.dispatched + self.unscheduled

    @property
    def is_generating(self):
        return self.generating
