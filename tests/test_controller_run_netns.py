"""Agents in network namespaces of their own (veth pairs on a bridge the test creates), as
on separate nodes: a run across them, then one is cut off mid-run (its link goes down, so
its packets vanish instead of being refused) and is declared lost while the other finishes.
Skipped where the environment cannot create namespaces."""
import os
import shutil
import subprocess
import time

import pytest

from agent_helpers import start_agent
from test_controller_run import (assert_seqs_contiguous, completed_in, definition,
                                 journal_reports, run_to_end)
from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.run_journal import RecordKind, read_journal
from loadgate.controller.rundir import JOURNAL
from loadgate.controller.runner import DistributedRun
from loadgate.native.target import start_target_process, stop_target_process

TAG = f"{os.getpid() % 10000}"
SUBNET = f"10.231.{os.getpid() % 250}"
BRIDGE = f"lgb{TAG}"


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def namespaces_possible():
    if os.geteuid() != 0 or not shutil.which("ip"):
        return "needs root and iproute2 to create network namespaces"
    probe = f"lgprobe{TAG}"
    result = ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


class Network:
    """A bridge at SUBNET.1 and one namespace per agent at SUBNET.(2+i), each on a veth."""

    def __init__(self, count):
        self.names = [f"lgn{TAG}{chr(97 + i)}" for i in range(count)]
        self.links = [f"lgv{TAG}{chr(97 + i)}" for i in range(count)]
        self.addresses = [f"{SUBNET}.{2 + i}" for i in range(count)]
        self.host = f"{SUBNET}.1"

    def __enter__(self):
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{self.host}/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        for name, link, address in zip(self.names, self.links, self.addresses):
            peer = link.replace("lgv", "lgp")
            ip("netns", "add", name)
            ip("link", "add", link, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", name)
            ip("link", "set", link, "master", BRIDGE)
            ip("link", "set", link, "up")
            ip("-n", name, "addr", "add", f"{address}/24", "dev", peer)
            ip("-n", name, "link", "set", peer, "up")
            ip("-n", name, "link", "set", "lo", "up")
        return self

    def cut(self, index):
        ip("link", "set", self.links[index], "down")

    def __exit__(self, *exc):
        for name, link in zip(self.names, self.links):
            ip("link", "del", link, check=False)
            ip("netns", "del", name, check=False)
        ip("link", "del", BRIDGE, check=False)


@pytest.mark.slow
def test_agents_in_namespaces_run_then_one_is_cut_off(tmp_path):
    reason = namespaces_possible()
    if reason:
        pytest.skip(reason)
    token = tmp_path / "token"
    token.write_text("netns-test-token\n")
    run_dir = str(tmp_path / "run")
    agents = []
    with Network(2) as network:
        target, host, port = start_target_process(["--listen", f"{network.host}:0",
                                                   "--latency", "1ms"])
        try:
            for name, address in zip(network.names, network.addresses):
                agents.append(start_agent(
                    ["--listen", f"{address}:0", "--workers", "1", "--token-file", str(token),
                     "--allow", network.host, "--dead-man", "1.5s"],
                    prefix=["ip", "netns", "exec", name], stderr=subprocess.DEVNULL))
            run = DistributedRun(
                definition(f"http://{host}:{port}", rate=200, duration_s=4.0,
                           policy=AgentLossPolicy.CONTINUE),
                [agent.address for agent in agents], run_dir,
                metadata=(("authorization", "Bearer netns-test-token"),))
            cut = {}

            def cut_second_agent(merged):
                if merged.index == 1 and "ns" not in cut:
                    cut["ns"] = time.time_ns()
                    network.cut(1)
            summary = run_to_end(run, cut_second_agent)
        finally:
            for agent in agents:
                agent.kill()
            stop_target_process(target)
    first, second = summary["agents"]
    assert summary["status"] == "completed"
    assert first["state"] == "finished" and first["sent"] == first["shard_requests"] == 400
    assert second["state"] == "lost" and 0 < second["reports"]
    lost = next(r for kind, r in read_journal(os.path.join(run_dir, JOURNAL))
                if kind is RecordKind.AGENT_LOST)
    assert (lost["ts_ns"] - cut["ns"]) / 1e9 < 3.0
    reports = journal_reports(run_dir)
    assert_seqs_contiguous(reports)
    assert completed_in(reports) == summary["load"]["completed"]
    assert summary["load"]["shortfall"] > 0
