"""The embedded default: ``loadgate run`` with no agents starts its own on loopback.

Each agent is a real ``loadgate agent --listen 127.0.0.1:0`` process; its output goes to a
log file (in the run directory) whose first line, ``listening on HOST:PORT``, says where it
listens.  The cores are shared out so N local agents do not oversubscribe the node.

The agents run in sessions of their own, so a controller that dies leaves them running: they
stop their load by the dead-man switch and keep their reports for ``loadgate run --resume``,
which adopts them (``record`` / ``AdoptedAgents``) and stops them once the run is collected.
"""
import json
import os
import signal
import subprocess
import sys
import time

from loadgate.native.errors import InfrastructureError
from loadgate.native.target import parse_listening


class LocalAgents:
    """``count`` agent processes; a context manager that stops them on exit."""

    def __init__(self, count, log_path, workers=None, dead_man="5s", extra_args=(), env=None,
                 startup_timeout_s=30.0):
        if count < 1:
            raise InfrastructureError(f"cannot start {count} local agents")
        self.count = count
        self.log_path = log_path  # callable: index -> path of that agent's log
        self.workers = workers or max(1, (os.cpu_count() or 1) // count)
        self.dead_man = dead_man
        self.extra_args = tuple(str(a) for a in extra_args)
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.processes = []
        self.addresses = []

    def start(self):
        """Starts every agent and returns their addresses once all listen."""
        logs = []
        try:
            for index in range(self.count):
                path = self.log_path(index)
                log = open(path, "w")
                logs.append(path)
                command = [sys.executable, "-m", "loadgate.controller.cli", "agent",
                           "--listen", "127.0.0.1:0", "--workers", str(self.workers),
                           "--dead-man", self.dead_man, *self.extra_args]
                # Its own session: a Ctrl-C at the terminal reaches the controller, which
                # stops the agents in order, rather than killing them mid-report.
                self.processes.append(subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self.env, start_new_session=True))
                log.close()
            self.addresses = [self._wait_listening(p, path)
                              for p, path in zip(self.processes, logs)]
        except BaseException:
            self.stop()
            raise
        return list(self.addresses)

    def _wait_listening(self, process, path):
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            with open(path) as f:
                first = f.readline()
            if first.endswith("\n"):
                address = parse_listening(first.strip())
                if address:
                    return f"{address[0]}:{address[1]}"
                raise InfrastructureError(f"local agent said {first.strip()!r} (log: {path})")
            if process.poll() is not None:
                raise InfrastructureError(
                    f"local agent exited with status {process.returncode} (log: {path})")
            time.sleep(0.02)
        raise InfrastructureError(f"local agent did not listen within "
                                  f"{self.startup_timeout_s:g} s (log: {path})")

    def record(self, path):
        """Writes the agents' pids and addresses for a controller that resumes the run."""
        with open(path, "w") as f:
            json.dump({"pids": [p.pid for p in self.processes], "addresses": self.addresses}, f)

    def stop(self, timeout_s=15.0):
        """SIGTERM every agent, SIGKILL those still running after ``timeout_s``."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class AdoptedAgents:
    """Local agents a previous controller process started (from its ``record`` file)."""

    def __init__(self, path):
        with open(path) as f:
            recorded = json.load(f)
        self.pids = [pid for pid in recorded["pids"] if _is_agent(pid)]
        self.addresses = recorded["addresses"]

    def stop(self, timeout_s=15.0):
        """SIGTERM the agents that are still ours, SIGKILL any left after ``timeout_s``."""
        for pid in self.pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_is_agent(pid) for pid in self.pids):
            time.sleep(0.05)
        for pid in self.pids:
            if _is_agent(pid):
                _signal(pid, signal.SIGKILL)


def _is_agent(pid):
    # A recorded pid may have been reused by an unrelated process since.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat", "rb") as f:
            zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return False
    return not zombie and b"loadgate.controller.cli" in words and b"agent" in words


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
