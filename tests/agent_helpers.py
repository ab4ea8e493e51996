"""Start real ``loadgate agent`` subprocesses on loopback for tests, and talk to them.

    with start_agent(["--dead-man", "2s"]) as agent:
        stub = agent.stub()
        stub.Ping(agent_pb2.PingRequest())

``start_agent`` listens on 127.0.0.1:0 and learns the port from the agent's first line of
output.  ``fake_nvml=spec`` makes the agent sample the faithful fake NVML in
tests/fake_nvml.py (``spec`` as documented there) instead of the real library.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc

from loadgate.native.target import parse_listening, read_first_line
from loadgate.proto.loadgate.v1 import agent_pb2, agent_pb2_grpc

AGENT_COMMAND = [sys.executable, "-m", "loadgate.agent.main"]
FAKE_NVML_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_nvml.py")


class AgentProcess:
    """A running agent subprocess: ``address`` (host:port), ``proc``, and helpers."""

    def __init__(self, proc, host, port):
        self.proc = proc
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self._channels = []

    def channel(self, credentials=None, options=()):
        """A new blocking channel to the agent (closed with the agent)."""
        if credentials is None:
            channel = grpc.insecure_channel(self.address, options=list(options))
        else:
            channel = grpc.secure_channel(self.address, credentials, options=list(options))
        self._channels.append(channel)
        return channel

    def stub(self, credentials=None, options=()):
        """An AgentStub on a new channel."""
        return agent_pb2_grpc.AgentStub(self.channel(credentials, options))

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode

    def kill(self):
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def agent_env(fake_nvml=None, env=None):
    """The environment for an agent subprocess, with the fake NVML when a spec is given."""
    result = dict(os.environ if env is None else env)
    if fake_nvml is not None:
        result["LOADGATE_FAKE_NVML"] = FAKE_NVML_PATH
        result["LOADGATE_FAKE_NVML_SPEC"] = json.dumps(fake_nvml)
    return result


def start_agent(args=(), fake_nvml=None, env=None, timeout=30.0, stderr=None, prefix=()):
    """Runs ``loadgate agent`` (on 127.0.0.1:0 unless ``args`` has --listen) and returns an
    AgentProcess once it listens.  ``prefix`` goes before the agent's command line (e.g.
    ``ip netns exec NAME``).  Raises RuntimeError with the agent's exit status if it does
    not come up."""
    args = [str(a) for a in args]
    if "--listen" not in args:
        args = ["--listen", "127.0.0.1:0"] + args
    proc = subprocess.Popen([*prefix, *AGENT_COMMAND, *args],
                            stdout=subprocess.PIPE, stderr=stderr,
                            env=agent_env(fake_nvml, env))
    line = read_first_line(proc, timeout)
    address = parse_listening(line)
    if address is None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"agent did not start (exit {proc.returncode}, said {line!r})")
    return AgentProcess(proc, *address)


def run_spec(url, rate, duration_s, *, name="main", connections=4, max_connections=64,
             timeout_s=2.0, interval_s=0.5, workers=1, dead_man_s=0.0, model="constant",
             shard_index=0, shard_count=1, targets=None):
    """A RunSpec for a simple run against ``url`` (or the given TargetSpecs)."""
    if targets is None:
        targets = [agent_pb2.TargetSpec(name=name, url=url, weight=1.0)]
    schedule = agent_pb2.ScheduleSpec(model=model, rate=rate, duration_s=duration_s,
                                      shard_index=shard_index, shard_count=shard_count)
    return agent_pb2.RunSpec(targets=targets, schedule=schedule, connections=connections,
                             max_connections=max_connections, timeout_s=timeout_s,
                             interval_s=interval_s, workers=workers, dead_man_s=dead_man_s)


class Pinger:
    """Pings an agent every ``period_s`` on a thread, as a controller's heartbeat does;
    ``last_ok_ns`` is when the last answered ping was sent."""

    def __init__(self, stub, period_s=0.25):
        self.stub = stub
        self.period_s = period_s
        self.last_ok_ns = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            sent = time.time_ns()
            try:
                self.stub.Ping(agent_pb2.PingRequest(controller_unix_ns=sent,
                                                     controller_id="tests"), timeout=5)
                self.last_ok_ns = sent
            except grpc.RpcError:
                self.failures += 1
            self._stop.wait(self.period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def stream_reports(stub, run_id, after_seq=0, timeout=60.0, limit=None):
    """Reports from StreamReports(after_seq) until the final one (or ``limit`` of them)."""
    reports = []
    call = stub.StreamReports(agent_pb2.StreamReportsRequest(run_id=run_id, after_seq=after_seq),
                              timeout=timeout)
    for report in call:
        reports.append(report)
        if report.final or (limit is not None and len(reports) >= limit):
            call.cancel()
            break
    return reports
