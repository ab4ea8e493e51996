"""``loadgate monitoring generate PLAN --out DIR``: alert rules and a dashboard from a plan.

Writes DIR/loadgate-alerts.yaml (Prometheus rules; ``promtool check rules`` accepts it) and
DIR/loadgate-dashboard.json (Grafana), both derived from the plan's effective gates.
``--dcgm-names`` makes GPU expressions read dcgm-exporter's series (DCGM_FI_DEV_*), for
clusters where dcgm-exporter, not loadgate's agent, exports the GPUs.
"""
from loadgate.controller.monitoring import alert_rules, write_monitoring
from loadgate.controller.plan import load_plan


def register(subparsers):
    parser = subparsers.add_parser("monitoring", help="generate Prometheus alerts and a "
                                                      "Grafana dashboard from a plan",
                                   description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="monitoring_command", metavar="COMMAND",
                                     required=True)
    generate = commands.add_parser("generate", help="write alert rules and a dashboard")
    generate.add_argument("plan", metavar="PLAN")
    generate.add_argument("--out", required=True, metavar="DIR", help="output directory")
    generate.add_argument("--dcgm-names", action="store_true",
                          help="GPU expressions use dcgm-exporter's metric names and labels")
    generate.set_defaults(func=_generate)


def _generate(args):
    plan = load_plan(args.plan)
    rules_path, dashboard_path = write_monitoring(plan, args.out, args.dcgm_names)
    count = len(alert_rules(plan, args.dcgm_names))
    print(f"wrote {count} alert rules to {rules_path}")
    print(f"wrote the dashboard to {dashboard_path}")
    return 0
