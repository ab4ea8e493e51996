"""The gRPC server around a ControllerService: Controller, health and reflection services,
message size limits, bearer-token or mutual-TLS authentication.

    server = start_server(service, "127.0.0.1:0", token=None, tls_dir=None)
    server.port, server.address
    server.stop()                      # ends watch streams, stops the load of running runs

``loadgate run`` serves the one run it drives with ``serve_run``::

    managed = ManagedRun(run_id, plan, run_dir, source).start()
    server = serve_run(managed, "127.0.0.1:0")   # SubmitPlan answers FAILED_PRECONDITION
    managed.wait(); server.stop()

A plain load run is served the same way through a service_plain.PlainRun.

Only the health service is open without the token when one is required (kubelet probes
carry no credentials); ``tls_dir`` holds ``loadgate certs init`` files and callers need a
certificate from the same CA.
"""
import concurrent.futures
import hmac
import ipaddress
import os

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from loadgate.controller.certs import CertFiles
from loadgate.controller.service import SERVICE_NAME, ControllerService
from loadgate.native.errors import ConfigError

MAX_RECEIVE_BYTES = 4 * 1024 * 1024    # a plan is a few KiB
MAX_SEND_BYTES = 64 * 1024 * 1024      # an interval carries every target's histogram
# Watchers each hold a server thread; the rest stay free for the unary calls.
UNARY_THREADS = 8
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


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


def check_exposure(listen, *, secured, insecure=False, option="--listen"):
    """Refuses (ConfigError) to serve on ``listen`` when other hosts can reach it and callers
    need no credentials (``secured``: a token or TLS), unless ``insecure`` accepts that."""
    host = listen.rpartition(":")[0].strip("[]")
    if not (secured or insecure or _loopback(host)):
        raise ConfigError(f"{option} {listen} is reachable from other hosts: give "
                          "--token-file or --tls-dir (or --insecure if you accept that)")


def _loopback(host):
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_run(managed, listen="127.0.0.1:0", *, runs_dir=None, token=None, tls_dir=None):
    """Serves one run of ``loadgate run``, a ManagedRun (readiness) or a service_plain.PlainRun
    (plain load): WatchRun, GetRun, Approve, Abort and ListRuns for it; SubmitPlan is refused.
    Returns the ControllerServer."""
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
