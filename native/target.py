"""The built-in HTTP target: configuration, serving, and a helper that runs it as a process.

A target misbehaves on purpose, in ways a load test must measure honestly: injected latency
(fixed or drawn from a seeded distribution), errors, connection resets, requests never
answered, malformed responses, periodic stalls (the coordinated-omission scenario) and extra
latency that appears only above a request rate (a regression a canary should catch).  It also
emulates an OpenAI-compatible completion endpoint with server-sent events.

Stall windows are [k*every, k*every + for) for k = 1, 2, ... after the server's epoch, a
CLOCK_MONOTONIC instant that ``GET /__target/stats`` reports as ``epoch_monotonic_ns`` so a test
can compute the truth a generator should have measured.
"""
import asyncio
import enum
import math
import os
import re
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace

from loadgate.native.errors import ConfigError, InfrastructureError

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|µs|ms|s|m|h)?\s*$")
_UNIT_S = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text):
    """Seconds from '250us', '5ms', '1.5s', '2m', '1h' or a bare number of seconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ConfigError(f"not a duration: {text!r} (use e.g. 250us, 5ms, 1s, 2m)")
        value = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"a duration must be finite and non-negative, got {text!r}")
    return value


def _fraction(name, value):
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    return value


class LatencyKind(enum.Enum):
    FIXED = "fixed"
    UNIFORM = "uniform"
    EXPONENTIAL = "exponential"
    LOGNORMAL = "lognormal"


@dataclass(frozen=True)
class LatencySpec:
    """How long to wait before answering.  ``first_s`` is the fixed value, the uniform low
    bound, the exponential mean or the lognormal median; ``second`` is the uniform high bound
    (seconds) or the lognormal sigma."""

    kind: LatencyKind = LatencyKind.FIXED
    first_s: float = 0.0
    second: float = 0.0

    @classmethod
    def parse(cls, text):
        """'5ms', 'uniform:1ms:5ms', 'exponential:2ms' (or 'exp:'), 'lognormal:2ms:0.5'."""
        parts = str(text).split(":")
        name = {"exp": "exponential"}.get(parts[0], parts[0])
        try:
            kind = LatencyKind(name)
        except ValueError:
            if len(parts) == 1:
                return cls(LatencyKind.FIXED, parse_duration(parts[0]))
            raise ConfigError(f"unknown latency distribution {parts[0]!r}") from None
        arity = {LatencyKind.FIXED: 2, LatencyKind.UNIFORM: 3, LatencyKind.EXPONENTIAL: 2,
                 LatencyKind.LOGNORMAL: 3}[kind]
        if len(parts) != arity:
            raise ConfigError(f"latency {text!r}: {kind.value} takes {arity - 1} value(s)")
        first = parse_duration(parts[1])
        if kind is LatencyKind.UNIFORM:
            second = parse_duration(parts[2])
            if second < first:
                raise ConfigError(f"latency {text!r}: the high bound is below the low bound")
        elif kind is LatencyKind.LOGNORMAL:
            second = float(parts[2])
            if not second >= 0:
                raise ConfigError(f"latency {text!r}: sigma must be non-negative")
        else:
            second = 0.0
        return cls(kind, first, second)

    def sampler(self, rng):
        """A no-argument callable drawing one latency in seconds from ``rng`` (random.Random)."""
        first, second = self.first_s, self.second
        if self.kind is LatencyKind.UNIFORM:
            return lambda: rng.uniform(first, second)
        if self.kind is LatencyKind.EXPONENTIAL:
            return (lambda: rng.expovariate(1.0 / first)) if first > 0 else (lambda: 0.0)
        if self.kind is LatencyKind.LOGNORMAL:
            mu = math.log(first) if first > 0 else -math.inf
            return (lambda: rng.lognormvariate(mu, second)) if first > 0 else (lambda: 0.0)
        return lambda: first


@dataclass(frozen=True)
class LoadLatency:
    """Extra latency added while the rate the server sees exceeds ``threshold_rps``: either a
    duration (``extra_s``) or a fraction of the drawn latency (``extra_fraction``)."""

    threshold_rps: float
    extra_s: float = 0.0
    extra_fraction: float = 0.0
    window_s: float = 1.0

    @classmethod
    def parse(cls, text, window_s=1.0):
        """'30ms@200rps' (30 ms more above 200 req/s) or '30%@200rps' (30 % more)."""
        match = re.match(r"^\s*([^@]+)@\s*([0-9.]+)\s*(?:rps|/s)?\s*$", str(text))
        if not match:
            raise ConfigError(f"load latency {text!r}: use EXTRA@RATE, e.g. 30ms@200rps or 30%@200rps")
        extra, threshold = match.group(1).strip(), float(match.group(2))
        if threshold <= 0:
            raise ConfigError(f"load latency {text!r}: the rate threshold must be positive")
        window_s = parse_duration(window_s)
        if window_s <= 0:
            raise ConfigError("the load window must be positive")
        if extra.endswith("%"):
            return cls(threshold, extra_fraction=float(extra[:-1]) / 100.0, window_s=window_s)
        return cls(threshold, extra_s=parse_duration(extra), window_s=window_s)


@dataclass(frozen=True)
class Behaviour:
    """What the target does with each request of a path.  The four failure rates are
    exclusive outcomes of one draw, so they may not add up to more than 1."""

    latency: LatencySpec = LatencySpec()
    error_rate: float = 0.0
    error_status: int = 500
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    stall_every_s: float = 0.0
    stall_for_s: float = 0.0
    load_latency: LoadLatency = None
    body_size: int = 3

    def __post_init__(self):
        for name in ("error_rate", "reset_rate", "hang_rate", "malformed_rate"):
            _fraction(name.replace("_", "-"), getattr(self, name))
        if self.error_rate + self.reset_rate + self.hang_rate + self.malformed_rate > 1.0 + 1e-9:
            raise ConfigError("error, reset, hang and malformed rates add up to more than 1")
        if not 100 <= int(self.error_status) <= 599:
            raise ConfigError(f"error status {self.error_status} is not an HTTP status")
        if self.stall_for_s > 0 and not self.stall_every_s > self.stall_for_s:
            raise ConfigError("--stall-every must be longer than --stall-for")
        if self.body_size < 0:
            raise ConfigError("body size must be non-negative")


_BEHAVIOUR_KEYS = {
    "latency": ("latency", LatencySpec.parse),
    "error-rate": ("error_rate", float),
    "error-status": ("error_status", int),
    "reset-rate": ("reset_rate", float),
    "hang-rate": ("hang_rate", float),
    "malformed-rate": ("malformed_rate", float),
    "stall-every": ("stall_every_s", parse_duration),
    "stall-for": ("stall_for_s", parse_duration),
    "load-latency": ("load_latency", LoadLatency.parse),
    "body-size": ("body_size", int),
}


def parse_behaviour(options, base=None):
    """A Behaviour from 'latency=5ms,error-rate=0.1,...' (the same names as the flags),
    starting from ``base`` so a route only states what differs."""
    changes = {}
    for item in filter(None, (part.strip() for part in str(options).split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in _BEHAVIOUR_KEYS:
            raise ConfigError(f"route option {item!r}: use one of {', '.join(_BEHAVIOUR_KEYS)}")
        name, convert = _BEHAVIOUR_KEYS[key]
        try:
            changes[name] = convert(value)
        except ValueError as exc:
            raise ConfigError(f"route option {item!r}: {exc}") from None
    return replace(base or Behaviour(), **changes)


@dataclass(frozen=True)
class LlmSpec:
    """The OpenAI-compatible completion emulation: time to first token, the gap between
    tokens, and how many tokens an answer has unless the request's max_tokens says fewer."""

    ttft_s: float = 0.05
    inter_token_s: float = 0.01
    tokens: int = 16

    def __post_init__(self):
        if self.tokens < 1:
            raise ConfigError("an LLM answer needs at least one token")


