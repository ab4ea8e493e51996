"""The target's per-connection protocol: parse with httptools, decide, answer in order.

Responses on a connection leave in request order (HTTP/1.1 pipelining), so each request gets a
slot in the connection's queue that is filled when its latency has passed; a hung request's
slot is never filled, which blocks the connection behind it exactly like a hung server.
"""
import asyncio
import collections
import enum
import json
import os
import random
import socket
import struct
import time

import httptools

from loadgate.native.target import LatencyKind
from loadgate.native.target_llm import LLM_PATHS, llm_response

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}
_MALFORMED = b"HTTP/1.1 2x0 NOT-HTTP\r\nContent-Length: banana\r\n\r\n"
_RESET_LINGER = struct.pack("ii", 1, 0)


class TargetOutcome(enum.Enum):
    """What the target did with a request (the keys of TargetStats.outcomes)."""

    OK = "ok"
    ERROR = "error"
    RESET = "reset"
    HANG = "hang"
    MALFORMED = "malformed"
    LLM = "llm"
    BAD_REQUEST = "bad_request"


def http_response(status, body, close=False, content_type=b"text/plain"):
    """A complete HTTP/1.1 response with a Content-Length."""
    head = "HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: %s\r\n%s\r\n" % (
        status, _REASONS.get(status, "Status"), len(body), content_type.decode(),
        "Connection: close\r\n" if close else "")
    return head.encode() + body


class TargetStats:
    """Counters of one worker, served as JSON at the configured stats path."""

    def __init__(self, config, worker_index):
        self.config = config
        self.worker_index = worker_index
        self.requests = 0
        self.connections = 0
        self.outcomes = collections.Counter()

    def to_json(self):
        return json.dumps({
            "worker": self.worker_index, "pid": os.getpid(), "requests": self.requests,
            "connections": self.connections,
            "outcomes": {o.value: self.outcomes[o] for o in TargetOutcome},
            "epoch_monotonic_ns": self.config.epoch_monotonic_ns,
        }).encode()


