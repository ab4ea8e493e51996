"""Open-loop load on an OpenAI-compatible streaming endpoint (server-sent events).

Per request it measures, from the request's intended start: time to first token (TTFT), the
end-to-end latency, and from the stream itself every inter-token gap (ITL), the time per
output token ((last - first) / (n - 1), TPOT) and the output tokens per second as its user
saw them (n / end-to-end latency).  Token
instants are taken when their bytes are read, once per read: tokens that arrive in the same
read share an instant, as they did on the wire.  ``n`` is the server's ``usage``
completion_tokens when it reports one, else the number of chunks that carried text.

HTTP/1.1 on uvloop with httptools (chunked decoding included); one stream per connection, a
pool of keep-alive connections capped at ``max_connections``; a request that finds every
connection busy waits for one, and that wait is schedule lag, part of its latency.  A closed
loop schedule (fixed concurrency, as many LLM benchmarks use) is run too, labelled as such by
its schedule in the result.
"""
import asyncio
import enum
import ssl
import time
from collections import deque
from dataclasses import dataclass

import httptools
import uvloop

from loadgate.agent.inference.interval_log import roll_periodically
from loadgate.agent.inference.llm_request import Endpoint
from loadgate.agent.inference.metrics import Measurement
from loadgate.agent.inference.pacing import LEAD_NS, SPIN_NS, instants, wait_until
from loadgate.agent.inference.sse import ChunkKind, SseDecoder, read_chunk
from loadgate.native.errors import ConfigError

SWEEP_S = 0.05
METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "latency_ms", "service_time_ms", "schedule_lag_ms",
           "tokens_per_s")
FIGURES = ("output_tokens", "output_tokens_per_s")


class LlmOutcome(enum.Enum):
    OK = "ok"                                  # a 2xx event stream that ended with [DONE]
    HTTP_3XX = "http_3xx"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    CONNECT_ERROR = "connect_error"            # no connection could be opened for it
    TIMEOUT = "timeout"                        # not complete within the timeout after sending
    RESET = "reset"                            # the connection closed mid-response
    HTTP_PARSE_ERROR = "http_parse_error"      # the response was not valid HTTP/1.1
    STREAM_PARSE_ERROR = "stream_parse_error"  # not an event stream, or an event not a chunk
    STREAM_ERROR = "stream_error"              # the server sent an error inside the stream
    STREAM_INCOMPLETE = "stream_incomplete"    # the response ended without [DONE]
    NOT_SENT = "not_sent"                      # no connection came free within the timeout

    @property
    def is_success(self):
        return self is LlmOutcome.OK


_STATUS_CLASS = {3: LlmOutcome.HTTP_3XX, 4: LlmOutcome.HTTP_4XX, 5: LlmOutcome.HTTP_5XX}


@dataclass(frozen=True)
class LlmConfig:
    url: str
    schedule: object
    request: object                 # an LlmRequestSpec
    timeout_s: float = 60.0
    max_connections: int = 256
    spin_ns: int = SPIN_NS          # see pacing.wait_until: CPU spent for sub-ms send times
    ca_file: str = None             # CA bundle for https (default: the system's)

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ConfigError("timeout_s must be positive")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")


