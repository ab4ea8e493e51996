"""The engine against targets that misbehave at the byte level: a real TCP server on loopback
that closes mid-response, resets, sends garbage, sends huge headers or bodies, trickles its
answer a byte at a time (slowloris-style) or never answers.

For each, every scheduled request lands in exactly one outcome class, the engine finishes,
and it holds no more connections than its cap: the engine worker's sockets to the server
(in any TCP state) are sampled every 20 ms throughout the run, and after the run the server
must see every connection closed.  A connection the engine failed to close after a reset or
a timeout would push the count past the cap and stay open."""
import itertools
import select
import socket
import struct
import threading
import time

import psutil
import pytest

from test_engine_support import config, outcome_counts
from loadgate.native.engine import run_once
from loadgate.native.outcomes import Outcome
from loadgate.native.schedule import ConstantRate

RATE = 100
DURATION_S = 1.0
REQUESTS = int(RATE * DURATION_S)
MAX_CONNECTIONS = 6
TIMEOUT_S = 0.3
BIG_BODY = 4 << 20
HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class MisbehavingServer:
    """A thread-per-connection HTTP server whose every answer is ``behaviour(connection)``
    once a request's head has arrived.  Counts requests and the connections still open (it
    notices a client's close only when it next polls, so during a run the engine-side
    socket count is the precise one)."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.lock = threading.Lock()
        self.open = 0
        self.requests = 0
        self.closing = threading.Event()
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.closing.is_set():
            try:
                connection, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                self.open += 1
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, connection):
        connection.settimeout(0.1)
        buffered = b""
        try:
            while not self.closing.is_set():
                try:
                    data = connection.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                buffered += data
                while b"\r\n\r\n" in buffered:
                    _, buffered = buffered.split(b"\r\n\r\n", 1)
                    with self.lock:
                        self.requests += 1
                    if not self.behaviour(connection, self.closing):
                        return
        except OSError:
            return
        finally:
            with self.lock:
                self.open -= 1
            connection.close()

    def wait_idle(self, timeout=5.0):
        """True once every connection has been closed by the client (or by a behaviour)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.open == 0:
                    return True
            time.sleep(0.02)
        return False

    def close(self):
        self.closing.set()
        self.acceptor.join(5)
        self.listener.close()
        for thread in self.threads:
            thread.join(5)


# Each behaviour answers one request; it returns False to end the connection.

def answer_ok(connection, closing):
    connection.sendall(HEAD_OK)
    return True


def close_mid_response(connection, closing):
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    return False


def reset_at_once(connection, closing):
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return False


def malformed(connection, closing):
    connection.sendall(b"HTTZ/9.9 two hundred\r\n\x00\x01garbage\r\n\r\n")
    return True


def oversized_header(connection, closing):
    connection.sendall(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * (256 << 10) +
                       b"\r\nContent-Length: 2\r\n\r\nok")
    return True


