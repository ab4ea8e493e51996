"""The link between the controller and one agent, broken at the TCP level by a proxy the test
controls (tests/fault_proxy.py): a silent partition, a reset link, and a slow link.

Each run has two real agents against a real target; one agent is reached through the proxy.
Afterwards the journal holds every (agent, seq) exactly once with no gap, the merged totals
equal the journaled reports, and the target saw exactly the requests the run counted."""
import asyncio
import os
import socket
import threading
import time

import pytest

from fault_proxy import FaultProxy
from test_controller_run import (assert_seqs_contiguous, completed_in, definition,
                                 journal_reports, real_agents, real_target, sum_reports)
from loadgate.controller.merge import Metric
from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.run_journal import RecordKind, read_journal
from loadgate.controller.rundir import JOURNAL
from loadgate.controller.runner import DistributedRun

RATE = 200
DURATION_S = 4.0


def run_through_proxy(tmp_path, on_interval, policy=AgentLossPolicy.CONTINUE, rate=RATE,
                      duration_s=DURATION_S):
    """Runs two agents, the first behind a FaultProxy; ``on_interval(proxy, merged)`` is
    called for every merged interval.  Returns (summary, run, run_dir, requests the target
    saw, proxy counters)."""
    run_dir = str(tmp_path / "run")
    # The agents' dead-man time outlasts every cut, so they keep generating through it.
    with real_target() as (url, requests_seen), \
            real_agents(2, args=("--workers", "1", "--dead-man", "10s")) as agents, \
            FaultProxy(agents[0].address) as proxy:
        run = DistributedRun(definition(url, rate=rate, duration_s=duration_s, policy=policy,
                                        dead_man_s=10.0),
                             [proxy.address, agents[1].address], run_dir)
        run.add_listener(lambda merged: on_interval(proxy, merged))

        async def main():
            try:
                await run.prepare()
                await run.start(lead_s=0.3)
                return await run.wait(60)
            finally:
                await run.close()
        summary = asyncio.run(main())
        seen = requests_seen()
        counters = {"accepted": proxy.connections_accepted, "reset": proxy.connections_reset}
    return summary, run, run_dir, seen, counters


def check_exactly_once(summary, run, run_dir, seen, expected):
    reports = journal_reports(run_dir)
    by_agent = assert_seqs_contiguous(reports)
    assert len(by_agent) == 2
    assert summary["load"]["sent"] == expected == completed_in(reports) == seen
    for metric in Metric:
        assert sum_reports(reports, "main", metric) == \
            run.ingest.totals.targets["main"].histograms[metric]
    assert all(a["state"] == "finished" for a in summary["agents"])


def journal_kinds(run_dir):
    return [kind for kind, _ in read_journal(os.path.join(run_dir, JOURNAL))]


def cut_during(seconds, reset):
    """An on_interval hook cutting the proxy at the second merged interval for ``seconds``
    (restored from a timer on the run's own loop)."""
    def hook(proxy, merged):
        if merged.index == 1 and not hook.done:
            hook.done = True
            proxy.cut(reset=reset)
            asyncio.get_running_loop().call_later(seconds, proxy.restore)
    hook.done = False
    return hook


@pytest.mark.slow
def test_a_silent_partition_and_its_healing_lose_and_double_nothing(tmp_path):
    summary, run, run_dir, seen, _ = run_through_proxy(tmp_path, cut_during(2.8, reset=False))
    assert summary["status"] == "completed"
    lost = summary["agents_lost"]
    assert len(lost) == 1 and lost[0]["times_lost"] == 1 and lost[0]["unsent"] == 0
    kinds = journal_kinds(run_dir)
    assert kinds.index(RecordKind.AGENT_LOST) < kinds.index(RecordKind.AGENT_BACK)
    check_exactly_once(summary, run, run_dir, seen, RATE * DURATION_S)


@pytest.mark.slow
def test_a_reset_link_reconnects_and_loses_and_doubles_nothing(tmp_path):
    summary, run, run_dir, seen, counters = run_through_proxy(
        tmp_path, cut_during(2.8, reset=True))
    assert summary["status"] == "completed"
    assert counters["reset"] >= 1 and counters["accepted"] >= 2  # it really reconnected
    lost = summary["agents_lost"]
    assert len(lost) == 1 and lost[0]["times_lost"] == 1
    kinds = journal_kinds(run_dir)
    assert kinds.index(RecordKind.AGENT_LOST) < kinds.index(RecordKind.AGENT_BACK)
    check_exactly_once(summary, run, run_dir, seen, RATE * DURATION_S)


@pytest.mark.slow
def test_a_slow_link_is_not_a_lost_agent(tmp_path):
    def slow(proxy, merged):
        if merged.index == 0:
            proxy.delay(0.05)  # 50 ms per chunk each way, far below the 2 s loss timeout
    summary, run, run_dir, seen, _ = run_through_proxy(tmp_path, slow)
    assert summary["status"] == "completed"
    assert summary["agents_lost"] == []
    assert RecordKind.AGENT_LOST not in journal_kinds(run_dir)
    check_exactly_once(summary, run, run_dir, seen, RATE * DURATION_S)


def assert_broken(sock):
    """The connection was reset or closed by the proxy: nothing comes back."""
    try:
        sock.sendall(b"x")
        assert sock.recv(100) == b""
    except OSError:
        pass
    finally:
        sock.close()


def test_the_proxy_forwards_trickles_cuts_and_restores():
    """The proxy itself, against a real echo server: without this the tests above could
    pass with a proxy that never cut anything."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo():
        connection, _ = server.accept()
        with connection:
            try:
                while data := connection.recv(4096):
                    connection.sendall(data)
            except ConnectionResetError:
                pass  # the proxy's reset reaches the server too
    threading.Thread(target=echo, daemon=True).start()
    with FaultProxy(f"127.0.0.1:{server.getsockname()[1]}") as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        client.sendall(b"hello")
        received = b""
        while len(received) < 5:
            received += client.recv(100)
        assert received == b"hello"
        proxy.cut()
        client.sendall(b"during")
        client.settimeout(0.5)
        with pytest.raises(socket.timeout):
            client.recv(100)
        proxy.restore()
        client.settimeout(5)
        received = b""
        while len(received) < 6:
            received += client.recv(100)
        assert received == b"during"  # held, then delivered: nothing lost
        proxy.trickle(2, 0.05)
        began = time.monotonic()
        client.sendall(b"abcdefgh")
        received = b""
        while len(received) < 8:
            received += client.recv(100)
        assert received == b"abcdefgh" and time.monotonic() - began >= 0.19
        proxy.smooth()
        proxy.cut(reset=True)
        assert_broken(client)
        try:
            refused = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        except OSError:
            pass  # reset while connecting
        else:
            assert_broken(refused)
    server.close()
    with pytest.raises(ValueError):
        FaultProxy("10.0.0.1:80")
