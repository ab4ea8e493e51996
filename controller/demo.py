"""``loadgate demo``: the whole readiness procedure on this machine, in about a minute.

It starts the built-in target on a free loopback port, serving the baseline version at ``/``
and the canary at ``/canary``, whose latency grows (by ``--regression``, 50 % by default) once
it is offered more than 15 % of the demo's rate, which the ramp crosses at its 25 % step.
Both versions live in one process on purpose: on a machine whose cores are shared, two
processes are starved of CPU at different moments, and the relative gates would judge that
noise rather than the versions.  It writes a plan for them into the run directory and runs
it (readiness_run): local agents, Infrastructure, a smoke test and the Performance window on
the baseline, Monitoring evidence (alert rules and a dashboard generated
from the plan), then the canary ramp 5 -> 25 -> 50 -> 100 % with gates at every step and the
post-deploy window.  The canary is rolled back at 25 % (FAIL, exit 1); with ``--healthy``
the canary has no regression and is promoted to 100 % (PASS, exit 0).  Exit codes are
``loadgate gate check``'s.

Rates and holds are chosen for the minimum-sample rule: the 5 % step may hold until the
canary has twice the samples its p99 gate needs (299 at 95 % confidence), so each step is
judged on enough evidence rather than declared INCONCLUSIVE.  The regression is judged by
the Mann-Whitney test on the whole latency distributions (canary slower by 15 points or
more, at 1 %); the percentile ratios are loosened (p95 1.5, p99 2 rather than 1.2) because
the few hundred samples of a 5 % step bound a busy machine's tail only that tightly, and a
tighter ratio would hold the ramp to INCONCLUSIVE on scheduling noise.
"""
import math
import os
import time

import yaml

from loadgate.controller import gate_cli
from loadgate.controller.gates import min_samples_for_percentile
from loadgate.controller.monitoring import write_monitoring
from loadgate.controller.plan import load_plan, parse_plan
from loadgate.controller.plan_units import parse_duration
from loadgate.controller.readiness_run import interrupted_by_sigterm, run_readiness
from loadgate.native.errors import ConfigError, InfrastructureError
from loadgate.native.target import LoadLatency, start_target_process, stop_target_process

STEPS = (5, 25, 50, 100)
# The canary's regression starts above this share of the demo's rate: over the 5 % step's
# load (with room for Poisson bursts), under the 25 % step's.
THRESHOLD_SHARE = 0.15
TARGET_LATENCY = "lognormal:40ms:0.2"
CANARY_PATH = "/canary"
CONFIDENCE = 95.0