@dataclass(frozen=True)
class TargetConfig:
    """Everything a target does.  ``routes`` is ((path prefix, Behaviour), ...); the longest
    matching prefix wins, and ``behaviour`` applies to every other path.  ``seed`` makes every
    random decision reproducible (worker i uses seed + i); ``workers`` > 1 shares the port
    through SO_REUSEPORT, and a load-latency threshold is then split evenly between them."""

    behaviour: Behaviour = Behaviour()
    routes: tuple = ()
    llm: LlmSpec = LlmSpec()
    seed: int = None
    workers: int = 1
    stats_path: str = "/__target/stats"
    epoch_monotonic_ns: int = field(default=None, compare=False)

    def __post_init__(self):
        if self.workers < 1:
            raise ConfigError("a target needs at least one worker")
        ordered = tuple(sorted(self.routes, key=lambda route: -len(route[0])))
        object.__setattr__(self, "routes", ordered)

    def behaviour_for(self, path):
        for prefix, behaviour in self.routes:
            if path.startswith(prefix):
                return behaviour
        return self.behaviour


def _listening_socket(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InfrastructureError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.setblocking(False)
    return sock


async def open_target(config, host="127.0.0.1", port=0, worker_index=0):
    """Start serving inside the running event loop; returns (asyncio server, TargetStats)."""
    from loadgate.native.target_protocol import TargetStats, protocol_factory

    if config.epoch_monotonic_ns is None:
        config = replace(config, epoch_monotonic_ns=time.monotonic_ns())
    stats = TargetStats(config, worker_index)
    sock = _listening_socket(host, port)
    sock.listen(4096)
    server = await asyncio.get_running_loop().create_server(
        protocol_factory(config, stats, worker_index), sock=sock)
    return server, stats


def _serve_one(config, host, port, worker_index, ready):
    import signal

    import uvloop

    async def main():
        server, _ = await open_target(config, host, port, worker_index)
        bound = server.sockets[0].getsockname()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if ready:
            ready(bound[0], bound[1])
        await stop.wait()
        server.close()

    uvloop.run(main())


def serve(config, host="127.0.0.1", port=0, ready=None):
    """Serve until SIGTERM or SIGINT.  ``ready(host, port)`` is called once every worker
    listens; port 0 picks a free port shared by all workers."""
    config = replace(config, epoch_monotonic_ns=time.monotonic_ns())
    if config.workers == 1:
        _serve_one(config, host, port, 0, ready)
        return
    import multiprocessing
    import signal

    # Holding the port bound (never listening) reserves it for the workers' SO_REUSEPORT sockets.
    reserve = _listening_socket(host, port)
    port = reserve.getsockname()[1]
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    context = multiprocessing.get_context("fork")
    started = context.Semaphore(0)
    workers = [context.Process(target=_worker_main, daemon=True,
                               args=(config, host, port, i, started))
               for i in range(config.workers)]
    try:
        for worker in workers:
            worker.start()
        for _ in workers:
            if not started.acquire(timeout=30):
                raise InfrastructureError("a target worker did not start")
        if ready:
            ready(host, port)
        while not stopping and all(w.is_alive() for w in workers):
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            if worker.pid is not None:
                worker.join(5)
        reserve.close()


def _worker_main(config, host, port, worker_index, started):
    import ctypes
    import signal

    # A worker must not outlive its parent, even one killed with SIGKILL.
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    _serve_one(config, host, port, worker_index, lambda *_: started.release())


def start_target_process(args=(), timeout=15.0, env=None):
    """Run ``loadgate target`` as a child process; returns (proc, host, port) once it listens.

    ``args`` are the target's flags; without ``--listen`` it listens on 127.0.0.1 on a free
    port.  Stop it with ``stop_target_process(proc)`` (or terminate and wait).
    """
    args = [str(a) for a in args]
    if "--listen" not in args:
        args = ["--listen", "127.0.0.1:0"] + args
    proc = subprocess.Popen([sys.executable, "-m", "loadgate.native.target_cli"] + args,
                            stdout=subprocess.PIPE, env=env)
    line = read_first_line(proc, timeout)
    address = parse_listening(line)
    if address is None:
        stop_target_process(proc)
        raise InfrastructureError(f"target did not start (exit {proc.returncode}, said {line!r})")
    return proc, address[0], address[1]


def read_first_line(proc, timeout):
    """The first line a child wrote to its stdout pipe, without waiting past ``timeout``;
    what it wrote so far (maybe empty) when it exits or the time runs out.  Servers that
    print ``listening on HOST:PORT`` first (target, agent, controller) are started with it."""
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                break
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
    return line.decode(errors="replace").strip()


def parse_listening(line):
    """(host, port) from a ``listening on HOST:PORT`` line, or None."""
    match = re.match(r"^listening on (.+):(\d+)$", line)
    return (match.group(1), int(match.group(2))) if match else None


def stop_target_process(proc, timeout=10.0):
    """Terminate a target started by start_target_process and reap it; returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()
    return proc.returncode
