"""``loadgate run --serve``: the run's Controller service, watched while the run lasts, for
a readiness run and for a plain load run.

Real parts only: a ``loadgate target`` process, ``loadgate run`` as a process that starts two
local agents itself, and the Controller client of ``loadgate watch`` on loopback.
"""
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap

import grpc
import pytest
from rich.console import Console

from loadgate.controller import cli, gate_cli
from loadgate.controller.service_client import ControllerClient
from loadgate.controller.watch import WatchState, render
from loadgate.native.target import (parse_listening, read_first_line, start_target_process,
                                    stop_target_process)
from loadgate.proto.loadgate.v1 import common_pb2, controller_pb2
from test_service_support import RUN_TIMEOUT_S, plan_text

CLI = [sys.executable, "-m", "loadgate.controller.cli"]
AGENTS = 2


@pytest.fixture(scope="module")
def target():
    process, host, port = start_target_process(["--latency", "lognormal:4ms:0.3"])
    try:
        yield f"http://{host}:{port}"
    finally:
        stop_target_process(process)


def write_plan(tmp_path, url):
    path = tmp_path / "plan.yaml"
    path.write_text(plan_text(url, url, extra=f"local_agents: {AGENTS}\n"))
    return str(path)


@contextlib.contextmanager
def served_run(tmp_path, plan, run_dir):
    """``loadgate run PLAN --serve 127.0.0.1:0`` as a process; yields (process, address) once
    its first line says where the service listens, and kills it if it is still running."""
    with open(tmp_path / "stderr", "wb") as stderr:
        process = subprocess.Popen(
            CLI + ["run", plan, "--serve", "127.0.0.1:0", "--workers", "1", "--no-progress",
                   "--run-dir", str(run_dir)],
            stdout=subprocess.PIPE, stderr=stderr)
    try:
        line = read_first_line(process, RUN_TIMEOUT_S)
        listening = parse_listening(line)
        assert listening, f"no 'listening on' line: {line!r}, " \
                          f"stderr: {(tmp_path / 'stderr').read_text()}"
        yield process, f"{listening[0]}:{listening[1]}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.mark.slow
def test_a_served_run_streams_each_agents_health_and_closes_its_port_at_the_end(
        target, tmp_path):
    run_dir = tmp_path / "run"
    with served_run(tmp_path, write_plan(tmp_path, target), run_dir) as (process, address):
        with ControllerClient(address) as client:
            events = list(client.stub.WatchRun(controller_pb2.WatchRunRequest(),
                                               timeout=RUN_TIMEOUT_S))
        code = process.wait(RUN_TIMEOUT_S)
    assert events[0].snapshot.run_id == "run"
    assert events[-1].WhichOneof("event") == "finished" and events[-1].finished.verdict
    assert code == int(gate_cli.check(str(run_dir))[0])
    intervals = [e.interval for e in events if e.WhichOneof("event") == "interval"]
    assert intervals, "no interval reached the watcher"
    assert all(len(i.agents) == AGENTS for i in intervals)
    complete = [i for i in intervals if not i.missing_agents and not i.correction]
    assert complete, "every interval missed an agent"
    for interval in complete:
        # Each agent runs the one worker it was given, and says so in its own entry.
        assert [agent.workers for agent in interval.agents] == [1] * AGENTS
        assert sum(a.cpu_seconds for a in interval.agents) == pytest.approx(
            interval.generator.cpu_seconds)
        assert sum(a.open_connections for a in interval.agents) == \
            interval.generator.open_connections
    agent_ids = [agent.agent_id for agent in complete[0].agents]
    assert len(set(agent_ids)) == AGENTS and all(agent_ids)
    assert all([agent.agent_id for agent in i.agents] == agent_ids for i in complete)
    state = WatchState()
    for event in events:
        if event.WhichOneof("event") != "interval" or event.interval in complete:
            state.apply(event)
    drawn = io.StringIO()
    Console(file=drawn, width=160).print(render(state))
    assert all(f"agent {n} {agent_id}" in drawn.getvalue()
               for n, agent_id in enumerate(agent_ids))
    with pytest.raises(ConnectionRefusedError):
        host, port = address.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()


