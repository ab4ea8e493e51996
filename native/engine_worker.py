"""One worker process: shard ``index`` of ``count`` of the schedule, on its own uvloop.
Started by LoadRun as ``python -m loadgate.native.engine_worker FD INDEX COUNT``.

It talks to its LoadRun over a duplex pipe, in (Message, payload) pairs: READY once its
connections are open, then START with the wall-clock start instant; RATE_SCALE, WEIGHTS and
STOP at any time.  It sends a SNAPSHOT every interval, then FINAL with the last snapshot
(``final=True``) and the number of arrivals it accounted for; or FAILED with a traceback.
"""
import asyncio
import enum
import gc
import multiprocessing.connection
import resource
import signal
import ssl
import sys
import time
import traceback

import uvloop

from loadgate.native._engine import TargetState, WorkerEngine, monotonic_ns
from loadgate.native.engine_config import EngineConfig, Scheme, build_requests, worker_share
from loadgate.native.engine_snapshot import IntervalSnapshot, TargetInterval
from loadgate.native.errors import EngineError
from loadgate.native.outcomes import Outcome

# After STOP, requests in flight get this long (at most the timeout) to finish on their own.
STOP_GRACE_S = 0.5
GC_YOUNG_THRESHOLD = 20_000
# How often the worker looks whether generation has ended (which starts the drain's clock);
# every wake-up of this loop costs the engine's thread the CPU of a few requests.
DRAIN_POLL_S = 0.25


class Message(enum.Enum):
    READY = "ready"
    START = "start"
    SNAPSHOT = "snapshot"
    FINAL = "final"
    RATE_SCALE = "rate_scale"
    WEIGHTS = "weights"
    STOP = "stop"
    FAILED = "failed"


