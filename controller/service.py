"""The Controller gRPC service (proto/loadgate/v1/controller.proto): runs readiness plans
submitted over gRPC and streams them to any number of watchers.

    service = ControllerService(runs_dir, sources=AgentSources(agents))
    server = start_server(service, "127.0.0.1:0", token=None, tls_dir=None)
    ...  server.port, server.address
    server.stop()                      # stops the load of running runs (journals stay)

``loadgate run`` serves the one run it drives with ``serve_run``::

    managed = ManagedRun(run_id, plan, run_dir, source).start()
    server = serve_run(managed, "127.0.0.1:0")   # SubmitPlan answers FAILED_PRECONDITION
    managed.wait(); server.stop()

RPCs: SubmitPlan validates with the plan loader (INVALID_ARGUMENT listing every issue as
``FILE:LINE:COL: key.path: message``) and starts the run under ``runs_dir/RUN_ID``; a plan
that names hooks is refused (PERMISSION_DENIED) unless the service allows plan hooks, since
hooks run commands or webhooks on this host.  ListRuns lists live runs and the runs
journaled under runs_dir, newest first; GetRun one of them (NOT_FOUND otherwise).  Approve
(a run waiting in OZHIDAET, else FAILED_PRECONDITION; PERMISSION_DENIED for someone not on
the plan's approver list) and Abort journal who and why.  WatchRun streams serialized
RunEvents from the run's WatchHub: the snapshot, then transitions and merged intervals live;
each event is serialized once however many watch.  Health and reflection are served; only
the health service is open without the token when one is required.
"""
import concurrent.futures
import hmac
import logging
import os
import re
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from loadgate.controller.certs import CertFiles
from loadgate.controller.plan import PlanError, parse_plan
from loadgate.controller.readiness_hooks import HookRunner
from loadgate.controller.service_events import RunView
from loadgate.controller.service_runs import AgentSources, ManagedRun, journaled_runs
from loadgate.native.errors import ConfigError, LoadgateError
from loadgate.proto.loadgate.v1 import controller_pb2

log = logging.getLogger("loadgate.controller.service")

SERVICE_NAME = controller_pb2.DESCRIPTOR.services_by_name["Controller"].full_name
MAX_RECEIVE_BYTES = 4 * 1024 * 1024    # a plan is a few KiB
MAX_SEND_BYTES = 64 * 1024 * 1024      # an interval carries every target's histogram
# Watchers each hold a server thread; the rest stay free for the unary calls.
DEFAULT_MAX_WATCHERS = 48
UNARY_THREADS = 8
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
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


class TokenInterceptor(grpc.ServerInterceptor):
    """Admits a call only with ``authorization: Bearer <token>``; health probes are open."""

    def __init__(self, token):
        if not token:
            raise ConfigError("the token file is empty")
        self._expected = b"Bearer " + token.encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        presented = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
        handler = continuation(handler_call_details)
        if handler is None or (presented is not None and
                               hmac.compare_digest(presented, self._expected)):
            return handler
        message = ("no bearer token" if presented is None else "wrong bearer token") + \
            ": this controller requires its token"

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                refuse, request_deserializer=handler.request_deserializer)
        return grpc.unary_unary_rpc_method_handler(
            refuse, request_deserializer=handler.request_deserializer)


class ControllerServer:
    """A running gRPC server with the Controller, health and reflection services."""

    def __init__(self, server, port, address, service, health_servicer):
        self.server = server
        self.port = port
        self.address = address
        self.service = service
        self.health = health_servicer

    def stop(self, grace_s=2.0):
        self.health.enter_graceful_shutdown()
        self.service.close()
        self.server.stop(grace_s).wait()

    def wait(self):
        self.server.wait_for_termination()


def start_server(service, listen, *, token=None, tls_dir=None, max_workers=None):
    """Binds ``listen`` (HOST:PORT, port 0 picks one) and starts serving ``service``."""
    workers = max_workers or service.max_watchers + UNARY_THREADS
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                              thread_name_prefix="loadgate-controller"),
        interceptors=[TokenInterceptor(token)] if token else [],
        options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                 ("grpc.max_send_message_length", MAX_SEND_BYTES),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=workers)
    server.add_generic_rpc_handlers((service.handler(),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    try:
        if tls_dir:
            port = server.add_secure_port(listen, server_credentials(tls_dir))
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc}") from None
    if not port:
        raise ConfigError(f"cannot listen on {listen}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    host = listen.rpartition(":")[0] or "127.0.0.1"
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return ControllerServer(server, port, f"{host}:{port}", service, health_servicer)


def serve_run(managed, listen="127.0.0.1:0", *, runs_dir=None, token=None, tls_dir=None):
    """Serves one ManagedRun (``loadgate run``'s): WatchRun, GetRun, Approve, Abort and
    ListRuns for it; SubmitPlan is refused.  Returns the ControllerServer."""
    service = ControllerService(runs_dir or os.path.dirname(managed.run_dir) or ".",
                                accept_plans=False)
    service.add(managed)
    return start_server(service, listen, token=token, tls_dir=tls_dir)


def server_credentials(tls_dir):
    """mTLS server credentials from ``loadgate certs init`` files: the controller's
    certificate serves, and callers need a certificate from the same CA."""
    files = CertFiles(tls_dir)
    try:
        with open(files.controller_key, "rb") as key, \
                open(files.controller_cert, "rb") as cert, open(files.ca, "rb") as ca:
            pair = (key.read(), cert.read())
            root = ca.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the certificates in {tls_dir}: {exc}") from None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=True)