def test_serving_beyond_loopback_without_credentials_is_refused_before_any_load(
        target, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = cli.main(["run", write_plan(tmp_path, target), "--serve", "0.0.0.0:0",
                     "--run-dir", str(run_dir)])
    assert code == 3
    assert "--serve 0.0.0.0:0 is reachable from other hosts: give --token-file or " \
           "--tls-dir" in capsys.readouterr().err
    assert not os.path.exists(run_dir)


def write_plain_plan(tmp_path, url):
    # Long enough that only the Abort under test ends it before the test's own timeouts.
    path = tmp_path / "plain.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: loadgate/v1
        deployment: {{id: PLAIN, type: FEATURE, risk: LOW, environment: DEV,
                     strategy: BIG-BANG}}
        targets:
          - {{name: main, url: "{url}"}}
        load: {{rate: 200, duration: 60s, connections: 4, interval: 250ms, timeout: 2s}}
        local_agents: {AGENTS}
        downtime_window: {{start: '2025-01-01T00:00:00+00:00', end: '2025-01-01T01:00:00+00:00'}}
        """))
    return str(path)


def first_interval_from_every_agent(events):
    """Reads events until an interval carries every agent's own report; returns it with
    every event read so far."""
    seen = []
    for event in events:
        seen.append(event)
        if event.WhichOneof("event") == "finished":
            break
        interval = event.interval
        if event.WhichOneof("event") == "interval" and not interval.missing_agents \
                and not interval.correction and len(interval.agents) == AGENTS \
                and all(agent.workers for agent in interval.agents):
            return interval, seen
    pytest.fail(f"no interval with every agent's report among {len(seen)} events")


@pytest.mark.slow
def test_a_served_plain_run_streams_agents_by_id_refuses_approval_and_aborts(target, tmp_path):
    run_dir = tmp_path / "run"
    with served_run(tmp_path, write_plain_plan(tmp_path, target), run_dir) as (process, address):
        with ControllerClient(address) as client:
            stream = client.stub.WatchRun(controller_pb2.WatchRunRequest(),
                                          timeout=RUN_TIMEOUT_S)
            interval, events = first_interval_from_every_agent(stream)
            running = client.stub.GetRun(controller_pb2.GetRunRequest(run_id=""),
                                         timeout=RUN_TIMEOUT_S)
            listed = client.stub.ListRuns(controller_pb2.ListRunsRequest(),
                                          timeout=RUN_TIMEOUT_S)
            with pytest.raises(grpc.RpcError) as refused:
                client.stub.Approve(controller_pb2.ApproveRequest(
                    run_id=running.run_id, who="alice", reason="looks fine"),
                    timeout=RUN_TIMEOUT_S)
            client.stub.Abort(controller_pb2.AbortRequest(
                run_id=running.run_id, who="alice", reason="enough load"), timeout=RUN_TIMEOUT_S)
            events += list(stream)
        code = process.wait(RUN_TIMEOUT_S)
    summary = json.loads((run_dir / "summary.json").read_text())
    agent_ids = [agent["agent_id"] for agent in summary["agents"]]
    assert len(set(agent_ids)) == AGENTS and all(agent_ids)
    # Each agent names its own entry, in the run's agent order.
    assert [agent.agent_id for agent in interval.agents] == agent_ids
    assert interval.phase == "load" and [t.name for t in interval.targets] == ["main"]

    assert events[0].snapshot.run_id == summary["run_id"] == running.run_id
    assert not running.finished and running.run_end == common_pb2.RUN_END_UNSPECIFIED
    assert running.deployment_id == "PLAIN" and not running.stages
    assert [info.run_id for info in listed.runs] == [running.run_id]
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing to approve" in refused.value.details()

    # The Abort stopped the run as Ctrl-C does: exit status 2, the summary written.
    assert code == 2, (tmp_path / "stderr").read_text()
    assert summary["status"] == "stopped" and "alice" in summary["reason"]
    finished = events[-1]
    assert finished.WhichOneof("event") == "finished"
    assert finished.finished.finished and finished.finished.run_end == common_pb2.RUN_END_STOPPED

    state = WatchState()
    for event in events:
        if event.WhichOneof("event") != "interval" or not event.interval.missing_agents:
            state.apply(event)
    drawn = io.StringIO()
    Console(file=drawn, width=160).print(render(state))
    assert all(agent_id in drawn.getvalue() for agent_id in agent_ids)
    assert "load run stopped" in drawn.getvalue()
