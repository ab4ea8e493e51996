# Included by _engine.pyx (one extension module, split for reading): the per-target state
# and the connection protocol.  Declared in _engine.pxd.

cdef class PendingQueue:
    """A growable ring of int64 instants; push at the tail, pop and peek at the head."""

    def __cinit__(self):
        self.capacity = 64
        self.items = <int64_t*> PyMem_Malloc(self.capacity * sizeof(int64_t))
        if self.items == NULL:
            raise MemoryError()
        self.head = 0
        self.length = 0

    def __dealloc__(self):
        PyMem_Free(self.items)

    cdef int push(self, int64_t intended) except -1:
        cdef int64_t* grown
        if self.length == self.capacity:
            grown = <int64_t*> PyMem_Realloc(self.items, 2 * self.capacity * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            # Unwrap: the part before head moves to just after the old end.
            memcpy(grown + self.capacity, grown, self.head * sizeof(int64_t))
            self.items = grown
            self.capacity *= 2
        self.items[(self.head + self.length) % self.capacity] = intended
        self.length += 1
        return 0

    cdef int64_t pop(self) noexcept:
        cdef int64_t value = self.items[self.head]
        self.head = (self.head + 1) % self.capacity
        self.length -= 1
        return value

    cdef int64_t peek(self) noexcept:
        return self.items[self.head]


cdef class TargetState:
    """One target as a worker sees it: its pool, queue, histograms and counters."""

    def __init__(self, str name, str host, int port, ssl_context, list requests,
                 Py_ssize_t max_connections, double weight, server_hostname=None):
        self.name = name
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        # ``host`` may be an address pinned after an allowlist check; TLS still verifies the
        # name the URL gave.
        self.server_hostname = (server_hostname or host) if ssl_context is not None else None
        self.requests = requests
        self.next_request = 0
        self.idle = []
        self.open_count = 0
        self.connecting = 0
        self.max_connections = max_connections
        self.pending = PendingQueue()
        self.latency = Histogram()
        self.service_time = Histogram()
        self.schedule_lag = Histogram()
        self.sent = self.late = self.bytes_read = 0
        for i in range(LG_OUTCOME_COUNT):
            self.counts[i] = 0
        self.weight = weight
        self.credit = 0.0

    cdef bytes next_request_bytes(self):
        cdef bytes request = self.requests[self.next_request]
        self.next_request += 1
        if self.next_request == len(self.requests):
            self.next_request = 0
        return request

    def take(self):
        """This interval's (latency, service_time, schedule_lag, counts, sent, late,
        bytes_read), leaving fresh ones in place."""
        taken = (self.latency, self.service_time, self.schedule_lag,
                 [self.counts[i] for i in range(LG_OUTCOME_COUNT)],
                 self.sent, self.late, self.bytes_read)
        self.latency = Histogram()
        self.service_time = Histogram()
        self.schedule_lag = Histogram()
        self.sent = self.late = self.bytes_read = 0
        for i in range(LG_OUTCOME_COUNT):
            self.counts[i] = 0
        return taken

    @property
    def open_connections(self):
        return self.open_count


cdef class Connection:
    """An asyncio protocol for one keep-alive connection; at most one request in flight."""

    def __cinit__(self, WorkerEngine engine, TargetState target):
        self.engine = engine
        self.target = target
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.closed = False
        self.queued = False
        self.mid_message = False
        self.head = False
        self.head_status = 0
        self.fd = -1

    cdef void send(self, int64_t intended, int64_t now) except *:
        cdef TargetState target = self.target
        self.busy = True
        self.intended = intended
        self.sent_at = now
        self.engine.busy.add(self)
        target.sent += 1
        target.schedule_lag.record_nogil(micros(now - intended))
        request = target.next_request_bytes()
        self.head = len(request) > 5 and memcmp(<const char*> request, b"HEAD ", 5) == 0
        self.write(request)

    cdef void write(self, bytes request) except *:
        cdef Py_ssize_t sent
        # A harvested socket with nothing queued is written directly: uvloop's write path
        # costs more than the send itself.  What does not fit goes to the transport, which
        # then owns the ordering until its buffer drains.
        if self.queued and self.transport.get_write_buffer_size() == 0:
            self.queued = False
            self.engine.queued.discard(self)
        if self.fd >= 0 and not self.queued:
            sent = lg_harvest_send(self.fd, request, len(request))
            if sent == len(request):
                return
            if sent == -EAGAIN or sent == -EINTR:
                sent = 0
            elif sent < 0:
                self.peer_closed()
                return
            request = request[sent:]
        self.transport.write(request)
        if self.fd >= 0 and self.transport.get_write_buffer_size():
            self.queued = True
            self.engine.queued.add(self)

    cdef void end_request(self, int outcome, int64_t now) except *:
        self.busy = False
        self.engine.busy.discard(self)
        self.target.service_time.record_nogil(micros(now - self.sent_at))
        self.engine.finish(self.target, outcome, self.intended, self.sent_at, now)

    cdef void close_transport(self, bint abort) except *:
        self.closed = True
        if self.fd >= 0:
            # Before the socket closes: its number may be reused by the next connection.
            lg_harvest_unwatch(self.engine.harvest_fd, self.fd)
            del self.engine.harvested[self.fd]
            self.fd = -1
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def abort(self):
        self.close_transport(True)

    def connection_made(self, transport):
        self.transport = transport
        self.target.connecting -= 1
        self.target.open_count += 1
        if self.engine.harvest_fd >= 0 and self.target.ssl_context is None:
            fd = transport.get_extra_info("socket").fileno()
            if lg_harvest_watch(self.engine.harvest_fd, fd) == 0:
                # uvloop starts reading once connection_made returns, so pausing here would
                # be undone; until the pause runs, what uvloop reads takes the usual path.
                self.engine.loop.call_soon(transport.pause_reading)
                self.fd = fd
                self.engine.harvested[fd] = self
            else:
                # uvloop reads this one and times its answers: the engine must not sleep.
                self.engine.harvest_all = False
        self.engine.connection_free(self)

    cdef void peer_closed(self) except *:
        if self.busy:
            self.end_request(LG_RESET, lg_pacer_now_ns())
        self.close_transport(True)

    def data_received(self, bytes data):
        self.received(data, lg_pacer_now_ns())

    cdef void received(self, bytes data, int64_t rx_ns) except *:
        cdef int status, keep_alive
        self.engine.rx_ns = rx_ns
        self.target.bytes_read += len(data)
        if not self.busy:
            # Bytes nobody asked for: the stream can no longer be trusted.
            self.abort()
            return
        if not self.mid_message and not self.head:
            status = lg_http_whole_response(data, len(data), &keep_alive)
            if status >= 0:
                self.complete(status, keep_alive, rx_ns)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.busy:
                self.end_request(LG_PARSE_ERROR, lg_pacer_now_ns())
            self.abort()
            return
        if self.head_status:
            # The parser still waits for the body the headers announced; a fresh one reads
            # the next response, and a body the server sent anyway is an error there.
            self.parser = httptools.HttpResponseParser(self)
            self.mid_message = False
            self.complete(self.head_status, self.head_keep_alive, rx_ns)

    def on_message_begin(self):
        self.mid_message = True

    def on_headers_complete(self):
        cdef int status
        if self.head:
            status = self.parser.get_status_code()
            if status >= 200:
                # A response to HEAD ends with its headers whatever Content-Length says; the
                # request completes once the parser returns (see received).
                self.head_status = status
                self.head_keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self):
        cdef int status = self.parser.get_status_code()
        self.mid_message = False
        if status >= 200 and not self.head:
            self.complete(status, self.parser.should_keep_alive(), self.engine.rx_ns)

    cdef void complete(self, int status, bint keep_alive, int64_t now) except *:
        # Taken before the connection is handed on: a queued request may reuse it at once.
        cdef int64_t intended = self.intended, sent_at = self.sent_at
        self.busy = False
        self.head = False
        self.head_status = 0
        self.engine.busy.discard(self)
        self.target.service_time.record_nogil(micros(now - sent_at))
        if keep_alive and not self.closed:
            self.engine.connection_free(self)
        else:
            self.close_transport(False)
        self.engine.finish(self.target, outcome_for_status(status), intended, sent_at, now)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        if self.fd >= 0:
            # Closed under us (a failed write): the kernel has dropped the epoll entry.
            del self.engine.harvested[self.fd]
            self.fd = -1
        self.target.open_count -= 1
        if self.busy:
            self.end_request(LG_RESET, lg_pacer_now_ns())
        else:
            try:
                self.target.idle.remove(self)
            except ValueError:
                pass
        self.engine.ensure_capacity(self.target)

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass
