"""The Controller gRPC service (proto/loadgate/v1/controller.proto): runs readiness plans
submitted over gRPC and streams them to any number of watchers.

    service = ControllerService(runs_dir, sources=AgentSources(agents))
    server = service_server.start_server(service, "127.0.0.1:0")   # the gRPC server

RPCs: SubmitPlan validates with the plan loader (INVALID_ARGUMENT listing every issue as
``FILE:LINE:COL: key.path: message``) and starts the run under ``runs_dir/RUN_ID``; a plan
that names hooks is refused (PERMISSION_DENIED) unless the service allows plan hooks, since
hooks run commands or webhooks on this host (and its runs get a HookRunner that runs them
only then).  ListRuns lists live runs and the runs journaled under runs_dir, newest first;
GetRun one of them (NOT_FOUND otherwise).  Approve (a run waiting in OZHIDAET, else
FAILED_PRECONDITION; PERMISSION_DENIED for someone not on the plan's approver list) and
Abort journal who and why.  WatchRun streams serialized RunEvents from the run's WatchHub:
the snapshot, then transitions and merged intervals live; each event is serialized once
however many watch, and at most ``max_watchers`` streams are open (RESOURCE_EXHAUSTED).
A decided run is served from its journal.

Besides the readiness runs (service_runs.ManagedRun) it serves ``loadgate run``'s plain load
run through the same RPCs (service_plain.PlainRun): WatchRun streams its merged intervals,
GetRun and ListRuns describe it, Abort stops it, and Approve is FAILED_PRECONDITION.
"""
import logging
import os
import re
import threading
import time

import grpc

from loadgate.controller.plan import PlanError, parse_plan
from loadgate.controller.readiness_hooks import HookRunner
from loadgate.controller.service_events import RunView
from loadgate.controller.service_runs import AgentSources, ManagedRun, journaled_runs
from loadgate.native.errors import LoadgateError
from loadgate.proto.loadgate.v1 import controller_pb2

log = logging.getLogger("loadgate.controller.service")

SERVICE_NAME = controller_pb2.DESCRIPTOR.services_by_name["Controller"].full_name
# Each watcher holds a server thread (service_server sizes the pool from this).
DEFAULT_MAX_WATCHERS = 48
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


class ControllerService:
    def __init__(self, runs_dir, sources=None, *, allow_hooks=False, tick_s=0.25,
                 queue_limit=None, metrics=None, max_watchers=DEFAULT_MAX_WATCHERS,
                 accept_plans=True):
        self.runs_dir = os.fspath(runs_dir)
        self.sources = sources or AgentSources()
        self.allow_hooks = allow_hooks
        self.tick_s = tick_s
        self.queue_limit = queue_limit
        self.metrics = metrics
        self.max_watchers = max_watchers
        self.accept_plans = accept_plans
        self._runs = {}
        self._decided = {}  # run id -> RunView of a finished run read from runs_dir
        self._cleanups = {}
        self._watchers = 0
        self._lock = threading.Lock()

    # -- runs ------------------------------------------------------------------------------

    def submit(self, plan_yaml, plan_name="<submitted plan>"):
        """Validates and starts a plan; returns its ManagedRun.  PlanError if invalid."""
        plan = parse_plan(plan_yaml, plan_name or "<submitted plan>")
        hooks = [name for name, hook in vars(plan.hooks).items() if hook is not None]
        if hooks and not self.allow_hooks:
            raise HooksRefused("the plan names hooks (" + ", ".join(f"hooks.{h}" for h in hooks)
                               + "); this controller runs hooks only for local plans "
                               "(start it with --allow-plan-hooks to accept them)")
        run_id = "-".join((_UNSAFE_ID.sub("_", plan.deployment.id),
                           time.strftime("%Y%m%dT%H%M%S"), os.urandom(3).hex()))
        run_dir = os.path.join(self.runs_dir, run_id)
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, "plan.yaml"), "w") as handle:
            handle.write(plan_yaml)
        source, cleanup = self.sources(plan, run_dir)
        try:
            managed = ManagedRun(run_id, plan, run_dir, source, tick_s=self.tick_s,
                                 queue_limit=self.queue_limit, metrics=self.metrics,
                                 on_finish=self._finished, hooks=self._hooks(plan, run_dir))
        except BaseException:
            source.stop()
            cleanup()
            raise
        self.add(managed, cleanup)
        managed.start()
        return managed

    def resume_unfinished(self):
        """Takes over every unfinished run journaled under runs_dir (after a restart)."""
        resumed = []
        for run_id, run_dir in journaled_runs(self.runs_dir):
            view = None if run_id in self._runs else RunView.from_run_dir(run_dir)
            if view is None or view.finished:
                continue
            source, cleanup = self.sources(view.plan, run_dir)
            managed = ManagedRun(run_id, view.plan, run_dir, source, tick_s=self.tick_s,
                                 queue_limit=self.queue_limit, metrics=self.metrics,
                                 on_finish=self._finished, resume=True,
                                 hooks=self._hooks(view.plan, run_dir))
            self.add(managed, cleanup)
            resumed.append(managed.start())
        return resumed

    def _hooks(self, plan, run_dir):
        # Plans reach this service over gRPC: their hooks run only if the operator allowed it.
        return HookRunner(plan.deployment.id, cwd=run_dir, allowed=self.allow_hooks)

    def add(self, managed, cleanup=None):
        """Serves a ManagedRun this service did not start (``loadgate run``)."""
        with self._lock:
            self._runs[managed.run_id] = managed
            if cleanup is not None:
                self._cleanups[managed.run_id] = cleanup

    def _finished(self, managed):
        with self._lock:
            cleanup = self._cleanups.pop(managed.run_id, None)
            if managed.view.finished and self._runs.get(managed.run_id) is managed:
                # Its journal says everything now: keep the small view, let the orchestrator,
                # its source and their histograms go.
                self._decided[managed.run_id] = managed.view
                del self._runs[managed.run_id]
        if cleanup is not None:
            cleanup()

    def find(self, run_id):
        """The ManagedRun or (journaled, not live) RunView of run_id; None if unknown.  An
        empty run_id means the newest run."""
        if not run_id:
            infos = self.list_runs()
            if not infos:
                return None
            run_id = infos[0].run_id
        with self._lock:
            managed = self._runs.get(run_id)
        if managed is not None:
            return managed
        if _UNSAFE_ID.search(run_id) or run_id.startswith("."):
            return None
        return self._journaled(run_id, os.path.join(self.runs_dir, run_id))

    def list_runs(self):
        """RunInfo of every run, newest first."""
        with self._lock:
            live = dict(self._runs)
        infos = [m.hub.snapshot_info() for m in live.values()]
        for run_id, run_dir in journaled_runs(self.runs_dir):
            if run_id not in live:
                view = self._journaled(run_id, run_dir)
                if view is not None:
                    infos.append(view.run_info())
        infos.sort(key=lambda info: (info.started_unix_ns, info.run_id), reverse=True)
        return infos

    def _journaled(self, run_id, run_dir):
        # A decided run's journal no longer changes: read it once.
        view = self._decided.get(run_id)
        if view is None:
            view = RunView.from_run_dir(run_dir)
            if view is not None and view.finished:
                self._decided[run_id] = view
        return view

    def close(self):
        """Ends every watch stream and stops the load of running runs; their journals stay,
        so a restarted controller resumes them."""
        with self._lock:
            runs = list(self._runs.values())
        for managed in runs:
            managed.hub.close()
            if not managed.finished:
                managed.stop_load()

    # -- the RPCs --------------------------------------------------------------------------

    def SubmitPlan(self, request, context):
        if not self.accept_plans:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this controller serves one run and accepts no plans")
        try:
            return self.submit(request.plan_yaml, request.plan_name).hub.snapshot_info()
        except PlanError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except HooksRefused as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except (LoadgateError, OSError) as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot start the run: {exc}")

    def ListRuns(self, request, context):
        return controller_pb2.ListRunsReply(runs=self.list_runs())

    def GetRun(self, request, context):
        return _info(self._found(request.run_id, context))

    def Approve(self, request, context):
        managed = self._live(request, context)
        if not managed.approvable:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"run {managed.run_id} is a plain load run (no gates): it has no "
                          "approval step, so there is nothing to approve")
        if not managed.view.waiting:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"run {managed.run_id} is not waiting for an approval")
        approvers = managed.plan.approval.approvers
        if approvers and request.who not in approvers:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{request.who} is not an approver of this plan "
                          f"({', '.join(approvers)})")
        managed.approve(request.who, request.reason)
        return managed.hub.snapshot_info()

    def Abort(self, request, context):
        managed = self._live(request, context)
        managed.abort(request.who, request.reason)
        return managed.hub.snapshot_info()

    def WatchRun(self, request, context):
        found = self._found(request.run_id, context)
        if isinstance(found, RunView):
            yield controller_pb2.RunEvent(snapshot=found.run_info()).SerializeToString()
            if found.finished:
                yield controller_pb2.RunEvent(finished=found.run_info()).SerializeToString()
            return
        with self._lock:
            full = self._watchers >= self.max_watchers
            if not full:
                self._watchers += 1
        if full:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_watchers} watchers already; try again later")
        watcher = found.hub.subscribe()
        context.add_callback(watcher.close)
        try:
            while True:
                data = watcher.next(1.0)
                if data is None:
                    if watcher.closed or not context.is_active():
                        return
                    continue
                yield data
        finally:
            watcher.close()
            with self._lock:
                self._watchers -= 1

    def _found(self, run_id, context):
        found = self.find(run_id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no run {run_id or '(newest)'}")
        return found

    def _live(self, request, context):
        if not request.who or not request.reason:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "who and reason are both required")
        found = self._found(request.run_id, context)
        if isinstance(found, RunView) or found.finished:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"run {request.run_id} is over")
        return found

    def handler(self):
        """The generic handler of the Controller service; WatchRun sends pre-serialized
        events (its response serializer passes bytes through)."""
        def unary(method, request_type):
            return grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=request_type.FromString,
                response_serializer=_serialize)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "SubmitPlan": unary(self.SubmitPlan, controller_pb2.SubmitPlanRequest),
            "ListRuns": unary(self.ListRuns, controller_pb2.ListRunsRequest),
            "GetRun": unary(self.GetRun, controller_pb2.GetRunRequest),
            "Approve": unary(self.Approve, controller_pb2.ApproveRequest),
            "Abort": unary(self.Abort, controller_pb2.AbortRequest),
            "WatchRun": grpc.unary_stream_rpc_method_handler(
                self.WatchRun, request_deserializer=controller_pb2.WatchRunRequest.FromString,
                response_serializer=_as_is),
        })


class HooksRefused(LoadgateError):
    """A submitted plan names hooks and this controller does not run remote plans' hooks."""


def _serialize(message):
    return message.SerializeToString()


def _as_is(data):
    return data


def _info(found):
    return found.run_info() if isinstance(found, RunView) else found.hub.snapshot_info()