class _Request:
    __slots__ = ("intended", "payload", "sent", "first", "last", "gaps", "chunks", "usage",
                 "done", "failure", "finished")

    def __init__(self, intended, payload, finished=None):
        self.intended = intended
        self.payload = payload
        self.finished = finished        # a future a closed loop awaits; set on any outcome
        self.sent = self.first = self.last = None
        self.gaps = []
        self.chunks = 0
        self.usage = None
        self.done = False
        self.failure = None


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one streamed request at a time."""

    def __init__(self, client):
        self.client = client
        self.transport = None
        self.request = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport

    def start(self, request):
        self.request = request
        self.parser = httptools.HttpResponseParser(self)
        self.decoder = SseDecoder()
        self.event_stream = False
        self.outcome = None
        self.keep_alive = False
        request.sent = time.monotonic_ns()
        self.transport.write(request.payload)

    def data_received(self, data):
        if self.request is None:
            return
        self.now = time.monotonic_ns()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.outcome = LlmOutcome.HTTP_PARSE_ERROR
        if self.outcome is not None:
            self.client.finish(self, self.outcome, self.now)

    def on_header(self, name, value):
        if name.lower() == b"content-type":
            self.event_stream = value.split(b";", 1)[0].strip().lower() == b"text/event-stream"

    def on_body(self, body):
        if 200 <= self.parser.get_status_code() < 300 and self.event_stream:
            for data in self.decoder.feed(body):
                self._event(data)

    def _event(self, data):
        request = self.request
        kind, tokens = read_chunk(data)
        if tokens is not None:
            request.usage = tokens
        if kind is ChunkKind.CONTENT:
            request.chunks += 1
            if request.first is None:
                request.first = self.now
            else:
                request.gaps.append(self.now - request.last)
            request.last = self.now
        elif kind is ChunkKind.DONE:
            request.done = True
        elif kind is ChunkKind.ERROR:
            request.failure = request.failure or LlmOutcome.STREAM_ERROR
        elif kind is ChunkKind.MALFORMED:
            request.failure = request.failure or LlmOutcome.STREAM_PARSE_ERROR

    def on_message_complete(self):
        # llhttp answers should_keep_alive only while the message is still current.
        self.keep_alive = self.parser.should_keep_alive()
        status = self.parser.get_status_code()
        request = self.request
        if status // 100 in _STATUS_CLASS:
            self.outcome = _STATUS_CLASS[status // 100]
        elif not 200 <= status < 300:
            self.outcome = LlmOutcome.HTTP_PARSE_ERROR
        elif not self.event_stream:
            self.outcome = LlmOutcome.STREAM_PARSE_ERROR
        elif request.failure is not None:
            self.outcome = request.failure
        elif not request.done:
            self.outcome = LlmOutcome.STREAM_INCOMPLETE
        else:
            self.outcome = LlmOutcome.OK

    @property
    def reusable(self):
        return (not self.closed and self.outcome is not None
                and self.outcome is not LlmOutcome.HTTP_PARSE_ERROR
                and self.keep_alive)

    def close(self):
        if not self.closed and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc):
        self.closed = True
        if self.request is not None:
            outcome = LlmOutcome.RESET
            if self.request.done and self.event_stream:
                # A body with neither length nor chunking ends when the connection does; the
                # [DONE] event says the stream itself was complete.
                self.on_message_complete()
                outcome = self.outcome
            self.client.finish(self, outcome, time.monotonic_ns())
        self.client.lost(self)


class LlmClient:
    """Runs one schedule against one endpoint; ``run`` returns the Measurement."""

    def __init__(self, config, log=None):
        self.config = config
        self.endpoint = Endpoint.parse(config.url)
        self.payloads = config.request.encode_all(self.endpoint)
        self.measurement = Measurement("llm", config.url, config.schedule, METRICS, LlmOutcome,
                                       log)
        self.timeout_ns = int(config.timeout_s * 1e9)
        self.ssl = None
        if self.endpoint.tls:
            try:
                self.ssl = ssl.create_default_context(cafile=config.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot use CA file {config.ca_file!r}: {exc}") from None
        self.idle = []
        self.busy = set()
        self.waiting = deque()
        self.connecting = 0
        self.open = 0
        self.output_tokens = 0
        self.last_completion = None
        self.connects = set()           # connect tasks: the loop holds tasks only weakly

    async def run(self):
        loop = asyncio.get_running_loop()
        self.settled = asyncio.Event()
        start = time.monotonic_ns() + LEAD_NS
        self.measurement.begin(start)
        background = [loop.create_task(self._sweep())]
        if self.measurement.log is not None:
            background.append(loop.create_task(roll_periodically(self.measurement.log)))
        try:
            if self.config.schedule.is_open_loop:
                for k, offset in enumerate(instants(self.config.schedule)):
                    intended = start + offset
                    await wait_until(intended, self.config.spin_ns)
                    self._submit(_Request(intended, self.payloads[k % len(self.payloads)]))
            else:
                await self._closed_loops(start)
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            for conn in list(self.idle) + list(self.busy):
                conn.close()
        measurement = self.measurement
        measurement.end(self.last_completion or time.monotonic_ns())
        measurement.figures["output_tokens"] = self.output_tokens
        measurement.figures["output_tokens_per_s"] = self.output_tokens / measurement.elapsed_s
        return measurement

    async def _closed_loops(self, start):
        # Each loop sends its next request when the previous one has ended (and the think
        # time passed); "intended" is then the moment it was issued.
        schedule = self.config.schedule
        end = start + int(schedule.duration_s * 1e9)
        loop = asyncio.get_running_loop()
        await wait_until(start, self.config.spin_ns)

        async def one_loop(k):
            while time.monotonic_ns() < end:
                request = _Request(time.monotonic_ns(), self.payloads[k % len(self.payloads)],
                                   loop.create_future())
                self._submit(request)
                await request.finished
                k += schedule.concurrency
                await asyncio.sleep(schedule.think_time_s)

        await asyncio.gather(*(one_loop(k) for k in range(schedule.concurrency)))

    async def _drain(self):
        # The sweeper ends every request within a timeout of sending (or of waiting), so this
        # is bounded; should it not be, what is left still gets its one outcome.
        while self.busy or self.waiting or self.connecting:
            self.settled.clear()
            try:
                await asyncio.wait_for(self.settled.wait(), self.config.timeout_s + 1.0)
            except asyncio.TimeoutError:
                break
        now = time.monotonic_ns()
        for conn in list(self.busy):
            self.finish(conn, LlmOutcome.TIMEOUT, now)
        while self.waiting:
            self._count(self.waiting.popleft(), LlmOutcome.NOT_SENT, now)

    def _submit(self, request):
        if self.idle:
            self._start(self.idle.pop(), request)
            return
        self.waiting.append(request)
        self._open_if_needed()

    def _open_if_needed(self):
        if len(self.waiting) > self.connecting and \
                self.open + self.connecting < self.config.max_connections:
            self.connecting += 1
            task = asyncio.get_running_loop().create_task(self._connect())
            self.connects.add(task)
            task.add_done_callback(self.connects.discard)

    def _start(self, conn, request):
        self.busy.add(conn)
        conn.start(request)

    async def _connect(self):
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(self), endpoint.host, endpoint.port, ssl=self.ssl,
                server_hostname=endpoint.host if self.ssl else None), self.config.timeout_s)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            self.connecting -= 1
            # The request waiting longest gets the error; later ones wait for other
            # connections still opening or busy ones coming free.
            if len(self.waiting) > self.connecting:
                self._count(self.waiting.popleft(), LlmOutcome.CONNECT_ERROR, time.monotonic_ns())
            self._settle()
            return
        self.connecting -= 1
        self.open += 1
        self._release(conn)

    def _release(self, conn):
        if self.waiting:
            self._start(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)
            self._settle()

    def finish(self, conn, outcome, now):
        """Called by a connection when its request ended, however it ended."""
        request = conn.request
        if request is None:
            return
        conn.request = None
        self.busy.discard(conn)
        self._count(request, outcome, now)
        if conn.reusable:
            self._release(conn)
        else:
            conn.close()
            self._settle()

    def lost(self, conn):
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        self._open_if_needed()
        self._settle()

    def _settle(self):
        if not (self.busy or self.waiting or self.connecting):
            self.settled.set()

    def _count(self, request, outcome, now):
        m = self.measurement
        m.count(outcome)
        if request.finished is not None:
            request.finished.set_result(outcome)
        if outcome is not LlmOutcome.OK:
            return
        self.last_completion = max(self.last_completion or now, now)
        m.record("latency_ms", (now - request.intended) // 1000)
        m.record("service_time_ms", (now - request.sent) // 1000)
        m.record("schedule_lag_ms", (request.sent - request.intended) // 1000)
        tokens = request.usage if request.usage is not None else request.chunks
        self.output_tokens += tokens
        if request.first is not None:
            m.record("ttft_ms", (request.first - request.intended) // 1000)
            for gap in request.gaps:
                m.record("itl_ms", gap // 1000)
            if tokens >= 2:
                m.record("tpot_ms", (request.last - request.first) // (1000 * (tokens - 1)))
        if tokens:
            m.record("tokens_per_s", tokens * 10**12 // max(1, now - request.intended))

    async def _sweep(self):
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic_ns()
            for conn in [c for c in self.busy if now - c.request.sent > self.timeout_ns]:
                self.finish(conn, LlmOutcome.TIMEOUT, now)
            while self.waiting and now - self.waiting[0].intended > self.timeout_ns:
                self._count(self.waiting.popleft(), LlmOutcome.NOT_SENT, now)
            self._settle()


def run_llm(config, log=None):
    """Runs ``config`` on a fresh uvloop event loop, writing intervals to ``log`` (an
    IntervalLog) if given; returns the Measurement."""
    return uvloop.run(LlmClient(config, log).run())
