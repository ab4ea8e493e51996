"""One run on this agent: the engine's LoadRun, its sequence-numbered reports, and the
thread that turns engine snapshots into reports.

Reports are kept in memory until the controller acknowledges them as journaled (Ping's
journaled_seq), so a controller that reconnects with the last seq it journaled gets every
later interval exactly once while a long run's memory stays flat.  The encoding of
histograms happens on the pump thread, never on the gRPC event loop.
"""
import asyncio
import enum
import logging
import queue
import shutil
import threading
import time

from loadgate.agent.convert import interval_report
from loadgate.proto.loadgate.v1 import common_pb2

log = logging.getLogger("loadgate.agent")

# After Stop (or the dead-man switch) the engine has this long beyond the request timeout to
# finish outstanding requests and hand over its final snapshot before the run is failed.
STOP_GRACE_S = 10.0


class RunState(enum.Enum):
    PREPARED = "prepared"
    RUNNING = "running"
    FINISHED = "finished"


class RunEnd(enum.IntEnum):
    """Why a run ended; the values are common.proto's RunEnd."""

    COMPLETED = common_pb2.RUN_END_COMPLETED
    STOPPED = common_pb2.RUN_END_STOPPED
    DEAD_MAN = common_pb2.RUN_END_DEAD_MAN
    FAILED = common_pb2.RUN_END_FAILED


