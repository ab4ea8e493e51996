"""The open-loop HTTP/1.1 load engine: configuration in, merged interval snapshots out.

``LoadRun`` starts one worker process per core (each runs shard i of N of the schedule on its
own uvloop, see engine_worker.py and the hot path in _engine.pyx), merges the workers'
snapshots interval by interval into ``snapshots`` and their totals into a ``RunResult``.
Every method is thread-safe, and none blocks for long, so an asyncio program can call them.

Memory is bounded over a run of any length: the run keeps only running totals, and each
merged interval lives until its reader takes it from ``snapshots`` (``drain`` and ``run_once``
always do), so whoever wants per-interval data keeps what it needs of each one.

Accounting: every arrival the schedule produces ends in exactly one Outcome, so
``result.scheduled == result.totals.combined().finished``.
"""
import multiprocessing.connection
import os
import queue
import socket
import subprocess
import sys
import threading
import time

from loadgate.native.engine_config import (EngineConfig, RequestTemplate, RotateMode, TargetSpec,
                                           build_requests, load_rotate_file)
from loadgate.native.engine_snapshot import IntervalSnapshot, RunResult, TargetInterval
from loadgate.native.engine_worker import Message
from loadgate.native.errors import ConfigError, EngineError

__all__ = ["EngineConfig", "IntervalSnapshot", "LoadRun", "RequestTemplate", "RotateMode",
           "RunResult", "TargetInterval", "TargetSpec", "build_requests", "load_rotate_file",
           "run_once"]

# Workers import numpy, uvloop and the engine before they can connect; on a busy machine
# that takes seconds, and a worker that never reports READY has failed.
READY_TIMEOUT_S = 60.0
# Without an agreed start instant, the run starts this long after the last worker is ready so
# that every worker gets the START message before its first arrival is due.
START_MARGIN_NS = 50_000_000


def _worker_env():
    env = dict(os.environ)
    # numpy's BLAS threads spin while idle and would bill their spinning to the generator.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    return env


class LoadRun:
    """One run of ``config`` on ``workers`` processes (default: every core)."""

    def __init__(self, config, workers=None):
        if not isinstance(config, EngineConfig):
            raise ConfigError("LoadRun needs an EngineConfig")
        workers = os.cpu_count() if workers is None else int(workers)
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if not config.open_loop:
            # A closed loop has no use for more workers than request loops.
            workers = max(1, min(workers, config.schedule.concurrency))
        self.config = config
        self.workers = workers
        self.snapshots = queue.Queue()
        self._lock = threading.Lock()
        self._pipes = []
        self._processes = []
        self._collector = None
        self._result = None
        self._weights = {t.name: t.weight for t in config.targets}

    def start(self, start_at_ns=None):
        """Starts the workers; load begins at wall-clock ``start_at_ns`` (time.time_ns), or
        as soon as every worker has its connections open."""
        with self._lock:
            if self._collector is not None:
                raise EngineError("a LoadRun can be started once")
            config = self.config.to_dict()
            for index in range(self.workers):
                parent, child = socket.socketpair()
                # A fresh interpreter per worker (not fork: the caller may hold threads and
                # locks; not multiprocessing's spawn: it re-imports the caller's __main__).
                process = subprocess.Popen(
                    [sys.executable, "-m", "loadgate.native.engine_worker", str(child.fileno()),
                     str(index), str(self.workers)], pass_fds=[child.fileno()], env=_worker_env())
                child.close()
                pipe = multiprocessing.connection.Connection(parent.detach())
                pipe.send(config)
                self._pipes.append(pipe)
                self._processes.append(process)
            self._collector = threading.Thread(target=self._collect, args=(start_at_ns,),
                                               name="loadgate-engine-collector", daemon=True)
            self._collector.start()

    @property
    def worker_pids(self):
        """The workers' process ids (empty before ``start``): to watch their CPU and memory,
        or to change their scheduling priority."""
        with self._lock:
            return [process.pid for process in self._processes]

    def _send_all(self, message, payload=None):
        with self._lock:
            for pipe in self._pipes:
                try:
                    pipe.send((message, payload))
                except (OSError, ValueError):
                    pass  # that worker has finished or died; the collector accounts for it

    def set_rate_scale(self, factor):
        """From now on, arrivals come ``factor`` times as often as the schedule says."""
        factor = float(factor)
        if not factor > 0:
            raise ConfigError(f"rate scale must be positive, got {factor}")
        self._send_all(Message.RATE_SCALE, factor)

    def set_weights(self, weights):
        """New traffic shares by target name; names not given keep theirs."""
        unknown = set(weights) - set(self._weights)
        if unknown:
            raise ConfigError(f"unknown targets: {sorted(unknown)}")
        weights = {name: float(weight) for name, weight in weights.items()}
        merged = self._weights | weights
        if any(not w >= 0 for w in merged.values()) or sum(merged.values()) <= 0:
            raise ConfigError(f"weights must be >= 0 with a positive sum, got {merged}")
        self._weights = merged
        self._send_all(Message.WEIGHTS, weights)

    def stop(self):
        """Stops generating now.  Requests in flight get a short grace, then are recorded as
        timeouts with their elapsed latency; arrivals not yet sent count NOT_SENT."""
        self._send_all(Message.STOP)

    def join(self, timeout=None):
        """Waits for the run to end and returns its RunResult; EngineError on timeout."""
        if self._collector is None:
            raise EngineError("the run was never started")
        self._collector.join(timeout)
        if self._collector.is_alive():
            raise EngineError(f"the run did not finish within {timeout} s")
        for process in self._processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return self._result

    def drain(self, on_interval=None):
        """Takes every merged interval from ``snapshots``, calling ``on_interval(snapshot)``
        (in this thread) on each, up to the final one; returns the RunResult.  Ctrl-C, or
        ``stop()`` from anywhere (on_interval included), stops the run, which still ends fully
        accounted and still hands every interval to on_interval.  Any other exception from
        on_interval stops the run too, then propagates."""
        snapshot = None
        stopping = False
        while snapshot is None or not snapshot.final:
            try:
                snapshot = self.snapshots.get()
                if on_interval is not None:
                    on_interval(snapshot)
            except KeyboardInterrupt:
                if stopping:
                    raise
                stopping = True
                self.stop()
            except Exception:
                self.stop()
                raise
        return self.join()

    def _collect(self, start_at_ns):
        collector = _Collector(self.workers, self.snapshots)
        pipes = dict(enumerate(self._pipes))
        ready = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        started = False
        while pipes:
            if not started and (ready.issuperset(pipes) or time.monotonic() > deadline):
                if start_at_ns is None:
                    start_at_ns = time.time_ns() + START_MARGIN_NS
                self._send_all(Message.START, start_at_ns)
                started = True
            waiting = multiprocessing.connection.wait(list(pipes.values()), timeout=1.0)
            for pipe in waiting:
                index = next(i for i, p in pipes.items() if p is pipe)
                try:
                    message, payload = pipe.recv()
                except (EOFError, OSError):
                    collector.failed(index, "worker process exited without a final report "
                                            f"(exit code {self._processes[index].poll()})")
                    del pipes[index]
                    continue
                if message is Message.READY:
                    ready.add(index)
                elif message is Message.SNAPSHOT:
                    collector.add(index, payload)
                elif message is Message.FINAL:
                    collector.finish(index, *payload)
                    del pipes[index]
                elif message is Message.FAILED:
                    collector.failed(index, payload[1])
                    del pipes[index]
        self._result = collector.result(self.config.open_loop)
        with self._lock:
            for pipe in self._pipes:
                pipe.close()


