"""``loadgate approve`` and ``loadgate abort``: who decided, and why, durable in the journal.

    loadgate approve RUN_DIR_OR_ID --who W --reason R [--controller ADDR]
    loadgate abort   RUN_DIR_OR_ID --who W --reason R [--controller ADDR]

Against a run directory the decision is appended to its journal (readiness.append_decision),
which the controller driving the run reads on its next tick; an approver the plan does not
list, or a run that is already decided, is refused here rather than silently ignored there.
With ``--controller`` the Approve/Abort RPC carries it (RUN is then the run id, or a run
directory whose name is the id).  Exit status: 0 recorded, 3 refused, 4 controller or run
directory unusable.
"""
import os

import grpc

from loadgate.controller.journal import RecordKind
from loadgate.controller.readiness import append_decision
from loadgate.controller.service_client import (ControllerClient, add_connection_arguments,
                                                translate)
from loadgate.controller.service_events import RunView
from loadgate.native.errors import ConfigError, InfrastructureError
from loadgate.proto.loadgate.v1 import controller_pb2

CALL_TIMEOUT_S = 30.0
KINDS = {"approve": RecordKind.APPROVAL, "abort": RecordKind.ABORT}


def register(subparsers):
    for name, text in (("approve", "record a manual approval of a run waiting in OZHIDAET"),
                       ("abort", "abort a run: load stops, the rollback hook runs if needed")):
        parser = subparsers.add_parser(name, help=text, description=text)
        parser.add_argument("run", metavar="RUN_DIR_OR_ID")
        parser.add_argument("--who", required=True, help="who decides")
        parser.add_argument("--reason", required=True, help="why")
        add_connection_arguments(parser)
        parser.set_defaults(func=decide, kind=KINDS[name])


def decide(args):
    if not args.who.strip() or not args.reason.strip():
        raise ConfigError("--who and --reason must not be empty")
    if args.controller:
        info = decide_remotely(args.controller, args.kind, args.run, args.who, args.reason,
                               args.token_file, args.tls_dir)
        print(f"{args.kind.value} recorded for {info.run_id} by {args.who}")
    else:
        decide_locally(args.run, args.kind, args.who, args.reason)
        print(f"{args.kind.value} recorded in {args.run} by {args.who}")
    return 0


def decide_locally(run_dir, kind, who, reason):
    """Journals the decision in run_dir after checking the run can take it."""
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir} is not a run directory (give --controller ADDR to "
                          f"approve a run by id)")
    view = RunView.from_run_dir(run_dir)
    if view is None:
        raise InfrastructureError(f"{run_dir} holds no readiness journal")
    if view.finished:
        raise ConfigError(f"{run_dir}: the run is over (verdict {view.verdict})")
    approvers = view.plan.approval.approvers
    if kind is RecordKind.APPROVAL and approvers and who not in approvers:
        raise ConfigError(f"{who} is not an approver of this plan ({', '.join(approvers)})")
    append_decision(run_dir, kind, who, reason)


def decide_remotely(address, kind, run, who, reason, token_file=None, tls_dir=None):
    """Calls Approve or Abort; returns the RunInfo the controller answers."""
    run_id = os.path.basename(os.path.normpath(run))
    with ControllerClient(address, token_file, tls_dir) as client:
        request_type, call = (
            (controller_pb2.ApproveRequest, client.stub.Approve) if kind is RecordKind.APPROVAL
            else (controller_pb2.AbortRequest, client.stub.Abort))
        try:
            return call(request_type(run_id=run_id, who=who, reason=reason),
                        metadata=client.metadata, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise translate(exc, address) from None
