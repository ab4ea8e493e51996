"""The Agent gRPC service: a grpc.aio server that prepares, starts, streams and stops runs
of the load engine, within the limits of its own command line.

The event loop only answers calls: the load runs in the engine's worker processes, reports
are encoded on each run's pump thread, telemetry is sampled on its own thread, and the
dead-man switch is a thread too, so a slow loop can delay a reply but never the switch.

Every authenticated call (Ping above all, but also Describe, Prepare, Start, Adjust, Stop and
the opening of StreamReports) re-arms the switch; a report stream left open does not, so a
controller that dies with its stream open still trips it.  A run's switch time is the
agent's --dead-man, or the RunSpec's dead_man_s when that is shorter.
"""
import asyncio
import logging
import math
import os
import platform
import shutil
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc

from loadgate.agent.convert import engine_config, peak_rate, schedule_of
from loadgate.agent.runs import AgentRun, RunEnd, RunState
from loadgate.agent.safety import Allowlist, NotAllowed
from loadgate.native.engine import LoadRun
from loadgate.native.errors import ConfigError, LoadgateError
from loadgate.proto.loadgate.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("loadgate.agent")

MAX_RECEIVE_BYTES = 16 << 20   # a RunSpec with rotating bodies is the largest request
MAX_SEND_BYTES = 16 << 20      # one interval report: histograms and telemetry samples
MAX_CONCURRENT_STREAMS = 32    # per HTTP/2 connection
MAX_CONCURRENT_RPCS = 64       # over the whole server; more are refused RESOURCE_EXHAUSTED
FINISHED_RUNS_KEPT = 8         # reports of older runs are dropped
DEAD_MAN_CHECK_S = 0.1


def _version():
    try:
        from importlib.metadata import version
        return version("loadgate")
    except Exception:  # running from a source tree without metadata
        return "0+unknown"


