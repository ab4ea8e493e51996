"""``loadgate agent``: run the Agent gRPC service on this node.

Prints ``listening on HOST:PORT`` as its first line of standard output once the server
accepts calls (and writes PORT to ``--port-file``), so a parent process can use port 0.
"""
import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from loadgate.agent.safety import (
    Allowlist, TokenInterceptor, is_loopback_listen, read_token, server_credentials)
from loadgate.agent.server import (
    MAX_CONCURRENT_RPCS, MAX_CONCURRENT_STREAMS, MAX_RECEIVE_BYTES, MAX_SEND_BYTES,
    AgentOptions, AgentService)
from loadgate.agent.telemetry import TelemetrySampler
from loadgate.native.errors import ConfigError, InfrastructureError, LoadgateError
from loadgate.native.target import parse_duration
from loadgate.proto.loadgate.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("loadgate.agent")

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name

INSECURE_WARNING = (
    "WARNING: --insecure: this agent accepts calls from anyone who can reach {listen}, without "
    "authentication or encryption.  Whoever connects can make this node send load to every "
    "target on its allowlist ({allow}) at up to its rate cap.  Use it only on a network you "
    "control; otherwise give --token-file or --tls-cert/--tls-key/--tls-ca.")


def register(subparsers):
    parser = subparsers.add_parser(
        "agent", help="run a load-generating agent (gRPC) on this node",
        description="Run the Agent gRPC service on this node: it generates load for a "
                    "controller, within its own allowlist and caps.")
    parser.add_argument("--listen", default="127.0.0.1:0",
                        help="HOST:PORT to serve on (port 0: any free port)")
    parser.add_argument("--agent-id", default="", help="stable id (default hostname:port)")
    parser.add_argument("--workers", type=int, default=0,
                        help="engine worker processes per run (default: one per core)")
    parser.add_argument("--dead-man", default="5s",
                        help="stop load after this long without a controller call")
    parser.add_argument("--telemetry-interval", default="1s", help="host/GPU sampling period")
    parser.add_argument("--allow", action="append", default=[], metavar="HOST|CIDR|HOST:PORT",
                        help="a target this agent may send to (repeatable; default loopback only)")
    parser.add_argument("--max-rate", type=float, default=100_000.0,
                        help="the most requests/s this agent will generate (0: no cap)")
    parser.add_argument("--max-connections", type=int, default=16_384,
                        help="the most connections this agent will open (0: no cap)")
    parser.add_argument("--token-file", help="require 'authorization: Bearer <token>' from callers")
    parser.add_argument("--tls-cert", help="server certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", help="server private key (PEM)")
    parser.add_argument("--tls-ca", help="CA (PEM) that signs the controller's client certificate")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback listen address without credentials")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    parser.add_argument("--port-file", help="write the port to this file once listening")
    parser.set_defaults(func=run_agent)


def options_from_args(args):
    """AgentOptions from parsed flags; ConfigError for an unsafe or inconsistent set."""
    tls = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(tls) and not all(tls):
        raise ConfigError("mutual TLS needs all of --tls-cert, --tls-key and --tls-ca")
    token = read_token(args.token_file) if args.token_file else ""
    if not (token or all(tls)) and not is_loopback_listen(args.listen) and not args.insecure:
        raise ConfigError(
            f"refusing to listen on {args.listen} without credentials: anyone who reaches it could "
            "aim this node's load anywhere on its allowlist.  Give --token-file or "
            "--tls-cert/--tls-key/--tls-ca, or --insecure if you accept that risk")
    for name, value in (("--workers", args.workers), ("--max-rate", args.max_rate),
                        ("--max-connections", args.max_connections)):
        if value < 0:
            raise ConfigError(f"{name} must not be negative")
    dead_man_s = parse_duration(args.dead_man)
    interval_s = parse_duration(args.telemetry_interval)
    if dead_man_s <= 0 or interval_s <= 0:
        raise ConfigError("--dead-man and --telemetry-interval must be positive")
    return AgentOptions(listen=args.listen, agent_id=args.agent_id, workers=args.workers,
                        dead_man_s=dead_man_s, telemetry_interval_s=interval_s,
                        allowlist=Allowlist(args.allow or None), max_rate=args.max_rate,
                        max_connections=args.max_connections, token=token,
                        tls=tls if all(tls) else ())


def build_server(options, service):
    """A grpc.aio server with the Agent, health and reflection services; not yet bound."""
    interceptors = [TokenInterceptor(options.token)] if options.token else []
    server = grpc.aio.server(
        interceptors=interceptors, maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                 ("grpc.max_send_message_length", MAX_SEND_BYTES),
                 ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
                 ("grpc.so_reuseport", 0)])
    agent_pb2_grpc.add_AgentServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (AGENT_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    return server, health_servicer


async def serve(options, announce=print, port_file=None, metrics_port=None):
    """Runs the agent until SIGTERM/SIGINT; returns 0."""
    loop = asyncio.get_running_loop()
    telemetry = TelemetrySampler(options.telemetry_interval_s).start()
    service = AgentService(options, telemetry, loop)
    server, health_servicer = build_server(options, service)
    try:
        if options.tls:
            port = server.add_secure_port(options.listen, server_credentials(*options.tls))
        else:
            port = server.add_insecure_port(options.listen)
    except RuntimeError as exc:
        telemetry.close()
        raise InfrastructureError(f"cannot listen on {options.listen}: {exc}") from None
    host = options.listen.rsplit(":", 1)[0]
    if not options.agent_id:
        options.agent_id = f"{socket.gethostname()}:{port}"
    await server.start()
    for service_name in ("", AGENT_SERVICE):
        await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    service.start_watchdog()
    if metrics_port is not None:
        from loadgate.agent.metrics import serve_metrics
        serve_metrics(service, host.strip("[]"), metrics_port)
    announce(f"listening on {host}:{port}")
    if port_file:
        partial = port_file + ".partial"
        with open(partial, "w") as handle:
            handle.write(f"{port}\n")
        os.replace(partial, port_file)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("agent %s: shutting down", options.agent_id)
    await health_servicer.enter_graceful_shutdown()
    await loop.run_in_executor(None, service.close)
    await server.stop(grace=2.0)
    telemetry.close()
    return 0


def run_agent(args):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = options_from_args(args)
    if args.insecure and not (options.token or options.tls):
        print(INSECURE_WARNING.format(listen=options.listen, allow=", ".join(options.allowlist)),
              file=sys.stderr)

    def announce(line):
        print(line, flush=True)

    return asyncio.run(serve(options, announce=announce, port_file=args.port_file,
                             metrics_port=args.metrics_port))


def main(argv=None):
    """``python -m loadgate.agent.main [flags]``: the agent without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="loadgate")
    register(parser.add_subparsers())
    args = parser.parse_args(["agent"] + list(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except LoadgateError as exc:
        print(f"loadgate agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