class _Collector:
    """Merges the workers' snapshots by interval index and hands each merged interval out as
    soon as every worker still running has reported it.  What it keeps is bounded: the
    intervals still waiting for a worker, and one running total per worker and for the run."""

    def __init__(self, workers, out):
        self.out = out
        self.pending = {}
        self.seen = [-1] * workers
        self.done = [False] * workers
        self.totals = [None] * workers
        self.scheduled = [0] * workers
        self.errors = []
        self.run_total = None
        self.peak_connections = 0
        self.final_sent = False
        self.next_index = 0

    def add(self, worker, snapshot):
        self.seen[worker] = snapshot.index
        if self.totals[worker] is None:
            self.totals[worker] = snapshot.copy()
        else:
            connections = max(self.totals[worker].open_connections, snapshot.open_connections)
            self.totals[worker].merge(snapshot)
            self.totals[worker].open_connections = connections
        if snapshot.index in self.pending:
            self.pending[snapshot.index].merge(snapshot)
        else:
            self.pending[snapshot.index] = snapshot
        self._emit(final=all(self.done))

    def finish(self, worker, snapshot, scheduled):
        snapshot.final = False
        self.scheduled[worker] = scheduled
        self.done[worker] = True
        self.add(worker, snapshot)

    def failed(self, worker, reason):
        self.errors.append(f"worker {worker}: {reason}")
        self.done[worker] = True
        self._emit(final=all(self.done))

    def _emit(self, final):
        while self.pending:
            reported = all(d or s >= self.next_index for d, s in zip(self.done, self.seen))
            if not reported and not final:
                return
            snapshot = self.pending.pop(self.next_index, None)
            self.next_index += 1
            if snapshot is None:
                continue
            snapshot.final = final and not self.pending
            self._hand_out(snapshot)

    def _hand_out(self, snapshot):
        if self.run_total is None:
            self.run_total = IntervalSnapshot(0, snapshot.start_ns, snapshot.end_ns)
        self.run_total.merge(snapshot)
        # A gauge, not a count: merged over time it is the peak, not the sum.
        self.peak_connections = max(self.peak_connections, snapshot.open_connections)
        self.final_sent = snapshot.final
        self.out.put(snapshot)

    def result(self, open_loop):
        if not self.final_sent:
            now = time.time_ns()
            self._hand_out(IntervalSnapshot(self.next_index, now, now, final=True))
        totals = self.run_total
        totals.final = True
        totals.open_connections = self.peak_connections
        workers = [t if t is not None else IntervalSnapshot(0, 0, 0) for t in self.totals]
        return RunResult(totals=totals, scheduled=sum(self.scheduled), open_loop=open_loop,
                         workers=workers, worker_scheduled=list(self.scheduled),
                         worker_errors=list(self.errors))


def run_once(config, workers=None, on_interval=None, start_at_ns=None):
    """Runs ``config`` to the end and returns its RunResult; ``on_interval(snapshot)`` is
    called (in this thread) for every merged interval as it arrives.  Ctrl-C stops the run
    and still returns its result."""
    run = LoadRun(config, workers)
    run.start(start_at_ns)
    return run.drain(on_interval)
