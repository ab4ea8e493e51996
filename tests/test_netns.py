"""Agents in network namespaces of their own, their links cut with ``ip link set down`` (the
packets vanish: nothing is refused, nothing is reset), using the namespaces, veth pairs and
private bridge of test_controller_run_netns.py, all created by the test and removed in its
finalizer.  Traffic goes only between the namespaces and the bridge the test made.

test_controller_run_netns.py cuts an agent off for good under CONTINUE.  Here:
- the link comes back before the agent's dead-man switch fires: the agent is declared lost
  within 3 s, comes back, and every interval it measured is journaled exactly once;
- under ABORT, the cut is detected within 3 s, the run is aborted, the other agent stopped,
  and the unreachable agent stops its own load by its dead-man switch.
Skipped (with the reason) where namespaces cannot be created."""
import os
import subprocess
import threading
import time

import pytest

from test_controller_run import (assert_seqs_contiguous, completed_in, definition,
                                 journal_reports, run_to_end, target_requests)
from agent_helpers import start_agent
from test_controller_run_netns import Network, ip, namespaces_possible
from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.run_journal import RecordKind, read_journal
from loadgate.controller.rundir import JOURNAL
from loadgate.controller.runner import DistributedRun
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import common_pb2

TOKEN = "netns-faults-token"
DETECT_S = 3.0


@pytest.fixture
def network(tmp_path):
    reason = namespaces_possible()
    if reason:
        pytest.skip(reason)
    with Network(2) as net:
        yield net


def start_peers(network, tmp_path, dead_man):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    target, host, port = start_target_process(["--listen", f"{network.host}:0",
                                               "--latency", "1ms"])
    agents = []
    try:
        for name, address in zip(network.names, network.addresses):
            agents.append(start_agent(
                ["--listen", f"{address}:0", "--workers", "1", "--token-file", str(token),
                 "--allow", network.host, "--dead-man", dead_man],
                prefix=["ip", "netns", "exec", name], stderr=subprocess.DEVNULL))
    except BaseException:
        stop_peers(target, agents)
        raise
    return target, f"http://{host}:{port}", agents


def stop_peers(target, agents):
    for agent in agents:
        agent.kill()
    stop_target_process(target)


def records(run_dir):
    return list(read_journal(os.path.join(run_dir, JOURNAL)))


@pytest.mark.slow
def test_a_link_that_comes_back_loses_and_doubles_nothing(network, tmp_path):
    run_dir = str(tmp_path / "run")
    target, url, agents = start_peers(network, tmp_path, "10s")
    host, port = url.rsplit("/", 1)[-1].split(":")
    cut = {}
    try:
        run = DistributedRun(
            definition(url, rate=200, duration_s=5.0, policy=AgentLossPolicy.CONTINUE,
                       dead_man_s=10.0),
            [agent.address for agent in agents], run_dir,
            metadata=(("authorization", f"Bearer {TOKEN}"),))

        def restore():
            cut["back"] = time.time_ns()
            ip("link", "set", network.links[1], "up")

        def cut_then_restore(merged):
            if merged.index == 1 and "ns" not in cut:
                cut["ns"] = time.time_ns()
                network.cut(1)
                # Merged intervals wait for the lost agent, so the restore runs on a timer.
                cut["timer"] = threading.Timer(2.5, restore)
                cut["timer"].start()
        try:
            summary = run_to_end(run, cut_then_restore, timeout=90)
        finally:
            if "timer" in cut:
                cut["timer"].join()
        seen = target_requests(host, int(port))
    finally:
        stop_peers(target, agents)
    assert "back" in cut, "the link was never restored"
    assert summary["status"] == "completed"
    journal = records(run_dir)
    lost = [r for kind, r in journal if kind is RecordKind.AGENT_LOST]
    back = [r for kind, r in journal if kind is RecordKind.AGENT_BACK]
    assert len(lost) == 1 and len(back) == 1
    assert (lost[0]["ts_ns"] - cut["ns"]) / 1e9 < DETECT_S
    assert back[0]["ts_ns"] > cut["back"]
    assert all(a["state"] == "finished" for a in summary["agents"])
    reports = journal_reports(run_dir)
    assert len(assert_seqs_contiguous(reports)) == 2
    # The cut agent generated through the cut (its dead-man time is longer), though its own
    # requests to the target vanished too: every arrival of both shards has exactly one
    # outcome in the journal, and no answer was counted that the target did not give.
    finals = [r for r in reports if r.final]
    assert len(finals) == 2 and sum(r.scheduled_total for r in finals) == 1000
    assert sum(o.count for r in reports for t in r.targets for o in t.outcomes) == 1000
    answered = sum(o.count for r in reports for t in r.targets for o in t.outcomes
                   if o.outcome == common_pb2.OUTCOME_OK_2XX)
    assert 0 < answered <= seen <= summary["load"]["sent"]
    assert summary["load"]["completed"] == 1000 == summary["load"]["scheduled"]


@pytest.mark.slow
def test_abort_on_a_cut_link_stops_everyone(network, tmp_path):
    run_dir = str(tmp_path / "run")
    target, url, agents = start_peers(network, tmp_path, "1.5s")
    host, port = url.rsplit("/", 1)[-1].split(":")
    cut = {}
    try:
        run = DistributedRun(
            definition(url, rate=200, duration_s=20.0, policy=AgentLossPolicy.ABORT,
                       dead_man_s=1.5),
            [agent.address for agent in agents], run_dir,
            metadata=(("authorization", f"Bearer {TOKEN}"),))

        def cut_second(merged):
            if merged.index == 1 and "ns" not in cut:
                cut["ns"] = time.time_ns()
                network.cut(1)
        summary = run_to_end(run, cut_second, timeout=60)
        # The unreachable agent's dead-man switch stops its load: the target goes quiet.
        quiet = wait_quiet(host, int(port), timeout=10.0)
    finally:
        stop_peers(target, agents)
    assert quiet, "load kept arriving after the abort"
    assert summary["status"] == "aborted"
    lost = next(r for kind, r in records(run_dir) if kind is RecordKind.AGENT_LOST)
    assert (lost["ts_ns"] - cut["ns"]) / 1e9 < DETECT_S
    first, second = summary["agents"]
    assert first["state"] == "finished" and first["sent"] < first["shard_requests"]
    assert second["state"] == "lost"
    reports = journal_reports(run_dir)
    assert_seqs_contiguous(reports)
    assert completed_in(reports) == summary["load"]["completed"]


def wait_quiet(host, port, timeout):
    """True once the target's request count holds still for a second (within timeout)."""
    deadline = time.monotonic() + timeout
    last = target_requests(host, port)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = target_requests(host, port)
        if now == last:
            return True
        last = now
    return False