def _ssl_context(spec):
    if spec.scheme is not Scheme.HTTPS:
        return None
    context = ssl.create_default_context(cafile=spec.ca_file)
    if not spec.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Worker:
    def __init__(self, config, index, count, pipe):
        self.config = config
        self.index = index
        self.pipe = pipe
        self.loop = asyncio.get_running_loop()
        self.schedule = config.schedule.shard(index, count)
        self.connections = worker_share(config.connections, count)
        self.max_connections = worker_share(config.max_connections, count)
        if not self.schedule.is_open_loop:
            self.connections = self.max_connections = max(1, self.schedule.concurrency)
        self.targets = [TargetState(spec.name, spec.address or spec.host, spec.port,
                                    _ssl_context(spec), build_requests(spec),
                                    self.max_connections, spec.weight, server_hostname=spec.host)
                        for spec in config.targets]
        self.engine = WorkerEngine(self.loop, self.targets, self.schedule, config.timeout_s,
                                   config.pacing_window_s)
        self.control = asyncio.Queue()
        self.drained = self.loop.create_future()
        self.interval_index = 0
        self.cpu_mark = time.process_time()
        self.stop_at = None
        self.start_ns = None
        self.tick = None

    def _on_pipe(self):
        try:
            message, payload = self.pipe.recv()
        except EOFError:
            # The parent is gone: nobody will read the results, stop generating at once.
            message, payload = Message.STOP, None
            self.loop.remove_reader(self.pipe.fileno())
        self.control.put_nowait((message, payload))

    def _handle(self, message, payload):
        if message is Message.RATE_SCALE:
            self.engine.set_rate_scale(payload)
        elif message is Message.WEIGHTS:
            self.engine.set_weights(payload)
        elif message is Message.STOP and self.stop_at is None:
            self.engine.stop()
            self.stop_at = time.monotonic() + min(STOP_GRACE_S, self.config.timeout_s)

    def _on_loop_error(self, loop, context):
        exc = context.get("exception")
        if isinstance(exc, OSError):
            return  # a transport's own failure: its connection_lost has counted it
        if not self.drained.done():
            self.drained.set_exception(exc or EngineError(context.get("message", "loop error")))

    async def run(self):
        self.loop.set_exception_handler(self._on_loop_error)
        self.loop.add_reader(self.pipe.fileno(), self._on_pipe)
        await self.engine.preconnect(self.connections)
        # Everything built so far lives for the whole run; the collector need not walk it,
        # and a rare young-generation pass keeps it off the per-request path.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD)
        self.pipe.send((Message.READY, self.index))
        while True:
            message, payload = await self.control.get()
            if message is Message.START:
                break
            if message is Message.STOP:
                self.engine.stop()
                return self._send_final(time.time_ns())
        self.start_ns = payload
        start_mono = monotonic_ns() + (self.start_ns - time.time_ns())
        self.engine.start(start_mono, self._on_drained)
        self._arm_tick()
        await self._until_done()
        if self.drained.done() and self.drained.exception() is not None:
            raise self.drained.exception()
        self._send_final(time.time_ns())

    async def _until_done(self):
        generation_end = None
        getter = None
        try:
            while not self.drained.done():
                if getter is None:
                    getter = asyncio.ensure_future(self.control.get())
                now = time.monotonic()
                wait = DRAIN_POLL_S
                if self.stop_at is not None:
                    wait = min(wait, self.stop_at - now)
                if generation_end is not None:
                    wait = min(wait, generation_end + self.config.timeout_s - now)
                done, _ = await asyncio.wait({getter, self.drained}, timeout=max(wait, 0.0),
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    self._handle(*getter.result())
                    getter = None
                now = time.monotonic()
                if generation_end is None and not self.engine.is_generating:
                    generation_end = now
                if self.stop_at is not None and now >= self.stop_at:
                    break
                if generation_end is not None and now - generation_end >= self.config.timeout_s:
                    break
        finally:
            if getter is not None:
                getter.cancel()
        if not self.drained.done():
            self.engine.abandon()

    def _on_drained(self):
        if not self.drained.done():
            self.drained.set_result(None)

    def _interval_bounds(self, index):
        step = int(self.config.interval_s * 1e9)
        return self.start_ns + index * step, self.start_ns + (index + 1) * step

    def _arm_tick(self):
        _, end_ns = self._interval_bounds(self.interval_index)
        self.tick = self.loop.call_later(max(end_ns - time.time_ns(), 0) / 1e9, self._on_tick)

    def _on_tick(self):
        start_ns, end_ns = self._interval_bounds(self.interval_index)
        self.pipe.send((Message.SNAPSHOT, self._snapshot(start_ns, end_ns, final=False)))
        self.interval_index += 1
        self._arm_tick()

    def _send_final(self, now_ns):
        if self.tick is not None:
            self.tick.cancel()
        start_ns = now_ns
        if self.start_ns is not None:
            start_ns, _ = self._interval_bounds(self.interval_index)
        snapshot = self._snapshot(start_ns, max(now_ns, start_ns), final=True)
        self.engine.close()
        self.pipe.send((Message.FINAL, (snapshot, self.engine.scheduled)))

    def _snapshot(self, start_ns, end_ns, final):
        intended, per_target, open_connections = self.engine.take_interval()
        cpu = time.process_time()
        snapshot = IntervalSnapshot(self.interval_index, start_ns, end_ns, intended=intended,
                                    cpu_seconds=cpu - self.cpu_mark,
                                    open_connections=open_connections, final=final)
        self.cpu_mark = cpu
        for name, latency, service, lag, counts, sent, late, bytes_read in per_target:
            outcomes = {outcome: counts[outcome] for outcome in Outcome}
            snapshot.targets[name] = TargetInterval(latency, service, lag, outcomes, sent, late,
                                                    bytes_read)
            snapshot.sent += sent
            snapshot.max_lag_us = max(snapshot.max_lag_us, lag.max if lag.total_count else 0)
        return snapshot


async def _main(config, index, count, pipe):
    await Worker(config, index, count, pipe).run()


def worker_main(pipe, index, count):
    """Runs worker ``index`` of ``count``; its configuration is the first thing on ``pipe``."""
    # Ctrl-C reaches the whole process group; the parent turns it into STOP so that the
    # workers still report what they measured.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Every connection is a descriptor; the default soft limit (often 1024) would turn a
    # large pool into connect errors long before the hard limit is reached.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        config = EngineConfig.from_dict(pipe.recv())
        uvloop.run(_main(config, index, count, pipe))
    except BaseException:
        try:
            pipe.send((Message.FAILED, (index, traceback.format_exc())))
        except OSError:
            pass  # the parent is gone; nobody is left to tell
    finally:
        pipe.close()


if __name__ == "__main__":
    # Through the module's real name, so the messages it pickles name their real module.
    from loadgate.native import engine_worker
    engine_worker.worker_main(multiprocessing.connection.Connection(int(sys.argv[1])),
                              int(sys.argv[2]), int(sys.argv[3]))