def register(subparsers):
    parser = subparsers.add_parser("demo", help="run the readiness procedure on local targets",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--healthy", action="store_true",
                        help="the canary has no regression (the run passes)")
    parser.add_argument("--run-dir", help="where to write the run "
                                          "(default ./loadgate-runs/DEMO_ID)")
    parser.add_argument("--rate", type=float, default=600.0,
                        help="requests/s offered (default %(default)g)")
    parser.add_argument("--hold", default="3s",
                        help="least time each canary step is held (default %(default)s)")
    parser.add_argument("--regression", default="50%",
                        help="the canary's extra latency under load (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="engine workers of the local agent (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no live display")
    parser.set_defaults(func=run_demo)


def run_demo(args):
    hold_s = parse_duration(args.hold)
    if not args.rate > 0 or not hold_s > 0:
        raise ConfigError("--rate and --hold must be positive")
    threshold = THRESHOLD_SHARE * args.rate
    LoadLatency.parse(f"{args.regression}@{threshold:g}rps")  # a bad --regression: ConfigError
    demo_id = f"demo-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}"
    run_dir = os.path.abspath(args.run_dir or os.path.join("loadgate-runs", demo_id))
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise InfrastructureError(f"cannot create run directory {run_dir}: "
                                  f"{exc.strerror}") from None
    canary_options = f"latency={TARGET_LATENCY}" + (
        "" if args.healthy else f",load-latency={args.regression}@{threshold:g}rps")
    target = start_target_process(["--latency", TARGET_LATENCY, "--seed", "1",
                                   "--route", CANARY_PATH, canary_options])
    try:
        _, host, port = target
        url = f"http://{host}:{port}"
        plan = write_demo_plan(run_dir, url, args.rate, hold_s, args.healthy)
        print(f"loadgate demo: baseline {url}/, canary {url}{CANARY_PATH} "
              + ("(healthy)" if args.healthy else
                 f"({args.regression} slower above {threshold:g} req/s)")
              + f"\nrun directory: {run_dir}", flush=True)
        with interrupted_by_sigterm():
            run_readiness(plan, run_dir, progress=not args.no_progress, workers=args.workers)
    finally:
        stop_target_process(target[0])
    return int(gate_cli.check(run_dir)[0])


def demo_plan(url, rate, hold_s, healthy):
    """The demo's plan as a dict (before its monitoring files are named)."""
    canary_samples = min_samples_for_percentile(99.0, CONFIDENCE / 100)
    # The 5 % step has the samples its p99 gate needs after this long; it may hold twice that.
    first_step_s = canary_samples / (STEPS[0] / 100 * rate)
    return {
        "apiVersion": "loadgate/v1",
        "deployment": {
            "id": "DEMO-canary-" + ("healthy" if healthy else "regression"),
            "type": "FEATURE", "risk": "LOW", "environment": "DEV", "strategy": "CANARY",
            "requested_by": "loadgate demo",
            "description": "Local canary " + ("without a regression" if healthy else
                                              "whose latency grows under load")},
        "targets": [{"name": "baseline", "url": url, "role": "baseline"},
                    {"name": "canary", "url": url, "role": "canary", "weight": 0,
                     "request": {"path": CANARY_PATH}}],
        "load": {"rate": rate, "duration": f"{max(hold_s, 4.0):g}s", "arrival": "poisson",
                 "seed": 1, "connections": 64, "interval": "500ms", "timeout": "2s"},
        "local_agents": 1,
        "gates": {"confidence": CONFIDENCE,
                  "latency": {"p95": "200ms", "p99": "500ms"},
                  "error_rate": "1%",
                  "throughput": {"min_ratio": "90%"},
                  "relative": {"test": "mann-whitney", "alpha": "1%", "min_effect": "15%",
                               "ratios": {"p95": 1.5, "p99": 2.0}}},
        "canary": {"steps": list(STEPS), "hold": f"{hold_s:g}s",
                   "max_hold": f"{max(4 * hold_s, math.ceil(2 * first_step_s)):g}s"},
        "monitoring": {"post_deploy_window": f"{hold_s:g}s", "smoke": True},
        "hooks": {"rollback": {"command": [
            "sh", "-c", 'echo "rollback: canary weight set to $LOADGATE_WEIGHT%" '
                        '>> rollback.log']}},
        "overrides": [
            {"key": "canary.hold", "reason": "a demo holds each step seconds, not minutes; "
                                             "the minimum-sample rule still decides"},
            {"key": "monitoring.post_deploy_window",
             "reason": "a demo watches the deployed canary for one hold"},
            {"key": "gates.relative.min_effect",
             "reason": "on a shared machine shifts under 15 points are scheduling noise"},
            {"key": "gates.relative.ratios.p99",
             "reason": "a 5% step's few hundred samples bound a busy machine's p99 ratio "
                       "only this tightly"}],
        "rollback": {"strategy": "traffic back to the baseline", "rto": "30s",
                     "procedure": "the agents shift every request to the baseline"},
    }


def write_demo_plan(run_dir, url, rate, hold_s, healthy):
    """Writes run_dir/plan.yaml (and its monitoring evidence) and returns the loaded Plan."""
    data = demo_plan(url, rate, hold_s, healthy)
    rules, dashboard = write_monitoring(parse_plan(yaml.safe_dump(data, sort_keys=False)),
                                        os.path.join(run_dir, "monitoring"))
    data["monitoring"].update(alert_rules=os.path.relpath(rules, run_dir),
                              dashboard=os.path.relpath(dashboard, run_dir))
    path = os.path.join(run_dir, "plan.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("# Written by loadgate demo for its own targets on loopback.\n")
        yaml.safe_dump(data, handle, sort_keys=False)
    return load_plan(path)

