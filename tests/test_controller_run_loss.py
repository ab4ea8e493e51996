"""Agent loss: one of three real agents is SIGKILLed mid-run; the controller detects it within
3 s, keeps every interval it had received, and finishes the run under each policy."""
import os
import time

import pytest

from test_controller_run import (assert_seqs_contiguous, completed_in, definition,
                                 journal_reports, real_agents, real_target, run_to_end,
                                 sum_reports)
from loadgate.controller.merge import Metric
from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.run_journal import RecordKind, read_journal
from loadgate.controller.rundir import JOURNAL
from loadgate.controller.runner import DistributedRun

RATE = 300
DURATION_S = 4.0
KILL_AFTER_S = 1.0


def run_with_a_kill(tmp_path, policy):
    """Runs 3 agents, SIGKILLs agent 1 once it has delivered an interval; returns
    (summary, run, run_dir, kill_ns, journaled reports of the victim at the kill)."""
    run_dir = str(tmp_path / "run")
    with real_target() as (url, _), real_agents(3) as agents:
        run = DistributedRun(definition(url, rate=RATE, duration_s=DURATION_S, policy=policy),
                             [a.address for a in agents], run_dir)
        victim = agents[1]
        killed = {}

        def kill_when_reporting(merged):
            if "ns" not in killed and merged.index >= 0:
                killed["journal"] = [r for r in journal_reports(run_dir)
                                     if r.agent_id == run.sessions[1].agent_id]
                killed["ns"] = time.time_ns()
                victim.kill()

        # The listener runs on the run's loop; the kill is a plain syscall, the journal read
        # a small file, so the loop is not held up.
        summary = run_to_end(run, kill_when_reporting)
    return summary, run, run_dir, killed["ns"], killed["journal"]


def lost_record(run_dir):
    return next(r for kind, r in read_journal(os.path.join(run_dir, JOURNAL))
                if kind is RecordKind.AGENT_LOST)


def check_common(summary, run, run_dir, kill_ns, before):
    victim_id = run.sessions[1].agent_id
    lost = lost_record(run_dir)
    assert lost["agent_id"] == victim_id
    assert (lost["ts_ns"] - kill_ns) / 1e9 < 3.0
    assert [a["agent_id"] for a in summary["agents_lost"]] == [victim_id]
    reports = journal_reports(run_dir)
    assert_seqs_contiguous(reports)
    # Every interval journaled before the kill is still there and still counted.
    after = [(r.seq, r.SerializeToString()) for r in reports if r.agent_id == victim_id]
    assert [(r.seq, r.SerializeToString()) for r in before] == after[:len(before)]
    assert len(before) >= 1
    victim = next(a for a in summary["agents"] if a["agent_id"] == victim_id)
    assert victim["reports"] == len(after) and victim["state"] == "lost"
    # The merged result is exactly the sum of what was journaled, loss or not.
    assert completed_in(reports) == summary["load"]["completed"]
    for metric in Metric:
        assert sum_reports(reports, "main", metric) == \
            run.ingest.totals.targets["main"].histograms[metric]
    return victim


@pytest.mark.slow
def test_abort_stops_every_agent(tmp_path):
    summary, run, run_dir, kill_ns, before = run_with_a_kill(tmp_path, AgentLossPolicy.ABORT)
    check_common(summary, run, run_dir, kill_ns, before)
    assert summary["status"] == "aborted" and "lost" in summary["reason"]
    assert summary["load"]["sent"] < summary["load"]["scheduled"]
    survivors = [a for a in summary["agents"] if a["state"] != "lost"]
    assert all(a["state"] == "finished" and a["sent"] < a["shard_requests"] for a in survivors)


@pytest.mark.slow
def test_continue_finishes_and_records_the_shortfall(tmp_path):
    summary, run, run_dir, kill_ns, before = run_with_a_kill(tmp_path, AgentLossPolicy.CONTINUE)
    victim = check_common(summary, run, run_dir, kill_ns, before)
    assert summary["status"] == "completed"
    survivors = [a for a in summary["agents"] if a["state"] != "lost"]
    assert all(a["state"] == "finished" and a["sent"] == a["shard_requests"] for a in survivors)
    lost = summary["agents_lost"][0]
    assert lost["unsent"] == victim["shard_requests"] - victim["sent"] > 0
    assert summary["load"]["shortfall"] >= lost["unsent"] > 0
    assert "load_shortfall" in {w["kind"] for w in summary["generator"]["warnings"]}


@pytest.mark.slow
def test_redistribute_has_the_others_take_over(tmp_path):
    summary, run, run_dir, kill_ns, before = run_with_a_kill(tmp_path,
                                                             AgentLossPolicy.REDISTRIBUTE)
    check_common(summary, run, run_dir, kill_ns, before)
    assert summary["status"] == "completed"
    survivors = [a for a in summary["agents"] if a["state"] != "lost"]
    # Two agents carry three shares from the loss on: 1.5 times their own rate.
    assert all(a["rate_scale"] == pytest.approx(1.5) for a in survivors)
    assert all(a["state"] == "finished" and a["sent"] > a["shard_requests"] for a in survivors)
