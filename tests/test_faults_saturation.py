"""An agent whose CPU is saturated by its own load is slow, not dead.

The controller's heartbeat (Ping on its own path, see DESIGN.md "Scale") must keep answering
while the agent's engine worker asks for far more than one core can send.  The run finishes
with the agent never declared lost, the saturation reported as a generator warning rather than
hidden, and every report journaled exactly once.  The flood is bounded: 3 s on one worker."""
import os

import pytest

from test_controller_run import (assert_seqs_contiguous, completed_in, definition,
                                 journal_reports, real_agents, real_target, run_to_end)
from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.run_journal import RecordKind, read_journal
from loadgate.controller.rundir import JOURNAL
from loadgate.controller.runner import DistributedRun
from loadgate.controller.runner_summary import WarningKind
from loadgate.proto.loadgate.v1 import common_pb2

FLOOD_RATE = 100_000
DURATION_S = 3.0


@pytest.mark.slow
def test_a_saturated_agent_is_not_declared_lost(tmp_path):
    run_dir = str(tmp_path / "run")
    with real_target(("--latency", "0")) as (url, requests_seen), \
            real_agents(1, args=("--workers", "1", "--max-rate", "0")) as agents:
        flood = definition(url, rate=FLOOD_RATE, duration_s=DURATION_S,
                           policy=AgentLossPolicy.ABORT)
        # The heartbeat and loss timeout are the defaults a real run uses.
        run = DistributedRun(flood, [agents[0].address], run_dir)
        summary = run_to_end(run, timeout=90)
        seen = requests_seen()
    # ABORT would have stopped the run had the agent been declared lost.
    assert summary["status"] == "completed", summary.get("stop_reason")
    assert summary["agents_lost"] == []
    kinds = [kind for kind, _ in read_journal(os.path.join(run_dir, JOURNAL))]
    assert RecordKind.AGENT_LOST not in kinds
    reports = journal_reports(run_dir)
    assert_seqs_contiguous(reports)
    # The agent really was saturated, and said so.
    assert any(r.health.saturated for r in reports)
    warnings = {w["kind"] for w in summary["generator"]["warnings"]}
    assert WarningKind.GENERATOR_SATURATED.value in warnings
    assert WarningKind.AGENT_LOST.value not in warnings
    # Every arrival has one outcome: those the worker could not send in time are timeouts,
    # and those still queued for a connection when the drain ran out were never sent
    # (NOT_SENT); every request it did send reached the target once.
    final = [r for r in reports if r.final][0]
    not_sent = sum(o.count for r in reports for t in r.targets for o in t.outcomes
                   if o.outcome == common_pb2.OUTCOME_NOT_SENT)
    assert completed_in(reports) + not_sent == final.scheduled_total == FLOOD_RATE * DURATION_S
    assert not_sent <= final.scheduled_total - sum(r.sent for r in reports)
    # On a quiet core one worker can keep up with the flood, so how many were sent varies;
    # what must hold is that each one sent reached the target exactly once.
    assert sum(r.sent for r in reports) == seen == summary["load"]["sent"]
    assert 0 < seen <= final.scheduled_total