def oversized_body(connection, closing):
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG_BODY)
    chunk = b"x" * 65536
    for _ in range(BIG_BODY // len(chunk)):
        connection.sendall(chunk)
    return True


def client_gone(connection, wait_s):
    """Waits up to ``wait_s``; True if the client closed the connection meanwhile."""
    readable, _, _ = select.select([connection], [], [], wait_s)
    try:
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def trickle(connection, closing):
    # One byte every 20 ms: the whole answer would take ~1 s, three timeouts.
    for byte in HEAD_OK:
        if closing.is_set() or client_gone(connection, 0.02):
            return False
        connection.sendall(bytes([byte]))
    return True


def never_answer(connection, closing):
    while not closing.is_set():
        if client_gone(connection, 0.05):
            return False
    return False


class WorkerSampler:
    """Samples the engine workers' (children of this process) sockets to ``port`` (in any
    state, CLOSE_WAIT included, so a socket the engine forgot to close stays counted) and
    their resident memory."""

    def __init__(self, port, period_s=0.02):
        self.port = port
        self.period_s = period_s
        self.sockets = []
        self.rss = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _workers(self):
        return [p for p in psutil.Process().children(recursive=True)
                if "loadgate.native.engine_worker" in " ".join(_cmdline(p))]

    def _loop(self):
        while not self.stopping.wait(self.period_s):
            for worker in self._workers():
                try:
                    sockets = [c for c in worker.net_connections("tcp")
                               if c.raddr and c.raddr.port == self.port]
                    self.sockets.append(len(sockets))
                    self.rss.append(worker.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()


def _cmdline(process):
    try:
        return process.cmdline()
    except psutil.NoSuchProcess:
        return []


def run_against(behaviour, rate=RATE, duration_s=DURATION_S):
    """(result, server, sampler) of one run at ``rate`` against the behaviour."""
    server = MisbehavingServer(behaviour)
    try:
        with WorkerSampler(server.port) as sampler:
            result = run_once(config(server.url, ConstantRate(rate, duration_s), connections=2,
                                     max_connections=MAX_CONNECTIONS, timeout_s=TIMEOUT_S,
                                     interval_s=0.25), workers=1)
        idle = server.wait_idle()
    finally:
        server.close()
    assert idle, "connections left open after the run"
    return result, server, sampler


def check_bounded(result, server, sampler):
    """Every request accounted for; connections and descriptors never beyond the cap."""
    total = result.totals.combined()
    assert result.scheduled == REQUESTS == total.finished
    assert not result.worker_errors
    assert len(sampler.sockets) >= 10, "the worker was hardly sampled"
    assert max(sampler.sockets) <= MAX_CONNECTIONS
    assert max(result.totals.open_connections, 0) <= MAX_CONNECTIONS
    return total


FAULTS = [
    pytest.param(close_mid_response, Outcome.RESET, id="close-mid-response"),
    pytest.param(reset_at_once, Outcome.RESET, id="reset"),
    pytest.param(malformed, Outcome.PARSE_ERROR, id="malformed"),
    pytest.param(trickle, Outcome.TIMEOUT, id="trickle"),
    pytest.param(never_answer, Outcome.TIMEOUT, id="never-answer"),
]


@pytest.mark.parametrize("behaviour, outcome", FAULTS)
def test_each_fault_is_counted_in_its_class_without_leaking_connections(behaviour, outcome):
    result, server, sampler = run_against(behaviour)
    total = check_bounded(result, server, sampler)
    counts = outcome_counts(total)
    if outcome is Outcome.TIMEOUT:
        # A request still waiting for the capped pool when the run ends was never sent: it is
        # NOT_SENT, not a timeout, and only unsent requests may be.
        not_sent = counts.pop(Outcome.NOT_SENT, 0)
        assert not_sent <= REQUESTS - total.sent
        assert counts == {outcome: REQUESTS - not_sent}
    else:
        assert counts == {outcome: REQUESTS}
    # Every request sent reached the server: the fault was really met, not avoided.  Faults
    # that hold a connection past the timeout leave later requests waiting for the capped
    # pool; those time out in the queue, unsent.
    assert server.requests == total.sent
    assert total.sent == REQUESTS if outcome is not Outcome.TIMEOUT else total.sent >= 10
    assert total.latency.total_count == REQUESTS
    if outcome is Outcome.TIMEOUT:
        # A dribbling answer does not extend the timeout: latency is bounded by it (to the
        # histogram's three significant digits).
        assert TIMEOUT_S * 1e6 * (1 - 1e-3) <= total.latency.min
        assert total.latency.max < (TIMEOUT_S + 1.0) * 1e6


def test_the_sampler_sees_the_engines_connections():
    """Without this the cap checks above could pass with a sampler that sees nothing."""
    result, server, sampler = run_against(answer_ok)
    total = check_bounded(result, server, sampler)
    assert outcome_counts(total) == {Outcome.OK_2XX: REQUESTS}
    assert max(sampler.sockets) >= 1


def test_a_huge_header_is_streamed_through_the_parser_and_counted():
    result, server, sampler = run_against(oversized_header)
    total = check_bounded(result, server, sampler)
    assert outcome_counts(total) == {Outcome.OK_2XX: REQUESTS}
    assert total.bytes_read >= REQUESTS * (256 << 10)


def test_oversized_bodies_are_read_through_without_holding_them():
    rate, duration_s = 20, 1.0
    result, server, sampler = run_against(oversized_body, rate, duration_s)
    total = result.totals.combined()
    assert result.scheduled == 20 == total.finished
    assert max(sampler.sockets) <= MAX_CONNECTIONS
    answered = total.outcomes[Outcome.OK_2XX]
    # Up to 80 MiB were offered; whatever was answered was read in full.
    assert answered > 0 and total.bytes_read >= answered * BIG_BODY
    assert set(outcome_counts(total)) <= {Outcome.OK_2XX, Outcome.TIMEOUT}
    # Bodies are counted, not kept: the worker grows far less than one body per answer.
    assert max(sampler.rss) - sampler.rss[0] < answered * BIG_BODY / 2


def test_mixed_faults_on_one_pool_still_add_up():
    """Faults interleaved on the same connections: each request's outcome is its own."""
    behaviours = [answer_ok, close_mid_response, malformed, reset_at_once, never_answer]
    counter = itertools.count()  # thread-safe: one C call under the GIL

    def mixed(connection, closing):
        return behaviours[next(counter) % len(behaviours)](connection, closing)
    result, server, sampler = run_against(mixed)
    total = check_bounded(result, server, sampler)
    counts = outcome_counts(total)
    assert set(counts) == {Outcome.OK_2XX, Outcome.RESET, Outcome.PARSE_ERROR, Outcome.TIMEOUT}
    # The server chose each answer: the engine's counts are the server's choices.
    assert counts[Outcome.PARSE_ERROR] == server.requests // 5 + (server.requests % 5 > 2)
