"""``loadgate run PLAN``: run a plan's load across agents and write a run directory.

With no agents (neither ``--agents`` nor ``agents:`` in the plan) it starts the plan's
``local_agents`` agents on loopback itself.  Exit status: 0 when the run completed, 2 when it
was stopped or aborted, 4 when it failed (no agent finished), 3 for a bad plan.

A readiness plan (one that declares ``gates:``), or ``--resume`` of a readiness run, goes
through the whole readiness procedure instead (readiness_run): verdict.json, report.md,
junit.xml and report.html, with ``loadgate gate check``'s exit status.

``--serve ADDR`` serves the Controller gRPC service for the run while it lasts (``loadgate
watch ADDR``, ``loadgate abort RUN --controller ADDR``, and ``loadgate approve`` for a
readiness run); its first stdout line is ``listening on HOST:PORT``.  A plain run is served
through service_plain.PlainRun: its merged intervals, no stages, nothing to approve, and an
Abort that stops it as Ctrl-C does.  ``--token-file`` or ``--tls-dir`` then guard it as they
guard ``loadgate controller serve``, and beyond loopback one of them (or ``--insecure``) is
required.
"""
import asyncio
import os
import signal
import sys
import time
from dataclasses import replace

import grpc

from loadgate.controller import readiness_run
from loadgate.controller.certs import grpc_channel_credentials, read_token
from loadgate.controller.local_agents import AdoptedAgents, LocalAgents
from loadgate.controller.report_html import write_report_html
from loadgate.controller.rundir import RunDir
from loadgate.controller.runner import DistributedRun
from loadgate.controller.runner_resume import resume_run
from loadgate.controller.runner_session import RunStatus
from loadgate.controller.runner_spec import DEFAULT_DEAD_MAN_S, RunDefinition
from loadgate.controller.runner_summary import render_summary
from loadgate.controller.service_plain import PlainRun
from loadgate.controller.service_server import check_exposure, serve_run
from loadgate.native.errors import ConfigError

LOCAL_AGENTS_FILE = "local-agents.json"
EXIT_CODES = {RunStatus.COMPLETED: 0, RunStatus.STOPPED: 2, RunStatus.ABORTED: 2,
              RunStatus.FAILED: 4}


