"""``loadgate controller serve``: the controller as a long-running gRPC service.

    loadgate controller serve --listen ADDR [--agents A,...] [--runs-dir DIR]
                              [--token-file F | --tls-dir DIR] [--metrics-port P]

Plans arrive over gRPC (SubmitPlan) and run under ``--runs-dir``, on ``--agents``
(``host:port`` or ``dns:///name:port`` entries, resolved per run), else the plan's own agents,
else local agents started for the run.  Unfinished runs found in ``--runs-dir`` at start are
resumed.  The first line on stdout is ``listening on HOST:PORT``.  SIGTERM/SIGINT stop the
load of running runs (their journals stay for the next controller) and end the server.

``--token-file`` is required from callers as ``authorization: Bearer`` and sent to agents;
``--tls-dir`` (``loadgate certs init`` files) serves mutual TLS with the controller
certificate and dials agents with it.  Listening beyond loopback needs one of them, or
``--insecure``.
"""
import logging
import signal
import sys
import threading

from loadgate.controller.certs import grpc_channel_credentials, read_token
from loadgate.controller.service import ControllerService
from loadgate.controller.service_server import check_exposure, start_server
from loadgate.controller.service_runs import AgentSources


def register(subparsers):
    parser = subparsers.add_parser("controller", help="the controller as a gRPC service",
                                   description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="controller_command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the Controller gRPC service",
                                description=__doc__.splitlines()[0])
    serve.add_argument("--listen", default="127.0.0.1:50061", help="HOST:PORT (port 0 picks one)")
    serve.add_argument("--agents", help="HOST:PORT or dns:///NAME:PORT entries, comma separated")
    serve.add_argument("--runs-dir", default="runs", help="where runs are written (default runs)")
    security = serve.add_mutually_exclusive_group()
    security.add_argument("--token-file", help="bearer token callers must present and agents get")
    security.add_argument("--tls-dir", help="`loadgate certs init` directory: mutual TLS")
    serve.add_argument("--metrics-port", type=int,
                       help="serve Prometheus /metrics on this port (same host as --listen)")
    serve.add_argument("--workers", type=int, default=0,
                       help="engine workers per agent (default: the agent's own)")
    serve.add_argument("--allow-plan-hooks", action="store_true",
                       help="run the hooks (commands, webhooks) of submitted plans on this host")
    serve.add_argument("--no-resume", action="store_true",
                       help="leave unfinished runs in --runs-dir alone")
    serve.add_argument("--insecure", action="store_true",
                       help="listen beyond loopback without a token or TLS")
    serve.set_defaults(func=serve_command)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def serve_command(args):
    check_exposure(args.listen, secured=bool(args.token_file or args.tls_dir),
                   insecure=args.insecure)
    host = args.listen.rpartition(":")[0].strip("[]")
    token = read_token(args.token_file) if args.token_file else None
    credentials = grpc_channel_credentials(args.tls_dir) if args.tls_dir else None
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    agents = [a.strip() for a in (args.agents or "").split(",") if a.strip()]
    metrics = metrics_server = None
    if args.metrics_port is not None:
        from loadgate.controller.metrics import ControllerMetrics
        metrics = ControllerMetrics()
        metrics_server = metrics.serve(args.metrics_port, host or "127.0.0.1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = ControllerService(args.runs_dir, AgentSources(agents, credentials, metadata,
                                                            args.workers),
                                allow_hooks=args.allow_plan_hooks, metrics=metrics)
    server = start_server(service, args.listen, token=token, tls_dir=args.tls_dir)
    print(f"listening on {server.address}", flush=True)
    if metrics_server is not None:
        print(f"metrics on {metrics_server.url}", flush=True)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    try:
        if not args.no_resume:
            for managed in service.resume_unfinished():
                print(f"resumed {managed.run_id}", flush=True)
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
        if metrics_server is not None:
            metrics_server.close()
    print("controller stopped", file=sys.stderr)
    return 0

