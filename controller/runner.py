"""A distributed load run: one controller, several agents, one merged result.

``DistributedRun`` is the async API that ``loadgate run`` (run_cli), the readiness
orchestrator (through runner_source.AgentMeasurementSource) and the controller service
drive::

    run = DistributedRun(definition_or_plan, ["10.0.0.5:7070", ...], run_dir)
    await run.prepare()          # Describe, clock probe (min-RTT Ping), Prepare each shard
    await run.start()            # agree an instant in the near future; streams begin
    async for merged in run.intervals():   # MergedInterval, in index order
        ...                      # await run.adjust(rate_scale=..., weights={...}) any time
    summary = await run.wait()   # every agent final (or lost); summary.json written
    await run.close()

- ``definition_or_plan``: a runner_spec.RunDefinition (targets, schedule, engine settings,
  agent-loss policy) or a Plan.  Agent ``i`` of N generates shard ``i`` of N of the schedule.
- ``run_dir``: a path or rundir.RunDir; see rundir for what is written there.
- ``add_listener(callback)`` / ``intervals()``: every merged.MergedInterval as it is handed
  out, in index order: ``index``, ``start_ns``/``end_ns`` (controller clock), ``intended``,
  ``sent``, ``targets`` (name -> TargetTotals: a Histogram per Metric, outcomes, sent, late,
  bytes_read), ``agents``/``missing``/``discarded``/``saturated`` (agent ids), ``telemetry``
  ((agent id, TelemetrySample) pairs), ``cpu_seconds``, ``max_lag_us``, ``health`` (agent id
  -> the GeneratorHealth it reported, every agent of the run in agent order, only its
  ``agent_id`` for one that sent nothing), and ``correction`` (late data for an interval
  already handed out: add it to that one).
- ``adjust(rate_scale, weights)``: ``rate_scale`` multiplies the plan's schedule from now on
  (absolute, not cumulative); ``weights`` replaces the named targets' traffic shares.
- ``stop(reason)``: agents stop; the run ends once their final reports are in.
- ``summary()``: the summary dict (docs/summary-json.md), final once ``wait`` returned;
  ``status`` is a runner_session.RunStatus, ``sessions`` the per-agent state.
- runner_resume.resume_run(run_dir) rebuilds a run whose controller died; ``launch()`` then
  ``wait()`` collect the rest from the agents.

Each agent has two tasks (runner_loss): a heartbeat (Ping every ``heartbeat_s`` on its own
channel; an agent silent for ``lost_after_s`` is lost) and a report stream (StreamReports
from the last accepted seq, reconnecting until the final report, so nothing is lost or
doubled).  One ingest task journals accepted reports in fsynced batches and only then merges
them (runner_ingest).  A watchdog releases overdue intervals and ends the run.  Everything
runs on one event loop, so the state below is only touched between awaits.

How the run ends, and what happens when the run directory refuses a write (``write_error``:
the run ends FAILED, load stopped, journal kept whole), is in runner_end.
"""
import asyncio
import logging
import os
import time
import uuid

from loadgate.controller.merge import IntervalMerger, RunTotals
from loadgate.controller.run_journal import RecordKind, RunDirWriteError
from loadgate.controller.runner_agents import AgentClient
from loadgate.controller.runner_ingest import ReportIngest
from loadgate.controller.runner_end import RunEndMixin
from loadgate.controller.runner_loss import AgentLossMixin
from loadgate.controller.runner_reports import AgentStream, HistogramLayout
from loadgate.controller.runner_session import AgentSession, AgentState, RunStatus
from loadgate.controller.runner_spec import RunDefinition
from loadgate.controller.runner_summary import build_summary
from loadgate.controller.rundir import RunDir
from loadgate.native.errors import ConfigError, InfrastructureError
from loadgate.proto.loadgate.v1 import common_pb2

log = logging.getLogger("loadgate.controller")

NS = 1_000_000_000