class _Route:
    """A Behaviour compiled for the hot path: thresholds of the single outcome draw, a latency
    sampler, prebuilt responses and the rate window of the load-latency regression."""

    __slots__ = ("reset_below", "hang_below", "malformed_below", "error_below", "sample",
                 "fixed_latency", "stall_every", "stall_for", "ok", "ok_close", "error",
                 "error_close", "load", "load_threshold", "bucket_s", "buckets", "bucket_at")

    def __init__(self, behaviour, rng, workers):
        self.reset_below = behaviour.reset_rate
        self.hang_below = self.reset_below + behaviour.hang_rate
        self.malformed_below = self.hang_below + behaviour.malformed_rate
        self.error_below = self.malformed_below + behaviour.error_rate
        latency = behaviour.latency
        self.fixed_latency = latency.first_s if latency.kind is LatencyKind.FIXED else None
        self.sample = latency.sampler(rng)
        self.stall_every = behaviour.stall_every_s
        self.stall_for = behaviour.stall_for_s
        body = (b"ok\n" * (behaviour.body_size // 3 + 1))[:behaviour.body_size]
        self.ok = http_response(200, body)
        self.ok_close = http_response(200, body, close=True)
        self.error = http_response(behaviour.error_status, b"injected error\n")
        self.error_close = http_response(behaviour.error_status, b"injected error\n", close=True)
        self.load = behaviour.load_latency
        if self.load:
            self.load_threshold = self.load.threshold_rps / workers
            self.bucket_s = self.load.window_s / 10
            self.buckets = collections.deque([0] * 10, maxlen=10)
            self.bucket_at = 0

    def seen_rate(self, now):
        """Counts this request and returns the rate over the last window (requests/s)."""
        bucket = int(now / self.bucket_s)
        if bucket != self.bucket_at:
            for _ in range(min(bucket - self.bucket_at, 10)):
                self.buckets.append(0)
            self.bucket_at = bucket
        self.buckets[-1] += 1
        return sum(self.buckets) / self.load.window_s

    def delay(self, now, epoch):
        """Seconds to wait before answering a request arriving at ``now``."""
        delay = self.fixed_latency if self.fixed_latency is not None else self.sample()
        load = self.load
        if load and self.seen_rate(now) > self.load_threshold:
            delay += load.extra_s + load.extra_fraction * delay
        if self.stall_for:
            # An answer due inside a stall window leaves when the window closes.
            due = now + delay - epoch
            phase = due % self.stall_every
            if due >= self.stall_every and phase < self.stall_for:
                delay += self.stall_for - phase
        return delay


class _Slot:
    __slots__ = ("chunks", "done", "close")

    def __init__(self):
        self.chunks = []
        self.done = False
        self.close = False


def protocol_factory(config, stats, worker_index):
    """A zero-argument factory of TargetProtocol sharing one worker's routes and counters."""
    seed = None if config.seed is None else config.seed + worker_index
    rng = random.Random(seed)
    default = _Route(config.behaviour, rng, config.workers)
    routes = tuple((prefix, _Route(b, rng, config.workers)) for prefix, b in config.routes)
    epoch = config.epoch_monotonic_ns / 1e9
    return lambda: TargetProtocol(config, stats, rng, default, routes, epoch)


class TargetProtocol(asyncio.Protocol):
    def __init__(self, config, stats, rng, default, routes, epoch):
        self.config = config
        self.stats = stats
        self.rng = rng
        self.default = default
        self.routes = routes
        self.epoch = epoch
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.loop = asyncio.get_running_loop()
        self.queue = collections.deque()
        self.url = b""
        self.body = []
        self.closed = False
        self.head = False

    def connection_made(self, transport):
        self.transport = transport
        self.stats.connections += 1

    def connection_lost(self, exc):
        self.closed = True

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer_now(http_response(400, b"upgrade not supported\n", close=True), True)
        except httptools.HttpParserError:
            self.stats.outcomes[TargetOutcome.BAD_REQUEST] += 1
            self._answer_now(http_response(400, b"bad request\n", close=True), True)

    def on_message_begin(self):
        self.url = b""
        self.body = []

    def on_url(self, url):
        self.url += url

    def on_body(self, body):
        # Only the completion emulation reads bodies; others are parsed past, not kept.
        if self.url.startswith(b"/v1/"):
            self.body.append(body)

    def on_message_complete(self):
        if self.closed:
            return
        self.stats.requests += 1
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        keep_alive = self.parser.should_keep_alive()
        if path == self.config.stats_path:
            self._answer_now(http_response(200, self.stats.to_json(), not keep_alive,
                                           b"application/json"), not keep_alive)
            return
        route = self.default
        for prefix, candidate in self.routes:
            if path.startswith(prefix):
                route = candidate
                break
        self.head = self.parser.get_method() == b"HEAD"
        draw = self.rng.random() if route.error_below else 1.0
        if draw < route.reset_below:
            self.stats.outcomes[TargetOutcome.RESET] += 1
            self._reset()
            return
        if draw < route.hang_below:
            self.stats.outcomes[TargetOutcome.HANG] += 1
            self.queue.append(_Slot())
            return
        now = time.monotonic()
        delay = route.delay(now, self.epoch)
        if draw < route.malformed_below:
            self.stats.outcomes[TargetOutcome.MALFORMED] += 1
            self._answer_later(delay, _MALFORMED, True)
        elif draw < route.error_below:
            self.stats.outcomes[TargetOutcome.ERROR] += 1
            self._answer_later(delay, route.error if keep_alive else route.error_close,
                               not keep_alive)
        elif path in LLM_PATHS and self.parser.get_method() == b"POST":
            self.stats.outcomes[TargetOutcome.LLM] += 1
            slot = _Slot()
            slot.close = not keep_alive
            self.queue.append(slot)
            llm_response(self, slot, path, b"".join(self.body), delay, self.config.llm)
        else:
            self.stats.outcomes[TargetOutcome.OK] += 1
            self._answer_later(delay, route.ok if keep_alive else route.ok_close, not keep_alive)

    def _answer_now(self, data, close):
        slot = _Slot()
        self.queue.append(slot)
        self.fill(slot, data, True, close)

    def _answer_later(self, delay, data, close):
        if self.head:
            # The headers a GET would get, with no body.
            data = data[:data.find(b"\r\n\r\n") + 4]
        if delay <= 0 and not self.queue:
            self.transport.write(data)
            if close:
                self.closed = True
                self.transport.close()
            return
        slot = _Slot()
        self.queue.append(slot)
        if delay <= 0:
            self.fill(slot, data, True, close)
        else:
            self.loop.call_later(delay, self.fill, slot, data, True, close)

    def fill(self, slot, data, done, close=False):
        """Adds ``data`` to a request's slot and writes whatever is now in order."""
        if self.closed:
            return
        slot.chunks.append(data)
        slot.done = done
        slot.close = slot.close or close
        queue = self.queue
        while queue:
            head = queue[0]
            if head.chunks:
                self.transport.write(b"".join(head.chunks))
                head.chunks.clear()
            if not head.done:
                break
            queue.popleft()
            if head.close:
                self.closed = True
                self.transport.close()
                break

    def _reset(self):
        # SO_LINGER 0 turns the close into a TCP RST, which the client sees as ECONNRESET.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_LINGER)
            except OSError:
                pass
        self.closed = True
        self.transport.abort()