def register(subparsers):
    parser = subparsers.add_parser("run", help="run a plan's load across agents",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("plan", nargs="?", help="the plan (YAML); not needed with --resume")
    parser.add_argument("--agents", help="HOST:PORT,... (overrides the plan's agents)")
    parser.add_argument("--run-dir", help="where to write the run (default runs/RUN_ID)")
    parser.add_argument("--resume", metavar="DIR",
                        help="take over the run in DIR after a controller crash")
    parser.add_argument("--workers", type=int, default=0,
                        help="engine workers per agent (default: the agent's, one per core)")
    parser.add_argument("--dead-man", type=float, metavar="SECONDS",
                        help="agents stop load after this long without the controller "
                             f"(default {DEFAULT_DEAD_MAN_S:g}; an agent may enforce less)")
    parser.add_argument("--no-progress", action="store_true", help="no live table")
    parser.add_argument("--serve", metavar="ADDR",
                        help="serve the Controller gRPC service for this run on HOST:PORT "
                             "while it runs (port 0 picks one)")
    parser.add_argument("--insecure", action="store_true",
                        help="let --serve listen beyond loopback without a token or TLS")
    security = parser.add_mutually_exclusive_group()
    security.add_argument("--token-file",
                          help="send 'authorization: Bearer <token>' to agents; --serve "
                               "requires it from callers")
    security.add_argument("--tls-dir",
                          help="`loadgate certs init` directory: mutual TLS to agents and "
                               "for --serve")
    parser.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", help="client private key (PEM)")
    parser.add_argument("--tls-ca", help="CA (PEM) that signs the agents' certificates")
    parser.set_defaults(func=run_command)


def run_command(args):
    if not args.plan and not args.resume:
        raise ConfigError("give a PLAN, or --resume DIR")
    if args.serve:
        check_exposure(args.serve, secured=bool(args.token_file or args.tls_dir),
                       insecure=args.insecure, option="--serve")
    token = read_token(args.token_file) if args.token_file else None
    credentials, metadata = _security(args, token)
    if readiness_run.wants_readiness(args):
        agents = _agent_list(args.agents) if args.agents else None
        return readiness_run.run_command(args, agents, credentials, metadata,
                                         _serving(args, token) if args.serve else None)
    return asyncio.run(_main(args, credentials, metadata,
                             _serving(args, token) if args.serve else None))


def _serving(args, token):
    def serve(managed):
        server = serve_run(managed, args.serve, token=token, tls_dir=args.tls_dir)
        print(f"listening on {server.address}", flush=True)
        return server
    return serve


async def _main(args, credentials, metadata, serve=None):
    local = None
    deployment_id = ""
    if args.resume:
        run = resume_run(args.resume, credentials=credentials, metadata=metadata)
        recorded = run.run_dir.file(LOCAL_AGENTS_FILE)
        if os.path.exists(recorded):
            local = AdoptedAgents(recorded)
    else:
        from loadgate.controller.plan import load_plan
        plan = load_plan(args.plan)
        deployment_id = plan.deployment.id
        definition = RunDefinition.from_plan(plan, workers_per_agent=args.workers)
        if args.dead_man is not None:
            if not args.dead_man > 0:
                raise ConfigError(f"--dead-man must be positive, got {args.dead_man:g}")
            definition = replace(definition, dead_man_s=args.dead_man)
        run_id = f"run-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(4).hex()}"
        run_dir = RunDir(args.run_dir or os.path.join("runs", run_id))
        agents = _agent_list(args.agents) if args.agents else list(plan.agents)
        if not agents:
            local = LocalAgents(plan.local_agents, run_dir.agent_log,
                                workers=args.workers or None,
                                dead_man=f"{definition.dead_man_s:g}s")
            agents = await asyncio.to_thread(local.start)
        try:
            if local:
                local.record(run_dir.file(LOCAL_AGENTS_FILE))
            run = DistributedRun(definition, agents, run_dir, run_id=run_id,
                                 credentials=credentials, metadata=metadata)
        except BaseException:
            if local:
                await asyncio.to_thread(local.stop)
            raise
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: loop.create_task(run.stop("interrupted")))
    served = server = None
    try:
        if serve is not None:
            served = PlainRun(run, loop, deployment_id)
            server = serve(served)
        if args.no_progress or not sys.stderr.isatty():
            summary = await _drive(run, args.resume)
        else:
            from loadgate.controller.progress import RunProgress
            with RunProgress(run):
                summary = await _drive(run, args.resume)
    finally:
        if served is not None:
            served.finish()
        if server is not None:
            # Off the loop: stopping waits out the watchers' grace period, and the run's
            # tasks go on meanwhile.
            await asyncio.to_thread(server.stop)
        await run.close()
        if local:
            await asyncio.to_thread(local.stop)
    print(render_summary(summary), end="")
    if run.write_error:
        print(f"error: {run.write_error}", file=sys.stderr)
    else:
        try:
            print(f"report: {write_report_html(run.run_dir.path)}")
        except OSError as exc:
            print(f"report.html not written: {exc}", file=sys.stderr)
    print(f"run directory: {run.run_dir.path}")
    return EXIT_CODES.get(run.status, 4)


async def _drive(run, resumed):
    if not resumed:
        await run.prepare()
        if run.status is RunStatus.PREPARED:
            await run.start()
    else:
        run.launch()
    return await run.wait()


def _agent_list(text):
    agents = [a.strip() for a in text.split(",") if a.strip()]
    for agent in agents:
        host, _, port = agent.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--agents: {agent!r} is not HOST:PORT")
    return agents


def _security(args, token):
    tls = (args.tls_cert, args.tls_key, args.tls_ca)
    credentials = None
    if args.tls_dir:
        if any(tls):
            raise ConfigError("give --tls-dir or --tls-cert/--tls-key/--tls-ca, not both")
        credentials = grpc_channel_credentials(args.tls_dir)
    elif any(tls):
        if not all(tls):
            raise ConfigError("mutual TLS needs all of --tls-cert, --tls-key and --tls-ca")
        contents = []
        for path in (args.tls_ca, args.tls_key, args.tls_cert):
            try:
                with open(path, "rb") as f:
                    contents.append(f.read())
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc}") from None
        credentials = grpc.ssl_channel_credentials(*contents)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return credentials, metadata
