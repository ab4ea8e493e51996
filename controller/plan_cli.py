"""``loadgate plan validate FILE...``, ``loadgate plan explain FILE`` and ``loadgate plan schema``.

validate exits 0 when every plan is valid and 3 (a plan error) otherwise, printing every
problem as FILE:LINE:COL: key.path: message.  explain prints the classification, the stage
graph the plan will run and every default the classification filled in, kept, or saw
tightened or loosened, with the reason.
"""
import json
import sys

from loadgate.controller.classify import Disposition, classify, rollout_node, stage_graph
from loadgate.controller.plan import PlanError, load_plan
from loadgate.controller.plan_format import plan_json_schema
from loadgate.controller.plan_model import SEED_NAMES, Strategy
from loadgate.controller.plan_units import format_duration
from loadgate.controller.states import STAGE_OUTPUT, TITLES, Stage, SubStage

EXIT_OK = 0
EXIT_PLAN_ERROR = 3


def register(subparsers):
    parser = subparsers.add_parser("plan", help="validate and explain readiness plans")
    actions = parser.add_subparsers(dest="plan_command", metavar="ACTION", required=True)
    validate = actions.add_parser("validate", help="check plans; exit 3 on any error")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=run_validate)
    explain = actions.add_parser("explain", help="print the stage graph and the defaults")
    explain.add_argument("file", metavar="FILE")
    explain.set_defaults(func=run_explain)
    schema = actions.add_parser("schema", help="print the plan's JSON Schema")
    schema.set_defaults(func=run_schema)


def run_validate(args, out=None):
    out = out or sys.stdout
    status = EXIT_OK
    for path in args.files:
        try:
            plan = load_plan(path)
        except PlanError as exc:
            print(str(exc), file=out)
            print(f"{path}: {len(exc.issues)} error(s)", file=out)
            status = EXIT_PLAN_ERROR
            continue
        d = plan.deployment
        print(f"{path}: valid ({d.id}: {d.type.value}, {d.risk.value} risk, "
              f"{d.environment.value}, {d.strategy.value})", file=out)
        for warning in classify(plan).warnings:
            print(f"{path}: warning: {warning}", file=out)
    return status


_CHECKS = {
    SubStage.CAPACITY: "agents' CPU cores, memory and GPUs against infrastructure",
    SubStage.ENVIRONMENT: "every target answers",
    SubStage.NETWORK: "RTT p95 to each target against infrastructure.network.rtt_p95",
    SubStage.LATENCY: "latency percentile gates on the performance window",
    SubStage.THROUGHPUT: "throughput and error-rate gates",
    SubStage.RESOURCES: "saturation gates (CPU, GPU) and relative canary/baseline gates",
    SubStage.METRICS: "monitoring.metrics_url answers with Prometheus samples",
    SubStage.ALERTING: "monitoring.alert_rules parse and cover every gate",
    SubStage.DASHBOARDS: "monitoring.dashboard has panels",
    SubStage.POST_DEPLOY: "gates hold for monitoring.post_deploy_window",
}


def _rollout_text(plan):
    strategy = plan.deployment.strategy
    if strategy is Strategy.CANARY:
        steps = " → ".join(f"{s:g}%" for s in plan.canary.steps)
        return (f"canary {steps}, hold {format_duration(plan.canary.hold_s)} per step "
                f"(max {format_duration(plan.canary.max_hold_s)}), traffic by "
                f"{plan.canary.traffic.value}; rollback on any failed gate")
    if strategy is Strategy.BLUE_GREEN:
        return "switch hook, verify_switch hook, then a window judged on the new colour"
    if strategy is Strategy.ROLLING:
        return (f"{plan.rolling.instances} instances, {plan.rolling.batch_size} per batch, "
                "instance_step hook and a window per batch")
    return (f"all at once inside the downtime window {plan.downtime_window.start} .. "
            f"{plan.downtime_window.end}, then a window")


def run_explain(args, out=None):
    out = out or sys.stdout
    try:
        plan = load_plan(args.file)
    except PlanError as exc:
        print(str(exc), file=out)
        return EXIT_PLAN_ERROR
    result = classify(plan)
    effective, d = result.plan, plan.deployment
    print(f"Deployment {d.id}" + (f" - {d.description}" if d.description else ""), file=out)
    for label, value in (("Type", d.type), ("Risk", d.risk), ("Environment", d.environment),
                         ("Strategy", d.strategy)):
        print(f"  {label + ':':13} {value.value} ({SEED_NAMES[value]})", file=out)
    print("\nStage graph:", file=out)
    rollout = rollout_node(effective)
    for stage, subs in stage_graph(effective):
        print(f"  {TITLES[stage]} → [{STAGE_OUTPUT[stage].value}]", file=out)
        for sub in subs:
            if sub is rollout:
                what = _rollout_text(effective)
                if result.approval_required:
                    what = "waits in [OZHIDAET] for a recorded approval, then " + what
            elif sub is SubStage.THROUGHPUT and effective.knee is not None:
                knee = effective.knee
                what = (f"{_CHECKS[sub]}, then the knee search: {knee.start:g} to {knee.max:g} "
                        f"req/s in steps of {knee.step:g}, {format_duration(knee.window_s)} each")
            elif sub is SubStage.STAGING:
                what = "staging_evidence: a PASS verdict of the STAGING run of " + d.id
            else:
                what = _CHECKS[sub]
            print(f"    - {TITLES[sub]}: {what}", file=out)
        if stage is Stage.PERFORMANCE:
            load = effective.load
            print(f"      (load: {load.rate:g} req/s {load.arrival.value} for "
                  f"{format_duration(load.duration_s)}"
                  + (", smoke first" if effective.monitoring.smoke else "") + ")", file=out)
    print("\nDefaults from the classification:", file=out)
    for decision in result.decisions:
        shown = decision.shown(decision.value)
        note = decision.disposition.value
        if decision.disposition in (Disposition.TIGHTENED, Disposition.LOOSENED,
                                    Disposition.REPLACED):
            note += f" (default {decision.shown(decision.default)})"
        if decision.override_reason:
            note += f", override: {decision.override_reason}"
        print(f"  {decision.key} = {shown}  [{note}]\n      why: {decision.reason}", file=out)
    if result.requirements:
        print("\nRequired by the classification (all present):", file=out)
    for requirement in result.requirements:
        print(f"  - {requirement}", file=out)
    for warning in result.warnings:
        print(f"\nwarning: {warning}", file=out)
    return EXIT_OK


def run_schema(args, out=None):
    out = out or sys.stdout
    json.dump(plan_json_schema(), out, indent=2)
    out.write("\n")
    return EXIT_OK
