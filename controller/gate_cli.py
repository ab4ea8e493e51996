"""``loadgate gate check RUN_DIR``: a readiness run's verdict as a CI exit code.

Exit codes:

====  ===================  ===========================================================
code  meaning              when
====  ===================  ===========================================================
0     pass                 verdict.json says PASS
1     fail                 verdict.json says FAIL (a gate failed; blocked or rolled back)
2     inconclusive         verdict.json says INCONCLUSIVE (too few samples, blocked by a
                           missing prerequisite such as staging evidence, aborted), or the
                           run has a journal but no verdict yet (unfinished or waiting)
3     plan error           the verdict records a plan error, or the plan journaled in
                           RUN_DIR no longer validates
4     infrastructure error RUN_DIR or its verdict is missing or unreadable, or the verdict
                           records an infrastructure error (agents, capacity, targets)
====  ===================  ===========================================================

``--junit PATH`` copies the run's junit.xml (one test case per gate) where CI expects it.
"""
import argparse
import enum
import os
import shutil
import sys

from loadgate.controller.journal import JournalError, RecordKind, read_journal
from loadgate.controller.plan import Plan, PlanError
from loadgate.controller.verdict import ErrorKind, VerdictStatus, load
from loadgate.native.errors import InfrastructureError


class ExitCode(enum.IntEnum):
    PASS = 0
    FAIL = 1
    INCONCLUSIVE = 2
    PLAN_ERROR = 3
    INFRASTRUCTURE_ERROR = 4


_BY_STATUS = {VerdictStatus.PASS: ExitCode.PASS, VerdictStatus.FAIL: ExitCode.FAIL,
              VerdictStatus.INCONCLUSIVE: ExitCode.INCONCLUSIVE}


def register(subparsers):
    parser = subparsers.add_parser("gate", help="turn a run's verdict into a CI exit code")
    actions = parser.add_subparsers(dest="gate_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="exit 0 pass, 1 fail, 2 inconclusive, "
                                             "3 plan error, 4 infrastructure error",
                               description=__doc__.split("\n\n")[0],
                               epilog="exit codes:\n" + __doc__.split("Exit codes:")[1].split(
                                   "``--junit")[0].strip("\n"),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("run_dir", metavar="RUN_DIR")
    check.add_argument("--junit", metavar="PATH", help="copy junit.xml here")
    check.set_defaults(func=run_check)


def check(run_dir):
    """(ExitCode, message) for the run in run_dir."""
    if not os.path.isdir(run_dir):
        return ExitCode.INFRASTRUCTURE_ERROR, f"{run_dir}: no such run directory"
    journal = os.path.join(run_dir, "journal.jsonl")
    try:
        records = list(read_journal(journal))
    except JournalError as exc:
        return ExitCode.INFRASTRUCTURE_ERROR, str(exc)
    plans = [r for r in records if r.get("kind") == RecordKind.PLAN.value]
    if plans:
        try:
            Plan.from_dict(plans[0].get("plan"), plans[0].get("source", journal))
        except PlanError as exc:
            return ExitCode.PLAN_ERROR, f"the run's plan is not valid:\n{exc}"
    if not os.path.exists(os.path.join(run_dir, "verdict.json")) and plans:
        return ExitCode.INCONCLUSIVE, f"{run_dir}: the run has no verdict yet (unfinished " \
                                      "or waiting for approval)"
    try:
        verdict = load(run_dir)
    except InfrastructureError as exc:
        return ExitCode.INFRASTRUCTURE_ERROR, str(exc)
    if verdict.error:
        kind = ErrorKind(verdict.error["kind"])
        code = ExitCode.PLAN_ERROR if kind is ErrorKind.PLAN else ExitCode.INFRASTRUCTURE_ERROR
        return code, f"{kind.value} error: {verdict.error['message']}"
    lines = [f"{verdict.deployment['id']}: {verdict.status.value} {verdict.marker} "
             f"{verdict.recommendation}"]
    lines += [f"  {g.status.value:12} {g.name} [{g.window}]: {g.reason}" for g in verdict.gates]
    lines += [f"  reason: {reason}" for reason in verdict.reasons]
    return _BY_STATUS[verdict.status], "\n".join(lines)


def run_check(args, out=None):
    out = out or sys.stdout
    code, message = check(args.run_dir)
    print(message, file=out)
    if args.junit:
        source = os.path.join(args.run_dir, "junit.xml")
        if os.path.exists(source):
            shutil.copyfile(source, args.junit)
    return int(code)
