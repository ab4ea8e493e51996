"""The ``loadgate`` command line: one sub-command per module, imported only when used.

Each module named in COMMANDS exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""
import argparse
import importlib
import sys

from loadgate.native.errors import LoadgateError

# name -> module that registers it; modules are imported lazily so that a missing optional
# dependency of one command never breaks the others.
COMMANDS = {
    "bench": "loadgate.native.bench_cli",
    "target": "loadgate.native.target_cli",
    "agent": "loadgate.agent.main",
    "run": "loadgate.controller.run_cli",
    "demo": "loadgate.controller.demo",
    "plan": "loadgate.controller.plan_cli",
    "gate": "loadgate.controller.gate_cli",
    "report": "loadgate.controller.report_html_cli",
    "approve": "loadgate.controller.approval_cli",
    "abort": "loadgate.controller.approval_cli",
    "controller": "loadgate.controller.service_cli",
    "watch": "loadgate.controller.watch",
    "monitoring": "loadgate.controller.monitoring_cli",
    "certs": "loadgate.controller.certs",
    "infer": "loadgate.agent.inference.cli",
}


def build_parser(argv):
    parser = argparse.ArgumentParser(prog="loadgate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    seen = set()
    for name, module_name in COMMANDS.items():
        if module_name in seen or (wanted and name != wanted):
            continue
        module = importlib.import_module(module_name)
        seen.add(module_name)
        module.register(sub)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LoadgateError as exc:
        print(f"loadgate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