class AgentRun:
    """A run from Prepare to its final report.  Control methods are thread-safe; the
    waiting methods are coroutines of the event loop given at construction."""

    def __init__(self, run_id, agent_id, load_run, workers, loop, telemetry=None,
                 timeout_s=10.0, dead_man_s=5.0, shard_requests=0, peak_rate=0.0,
                 weights=None, scratch_dir=None):
        self.run_id = run_id
        self.agent_id = agent_id
        self.load_run = load_run
        self.workers = workers
        self.dead_man_s = dead_man_s
        self.shard_requests = shard_requests
        self.peak_rate = peak_rate
        self.weights = dict(weights or {})  # target name -> current traffic share
        self.timeout_s = timeout_s
        self._scratch_dir = scratch_dir
        self.state = RunState.PREPARED
        self.end = None
        self.start_unix_ns = 0
        self._telemetry = telemetry
        self._loop = loop
        self._lock = threading.Lock()  # the reports and the state
        self._control = threading.Lock()  # start and stop of the engine
        self._reports = []  # the unacknowledged reports: seqs _dropped + 1 ... last_seq
        self._dropped = 0
        self._changed = asyncio.Event()
        self._stop_requested_at = None
        self._telemetry_from = 0
        self._pump = threading.Thread(target=self._pump_reports, daemon=True,
                                      name=f"loadgate-run-{run_id}")

    # -- control (any thread) -------------------------------------------------------------

    def start(self, start_unix_ns):
        """Starts the engine at ``start_unix_ns``; False unless the run is PREPARED.  If the
        engine cannot start, the run fails (final report) and the error is raised."""
        with self._control:
            with self._lock:
                if self.state is not RunState.PREPARED:
                    return False
                self.state = RunState.RUNNING
                self.start_unix_ns = start_unix_ns
                self._telemetry_from = start_unix_ns
            try:
                self.load_run.start(start_at_ns=start_unix_ns)
            except Exception as exc:
                self._fail(f"the engine did not start: {exc}")
                raise
            self._pump.start()
            return True

    def stop(self, end):
        """Stops generating load; the first cause given is the one recorded.  A run never
        started ends at once with an empty final report."""
        # _control orders stop against a start in progress: a stop can never slip in between
        # the state change and the engine's start and be lost.
        with self._control:
            with self._lock:
                if self.state is RunState.FINISHED or self._stop_requested_at is not None:
                    return
                self.end = end
                self._stop_requested_at = time.monotonic()
                never_started = self.state is RunState.PREPARED
            if never_started:
                self._publish(self._final_without_engine(end, 0))
                self._close_engine()
                return
            log.info("run %s: stopping (%s)", self.run_id, end.name)
            self.load_run.stop()

    def remove_scratch(self):
        """Deletes the run's rotation files (once the engine has read them or never will)."""
        if self._scratch_dir:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)

    @property
    def stoppable(self):
        """Neither finished nor already told to stop."""
        return self.state is not RunState.FINISHED and self._stop_requested_at is None

    @property
    def generating(self):
        return self.state is RunState.RUNNING and self._stop_requested_at is None

    @property
    def last_seq(self):
        with self._lock:
            return self._dropped + len(self._reports)

    @property
    def oldest_kept_seq(self):
        """The seq of the first report still held (last_seq + 1 when none is)."""
        with self._lock:
            return self._dropped + 1

    def acknowledge(self, journaled_seq):
        """Drops the reports with seq <= ``journaled_seq`` (never one not yet published);
        returns how many are still held."""
        with self._lock:
            drop = min(journaled_seq, self._dropped + len(self._reports)) - self._dropped
            if drop > 0:
                del self._reports[:drop]
                self._dropped += drop
            return len(self._reports)

    def reports_after(self, seq):
        """The reports still held with a seq above ``seq``, in order (for observers that may
        miss acknowledged ones, such as the metrics exporter)."""
        with self._lock:
            return list(self._reports[max(0, seq - self._dropped):])

    def replay_after(self, seq):
        """Every report with a seq above ``seq``, in order; None if some were acknowledged
        and dropped (a stream must not skip them silently)."""
        with self._lock:
            if seq < self._dropped:
                return None
            return list(self._reports[seq - self._dropped:])

    # -- waiting (event loop) -------------------------------------------------------------

    async def wait_beyond(self, seq, timeout):
        """Returns once a report with seq > ``seq`` exists, the run finished, or timeout."""
        changed = self._changed
        if self.last_seq > seq or self.state is RunState.FINISHED:
            return
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def wait_finished(self, timeout):
        deadline = time.monotonic() + timeout
        while self.state is not RunState.FINISHED and time.monotonic() < deadline:
            await self.wait_beyond(self.last_seq, deadline - time.monotonic())
        return self.state is RunState.FINISHED

    def _wake(self):
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- the pump thread ------------------------------------------------------------------

    def _publish(self, report):
        with self._lock:
            if self.state is RunState.FINISHED:
                return
            report.seq = self._dropped + len(self._reports) + 1
            # Watchers of the merged run match each agent's health by this id, not position.
            report.health.agent_id = self.agent_id
            self._reports.append(report)
            if report.final:
                self.state = RunState.FINISHED
        if report.final:
            self.remove_scratch()
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            pass  # the agent's loop has closed: nobody is waiting

    def _pump_reports(self):
        try:
            while True:
                try:
                    snapshot = self.load_run.snapshots.get(timeout=0.25)
                except queue.Empty:
                    if self._stop_overdue():
                        self._fail("the engine did not hand over its final interval after stop")
                        return
                    continue
                telemetry = ()
                if self._telemetry is not None:
                    # Workers' interval bounds may overlap by a little; each sample goes to
                    # exactly one report, and the sampler lets go of what the reports took.
                    telemetry = self._telemetry.take(self._telemetry_from, snapshot.end_ns)
                    self._telemetry_from = max(self._telemetry_from, snapshot.end_ns)
                report = interval_report(snapshot, self.run_id, self.agent_id, 0, self.workers,
                                         telemetry)
                if snapshot.final:
                    result = self.load_run.join(timeout=STOP_GRACE_S)
                    report.scheduled_total = int(result.scheduled)
                    report.run_end = int(self.end or RunEnd.COMPLETED)
                    if self.end is None:
                        self.end = RunEnd.COMPLETED
                self._publish(report)
                if snapshot.final:
                    log.info("run %s: finished (%s) after %d reports", self.run_id,
                             self.end.name, self.last_seq)
                    return
        except Exception as exc:  # the engine failed: the reports so far stand
            log.exception("run %s: engine failed", self.run_id)
            self._fail(f"{type(exc).__name__}: {exc}")

    def _stop_overdue(self):
        started = self._stop_requested_at
        return started is not None and time.monotonic() - started > self.timeout_s + STOP_GRACE_S

    def _fail(self, reason):
        log.error("run %s: failed: %s", self.run_id, reason)
        self.end = RunEnd.FAILED
        self._publish(self._final_without_engine(RunEnd.FAILED, self.shard_requests))
        self._close_engine()

    def _final_without_engine(self, end, scheduled):
        now = time.time_ns()
        return common_pb2.IntervalReport(run_id=self.run_id, agent_id=self.agent_id,
                                         start_unix_ns=now, end_unix_ns=now, final=True,
                                         scheduled_total=scheduled, run_end=int(end))

    def _close_engine(self):
        try:
            self.load_run.stop()
        except Exception:  # a LoadRun that never started may refuse; nothing is running
            log.debug("run %s: engine stop after failure", self.run_id, exc_info=True)