class DistributedRun(RunEndMixin, AgentLossMixin):
    """One run across agents (see the module docstring for the calling sequence)."""

    def __init__(self, definition, agents, run_dir, *, run_id=None, controller_id=None,
                 heartbeat_s=0.5, lost_after_s=2.0, start_lead_s=1.0, clock_samples=7,
                 end_grace_s=None, layout=None, credentials=None, metadata=()):
        if not isinstance(definition, RunDefinition):
            definition = RunDefinition.from_plan(definition)
        if not agents:
            raise ConfigError("a distributed run needs at least one agent")
        if len(set(agents)) != len(agents):
            raise ConfigError(f"agent addresses must be unique, got {list(agents)}")
        self.definition = definition
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.run_id = run_id or f"run-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.controller_id = controller_id or f"controller-{os.getpid()}"
        self.heartbeat_s = heartbeat_s
        self.lost_after_s = lost_after_s
        self.start_lead_s = start_lead_s
        self.clock_samples = clock_samples
        # Agents get the schedule's length plus their own timeout to finish and report.
        self.end_grace_s = end_grace_s if end_grace_s is not None else (
            definition.timeout_s + 2 * definition.interval_s + 3.0)
        self.layout = layout or HistogramLayout()
        self.sessions = [AgentSession(i, address, AgentClient(address, self.controller_id,
                                                              credentials, metadata))
                         for i, address in enumerate(agents)]
        self.status = RunStatus.PREPARING
        self.stop_reason = ""
        self.start_ns = None  # controller clock
        self.finished_ns = None
        self.span_start_ns = 0  # first start and last end of the merged intervals
        self.span_end_ns = 0
        self.user_rate_scale = 1.0
        self.weights = {t.name: t.weight for t in definition.targets}
        self.ingest = None
        self._tasks = []
        self._listeners = []
        self._queues = []
        self._wake_ingest = asyncio.Event()
        self._ingest_lock = asyncio.Lock()  # one journal write at a time, FINISHED last
        self._done = asyncio.Event()
        self._stopping = False
        self._summary = None
        self.write_error = None  # the first RunDirWriteError of the run

    # -- the calling sequence -------------------------------------------------------------

    async def prepare(self):
        """Describes every agent, measures its clock and has it prepare its shard (and stops
        them again if the run was stopped meanwhile: ``status`` is then no longer PREPARED)."""
        await asyncio.gather(*(s.client.describe() for s in self.sessions))
        ids = [s.client.agent_id for s in self.sessions]
        if len(set(ids)) != len(ids):
            raise InfrastructureError(f"agents must have distinct ids, got {ids}")
        await asyncio.gather(*(s.client.measure_clock(self.clock_samples) for s in self.sessions))
        count = len(self.sessions)
        for s in self.sessions:
            s.shard_requests = self.definition.shard_requests(s.index, count)
            s.stream = AgentStream(self.run_id, s.agent_id, self.definition.target_names,
                                   self.layout)
        description = self._description()
        self.run_dir.write_run(description)
        self.run_dir.journal.append_many(
            [(RecordKind.RUN, description)]
            + [(RecordKind.CLOCK, {"agent_id": s.agent_id, **s.client.clock.to_dict()})
               for s in self.sessions])
        try:
            replies = await asyncio.gather(*(s.client.prepare(
                self.run_id, self.definition.run_spec(s.index, count)) for s in self.sessions))
        except InfrastructureError:
            await asyncio.gather(*(self._quietly(s.client.stop(self.run_id, "prepare failed"))
                                   for s in self.sessions))
            raise
        if self.status is not RunStatus.PREPARING:
            # stop() came while the agents prepared (Ctrl-C, an Abort): their shards must not
            # wait for a start.
            await asyncio.gather(*(self._quietly(s.client.stop(self.run_id, self.stop_reason))
                                   for s in self.sessions))
            return
        self.run_dir.journal.append_many([(RecordKind.PREPARED, {
            "agent_id": s.agent_id, "workers": r.workers, "shard_rate": r.shard_rate,
            "shard_requests": r.shard_requests}) for s, r in zip(self.sessions, replies)])
        for s, reply in zip(self.sessions, replies):
            s.state = AgentState.PREPARED
            s.workers = reply.workers
        self.status = RunStatus.PREPARED

    async def start(self, lead_s=None):
        """Starts every agent at one instant ``lead_s`` from now (controller clock), each told
        the instant on its own clock; returns that instant (ns, controller clock)."""
        if self.status is not RunStatus.PREPARED:
            raise InfrastructureError(f"start() needs a prepared run, the run is {self.status.value}")
        worst_rtt_s = max(s.client.clock.rtt_ns for s in self.sessions) / NS
        lead = max(lead_s if lead_s is not None else self.start_lead_s, 4 * worst_rtt_s)
        self.start_ns = time.time_ns() + int(lead * NS)
        await asyncio.gather(*(s.client.start(self.run_id, self.start_ns + s.client.clock.offset_ns)
                               for s in self.sessions))
        self.run_dir.journal.append(RecordKind.STARTED, start_ns=self.start_ns, agents={
            s.agent_id: self.start_ns + s.client.clock.offset_ns for s in self.sessions})
        self._setup()
        self.launch()
        return self.start_ns

    def add_listener(self, callback):
        """Calls ``callback(merged_interval)`` for every interval handed out from now on."""
        self._listeners.append(callback)

    def intervals(self):
        """An async iterator of MergedInterval (corrections included), ending with the run."""
        queue = asyncio.Queue()
        self._queues.append(queue)
        if self._done.is_set():
            queue.put_nowait(None)
        return _drain(queue)

    async def adjust(self, rate_scale=None, weights=None):
        """Changes the whole run's rate (a factor on the plan's schedule) and/or target
        weights, on every agent still generating."""
        if self.status is not RunStatus.RUNNING:
            raise InfrastructureError(f"adjust() needs a running run, the run is "
                                      f"{self.status.value}")
        if rate_scale is not None:
            if not rate_scale > 0:
                raise ConfigError(f"rate_scale must be positive, got {rate_scale!r}")
            self.user_rate_scale = float(rate_scale)
        if weights:
            self.definition.with_weights(weights)
            self.weights.update(weights)
        await self._push_adjustment(weights=weights or None)

    async def stop(self, reason="stopped by the controller"):
        """Stops load on every agent; the run ends once their final reports are in (at once
        if it never started)."""
        if self.status in (RunStatus.PREPARING, RunStatus.PREPARED):
            self.status = RunStatus.STOPPED
            self.stop_reason = reason
            await self._stop_agents(reason)
            self._conclude()
            self._done.set()
            for queue in self._queues:
                queue.put_nowait(None)
            return
        if self.status is RunStatus.RUNNING:
            self.status = RunStatus.STOPPED
            self.stop_reason = reason
        await self._stop_agents(reason)

    async def wait(self, timeout=None):
        """Waits for the end of the run; returns the summary (also written to the run dir)."""
        await asyncio.wait_for(self._done.wait(), timeout)
        return self._summary

    def summary(self):
        """The summary as it stands (final once ``wait`` returned)."""
        return self._summary or build_summary(self)

    async def close(self):
        """Stops the tasks and closes channels and files (stops agents first if still on)."""
        if not self._done.is_set() and self.status in (RunStatus.RUNNING, RunStatus.STOPPED):
            await self._stop_agents("controller closing")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(s.client.close() for s in self.sessions), return_exceptions=True)
        self.run_dir.close()

    async def run(self, on_interval=None):
        """prepare + start + wait, calling ``on_interval`` for each merged interval."""
        if on_interval:
            self.add_listener(on_interval)
        await self.prepare()
        await self.start()
        return await self.wait()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # -- running ---------------------------------------------------------------------------

    def _setup(self):
        self.status = RunStatus.RUNNING
        totals = RunTotals(self.definition.target_names, self.layout)
        merger = IntervalMerger(self.definition.target_names, [s.agent_id for s in self.sessions],
                                self.layout, {s.agent_id: s.client.clock.offset_ns
                                              for s in self.sessions}, totals)
        self.ingest = ReportIngest(self.run_dir.journal, merger, totals)
        self.run_dir.open_outputs(self.definition.target_names, self.start_ns / NS)
        for s in self.sessions:
            s.state = AgentState.RUNNING

    def launch(self):
        """Starts the heartbeat, stream, ingest and watchdog tasks (``start`` does; a resumed
        run calls it itself once the journal is replayed)."""
        now = time.monotonic()
        for s in self.sessions:
            s.last_answer = now
            self._spawn(self._heartbeat(s))
            self._spawn(self._stream(s))
        self._spawn(self._ingest_loop())
        self._spawn(self._watchdog())

    def _spawn(self, coroutine):
        self._tasks.append(asyncio.create_task(self._guarded(coroutine)))

    async def _guarded(self, coroutine):
        # A bug in one task must end the run visibly, not leave it waiting forever.
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except RunDirWriteError as exc:
            self._write_failed(exc)
        except Exception as exc:
            log.exception("run %s: internal error", self.run_id)
            if not self._done.is_set():
                self.status = RunStatus.FAILED
                self.stop_reason = f"internal error: {exc!r}"
                await self._stop_agents(self.stop_reason)
                await self._finish()

    async def _ingest_loop(self):
        while True:
            await self._wake_ingest.wait()
            self._wake_ingest.clear()
            await self._flush_ingest()

    async def _flush_ingest(self):
        async with self._ingest_lock:
            if self._done.is_set():
                return
            await self._journal_and_merge()
        self._mark_finished()
        self._check_end()

    def _mark_finished(self):
        # Finished means the final report is merged, not merely received.
        for s in self.sessions:
            own = self.ingest.totals.per_agent.get(s.agent_id)
            if own and own.finished and s.state in (AgentState.RUNNING, AgentState.LOST):
                s.state = AgentState.FINISHED

    async def _watchdog(self):
        interval_ns = int(self.definition.interval_s * NS)
        overdue_ns = int((2 * self.definition.interval_s + self.lost_after_s) * NS)
        end_ns = self.start_ns + int((self.definition.duration_s + self.end_grace_s) * NS)
        while not self._done.is_set():
            await asyncio.sleep(min(0.25, self.definition.interval_s / 2))
            now = time.time_ns()
            # An interval every live agent should have reported long ago goes out without the
            # absent ones; what they send later comes out as a correction.
            due = (now - self.start_ns - overdue_ns) // interval_ns - 1
            pending = self.ingest.merger.pending_indices
            if pending and pending[0] <= due:
                self._emit(self.ingest.merger.release(min(due, pending[-1])))
            self._check_end()
            if now > end_ns and not self._stopping:
                self._stopping = True
                self._spawn(self._stop_agents("the run is overdue"))
            elif now > end_ns + int(self.end_grace_s * NS):
                for s in self.sessions:
                    if s.state in (AgentState.RUNNING, AgentState.PREPARED):
                        s.state = AgentState.UNFINISHED
                await self._finish()

    def _emit(self, ready):
        interval_ns = int(self.definition.interval_s * NS)
        for merged in ready:
            if not merged.end_ns:
                # No report made it in (every agent lost, done or refused): it still covers
                # its span.
                merged.start_ns = self.start_ns + merged.index * interval_ns
                merged.end_ns = merged.start_ns + interval_ns
            else:
                self.span_start_ns = min(self.span_start_ns or merged.start_ns, merged.start_ns)
                self.span_end_ns = max(self.span_end_ns, merged.end_ns)
            reported = merged.health
            merged.health = {}
            for s in self.sessions:
                health = reported.get(s.agent_id)
                merged.health[s.agent_id] = health if health is not None else \
                    common_pb2.GeneratorHealth(agent_id=s.agent_id)
            if self.write_error is None:
                try:
                    self.run_dir.write_interval(merged)
                except RunDirWriteError as exc:
                    self._write_failed(exc)
            for listener in self._listeners:
                listener(merged)
            for queue in self._queues:
                queue.put_nowait(merged)

    def _description(self):
        return {"run_id": self.run_id, "controller_id": self.controller_id,
                "definition": self.definition.to_dict(),
                "agents": [{"address": s.address, "agent_id": s.agent_id,
                            "shard_index": s.index, "shard_count": len(self.sessions),
                            "shard_requests": s.shard_requests,
                            "clock": s.client.clock.to_dict()} for s in self.sessions]}


async def _drain(queue):
    while True:
        merged = await queue.get()
        if merged is None:
            return
        yield merged
