"""``loadgate report RUN_DIR``: (re)write a run directory's report.html.

For the run directory of ``loadgate run``, of a readiness run (its load in ``RUN_DIR/load``)
or of one still going; ``--load-dir`` names the load run when it lies elsewhere.  Exit
status 0 once the file is written, 4 when RUN_DIR is not a directory.
"""
import os

from loadgate.controller.report_html import write_report_html
from loadgate.native.errors import InfrastructureError


def register(subparsers):
    parser = subparsers.add_parser(
        "report", help="write a run directory's report.html",
        description="Write RUN_DIR/report.html: one self-contained page with the verdict, "
                    "gates, stage timeline and charts of the run (works on partial runs).")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--load-dir", metavar="DIR",
                        help="the load run's directory (default RUN_DIR/load or RUN_DIR)")
    parser.set_defaults(func=report_command)


def report_command(args):
    if not os.path.isdir(args.run_dir):
        raise InfrastructureError(f"{args.run_dir}: no such run directory")
    print(write_report_html(args.run_dir, args.load_dir))
    return 0