@dataclass
class AgentOptions:
    """The agent's own limits and identity; nothing here can be changed over the wire."""

    listen: str = "127.0.0.1:0"
    agent_id: str = ""
    workers: int = 0
    dead_man_s: float = 5.0
    telemetry_interval_s: float = 1.0
    allowlist: Allowlist = field(default_factory=Allowlist)
    max_rate: float = 0.0
    max_connections: int = 0
    token: str = ""
    tls: tuple = ()  # (cert, key, ca) paths


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, options, telemetry, loop):
        self.options = options
        self.telemetry = telemetry
        self.loop = loop
        self.workers = options.workers or os.cpu_count() or 1
        self.runs = OrderedDict()
        # Called before acknowledged reports are dropped, so /metrics has seen them first.
        self.before_acknowledge = None
        self.last_contact = time.monotonic()
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._dead_man_loop, daemon=True,
                                          name="loadgate-dead-man")

    def start_watchdog(self):
        self._watchdog.start()

    def close(self):
        """Stops every run and removes their scratch files; the agent is going away."""
        self._stopping.set()
        for run in self.runs.values():
            run.stop(RunEnd.STOPPED)
            run.remove_scratch()

    # -- the dead-man switch --------------------------------------------------------------

    def _touch(self):
        self.last_contact = time.monotonic()

    def _dead_man_loop(self):
        while not self._stopping.wait(DEAD_MAN_CHECK_S):
            silent = time.monotonic() - self.last_contact
            for run in list(self.runs.values()):
                if run.stoppable and silent > run.dead_man_s:
                    log.warning("run %s: no controller call for %.1f s: stopping load (dead man)",
                                run.run_id, silent)
                    run.stop(RunEnd.DEAD_MAN)

    # -- helpers --------------------------------------------------------------------------

    def _active(self):
        for run in self.runs.values():
            if run.state is not RunState.FINISHED:
                return run
        return None

    async def _run(self, run_id, context):
        run = self.runs.get(run_id)
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {run_id!r} on this agent")
        return run

    def _check_rate(self, rate):
        if self.options.max_rate and rate > self.options.max_rate * (1 + 1e-9):
            raise NotAllowed(f"rate {rate:g}/s is over this agent's cap of "
                             f"{self.options.max_rate:g}/s")

    def _forget_old_runs(self):
        finished = [k for k, r in self.runs.items() if r.state is RunState.FINISHED]
        for run_id in finished[:-FINISHED_RUNS_KEPT]:
            del self.runs[run_id]

    # -- the service ----------------------------------------------------------------------

    async def Describe(self, request, context):
        self._touch()
        nvml = self.telemetry.nvml
        info = agent_pb2.NodeInfo(
            agent_id=self.options.agent_id, hostname=socket.gethostname(),
            cpu_count=os.cpu_count() or 1, workers=self.workers,
            memory_total_bytes=self.telemetry.host.memory_total_bytes,
            gpu_unavailable_reason=self.telemetry.gpu_unavailable_reason,
            loadgate_version=_version(), python_version=platform.python_version(),
            driver_version=nvml.driver_version, unix_ns=time.time_ns(),
            max_rate=self.options.max_rate, max_connections=self.options.max_connections,
            allowlist=list(self.options.allowlist))
        for gpu in nvml.describe():
            info.gpus.add(**gpu)
        return info

    async def Ping(self, request, context):
        self._touch()
        run = self._active()
        acknowledged = self.runs.get(request.run_id) if request.run_id else None
        if acknowledged and self.before_acknowledge is not None:
            self.before_acknowledge()
        buffered = acknowledged.acknowledge(request.journaled_seq) if acknowledged else 0
        return agent_pb2.PingReply(controller_unix_ns=request.controller_unix_ns,
                                   agent_unix_ns=time.time_ns(),
                                   active_run_id=run.run_id if run else "",
                                   generating=bool(run and run.generating),
                                   buffered_reports=buffered)

    async def Prepare(self, request, context):
        self._touch()
        if not request.run_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "run_id is empty")
        if request.run_id in self.runs:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"run {request.run_id!r} was already prepared on this agent")
        active = self._active()
        if active is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"run {active.run_id!r} is still in progress on this agent")
        try:
            run = await asyncio.get_running_loop().run_in_executor(None, self._prepare, request)
        except NotAllowed as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except LoadgateError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if self._active() is not None or request.run_id in self.runs:
            run.stop(RunEnd.STOPPED)
            await context.abort(grpc.StatusCode.ABORTED, "another Prepare won the race")
        self.runs[request.run_id] = run
        self._forget_old_runs()
        # Where the load goes, as the engine will connect: pinned addresses, or names the
        # operator listed (resolved by the engine).
        destinations = ", ".join(f"{t.name} -> {t.address or t.host}"
                                 for t in run.load_run.config.targets)
        log.info("run %s: prepared (%d requests on %d workers; %s)", run.run_id,
                 run.shard_requests, run.workers, destinations)
        return agent_pb2.PrepareReply(run_id=run.run_id, workers=run.workers,
                                      shard_rate=peak_rate(request.spec.schedule),
                                      shard_requests=run.shard_requests)

    def _prepare(self, request):
        # Runs on an executor thread: DNS for the allowlist and the engine's set-up may block.
        spec = request.spec
        addresses = {}
        for target in spec.targets:
            checked = self.options.allowlist.check_url(target.url)
            if checked is not None:
                addresses[target.name] = str(checked[0])
        self._check_rate(peak_rate(spec.schedule))
        workers = min(spec.workers or self.workers, self.workers)  # never more than its own
        schedule = schedule_of(spec.schedule)
        # Only rotation items need files; a run without them leaves nothing on disk.
        scratch_dir = None
        if any(t.request.rotate for t in spec.targets):
            scratch_dir = tempfile.mkdtemp(prefix="loadgate-agent-")
        try:
            config = engine_config(spec, schedule, scratch_dir, addresses)
            self._check_connections(config, schedule, workers)
            load_run = LoadRun(config, workers=workers)
        except BaseException:
            if scratch_dir:
                shutil.rmtree(scratch_dir, ignore_errors=True)
            raise
        dead_man_s = self.options.dead_man_s
        if spec.dead_man_s > 0:
            dead_man_s = min(dead_man_s, spec.dead_man_s)  # a controller may only tighten it
        return AgentRun(request.run_id, self.options.agent_id, load_run, workers, self.loop,
                        telemetry=self.telemetry, timeout_s=config.timeout_s,
                        dead_man_s=dead_man_s, shard_requests=schedule.total_count(),
                        peak_rate=peak_rate(spec.schedule),
                        weights={t.name: t.weight for t in config.targets},
                        scratch_dir=scratch_dir)

    def _check_connections(self, config, schedule, workers):
        # The engine's pool sizes are per target across all workers, at least one per worker.
        cap = self.options.max_connections
        if not cap:
            return
        per_target = max(config.connections, config.max_connections, workers)
        wanted = per_target * len(config.targets)
        if not schedule.is_open_loop:
            wanted = max(wanted, schedule.concurrency)
        if wanted > cap:
            raise NotAllowed(f"{wanted} connections ({len(config.targets)} targets, {workers} "
                             f"workers) is over this agent's cap of {cap}")

    async def Start(self, request, context):
        self._touch()
        run = await self._run(request.run_id, context)
        start_ns = max(request.start_unix_ns, time.time_ns())
        try:
            started = await asyncio.get_running_loop().run_in_executor(None, run.start, start_ns)
        except Exception as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"the engine did not start: {exc}")
        if not started:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"run {run.run_id!r} is {run.state.value}, not prepared")
        log.info("run %s: starting at %d", run.run_id, start_ns)
        return agent_pb2.StartReply(run_id=run.run_id, start_unix_ns=start_ns)

    async def StreamReports(self, request, context):
        self._touch()
        run = await self._run(request.run_id, context)
        seq = request.after_seq
        if seq > run.last_seq and run.state is RunState.FINISHED:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"after_seq {seq} is past the final report ({run.last_seq})")
        while True:
            reports = run.replay_after(seq)
            if reports is None:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                    f"after_seq {seq} is before the oldest report still held "
                                    f"(seq {run.oldest_kept_seq}): the controller acknowledged "
                                    "the reports up to it as journaled and they were dropped")
            for report in reports:
                yield report
                seq = report.seq
            if run.state is RunState.FINISHED and seq >= run.last_seq:
                return
            await run.wait_beyond(seq, timeout=1.0)

    async def Adjust(self, request, context):
        self._touch()
        run = await self._run(request.run_id, context)
        if run.state is not RunState.RUNNING or not run.generating:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"run {run.run_id!r} is not generating load")
        weights = dict(request.weights)
        merged = dict(run.weights, **weights)
        if set(weights) - set(run.weights) or sum(merged.values()) <= 0 \
                or not all(math.isfinite(w) and w >= 0 for w in weights.values()):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"weights {weights} must name targets of the run "
                                f"({sorted(run.weights)}), be finite, non-negative and leave "
                                "some traffic")
        scale = request.rate_scale
        if scale:
            if not (math.isfinite(scale) and scale > 0):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"rate_scale must be a positive number, got {scale}")
            try:
                self._check_rate(run.peak_rate * scale)
            except NotAllowed as exc:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            run.load_run.set_rate_scale(scale)
        if weights:
            run.load_run.set_weights(weights)
            run.weights = merged
        return agent_pb2.AdjustReply(run_id=run.run_id)

    async def Stop(self, request, context):
        self._touch()
        run = await self._run(request.run_id, context)
        log.info("run %s: stop requested: %s", run.run_id, request.reason or "(no reason)")
        await asyncio.get_running_loop().run_in_executor(None, run.stop, RunEnd.STOPPED)
        await run.wait_finished(timeout=run.timeout_s + 15.0)
        return agent_pb2.StopReply(run_id=run.run_id, last_seq=run.last_seq)
