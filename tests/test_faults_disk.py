"""A run directory that cannot hold the run: a file where the directory should be, a
read-only mount, and a real ENOSPC from a tiny tmpfs (full, or too small for the run).

``loadgate run`` must say so clearly (exit status, a message naming the directory, no
traceback) before any load is generated: the target's own request counter stays at zero.
Tests run as root, so permissions alone cannot make a directory unwritable; the mounts are
real ones, made in tmp_path and unmounted in a finalizer, and skipped if mounting is not
permitted here."""
import contextlib
import os
import subprocess
import sys
import time

import pytest

from agent_helpers import start_agent
from test_controller_run import real_target
from loadgate.native.errors import InfrastructureError

PLAN = """
apiVersion: loadgate/v1
deployment: {{id: DISK-TEST, type: FEATURE, risk: LOW, environment: DEV, strategy: BIG-BANG}}
targets:
  - {{name: main, url: "{url}"}}
load: {{rate: {rate}, duration: {duration}, interval: 100ms, connections: 2, timeout: 2s}}
downtime_window: {{start: "2025-01-01T00:00:00+00:00", end: "2025-01-01T01:00:00+00:00"}}
"""


@pytest.fixture(scope="module")
def agent_and_target():
    with real_target() as (url, requests_seen), start_agent(["--workers", "1"]) as agent:
        yield agent.address, url, requests_seen


def loadgate_run(tmp_path, agent_address, url, run_dir, rate=100, duration="1s"):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(url=url, rate=rate, duration=duration))
    return subprocess.run(
        [sys.executable, "-m", "loadgate.controller.cli", "run", str(plan), "--no-progress",
         "--agents", agent_address, "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=60)


def check_refused_before_load(result, run_dir, requests_seen, before, words):
    output = result.stdout + result.stderr
    assert result.returncode == InfrastructureError.exit_code, output
    assert "Traceback" not in output, output
    assert str(run_dir) in output, output
    assert any(word in output for word in words), output
    # No load was generated: the run never started.
    assert requests_seen() == before


def mount(*args):
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextlib.contextmanager
def mounted(point, *args):
    point.mkdir(exist_ok=True)
    result = mount(*args, str(point))
    if result.returncode != 0:
        pytest.skip(f"mounting is not permitted here: {result.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_file_where_the_run_directory_should_be(tmp_path, agent_and_target):
    address, url, requests_seen = agent_and_target
    before = requests_seen()
    run_dir = tmp_path / "run"
    run_dir.write_text("not a directory")
    result = loadgate_run(tmp_path, address, url, run_dir)
    check_refused_before_load(result, run_dir, requests_seen, before,
                              ("cannot create run directory", "Not a directory", "File exists"))
    assert run_dir.read_text() == "not a directory"


def test_a_read_only_mount(tmp_path, agent_and_target):
    address, url, requests_seen = agent_and_target
    before = requests_seen()
    source = tmp_path / "source"
    source.mkdir()
    with mounted(tmp_path / "ro", "--bind", str(source)) as point:
        if mount("-o", "remount,bind,ro", str(point)).returncode != 0:
            pytest.skip("a read-only remount is not permitted here")
        run_dir = point / "run"
        result = loadgate_run(tmp_path, address, url, run_dir)
    check_refused_before_load(result, run_dir, requests_seen, before, ("Read-only",))
    assert not os.listdir(source)


def fill(directory, leave_bytes):
    """Fills the file system of ``directory`` until at most ``leave_bytes`` are free."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    with open(os.path.join(directory, "filler"), "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave_bytes))
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            pass


def test_a_full_disk(tmp_path, agent_and_target):
    address, url, requests_seen = agent_and_target
    before = requests_seen()
    with mounted(tmp_path / "full", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as point:
        fill(point, 0)
        run_dir = point / "run"
        result = loadgate_run(tmp_path, address, url, run_dir)
    check_refused_before_load(result, run_dir, requests_seen, before,
                              ("No space", "space"))


def test_a_disk_too_small_for_the_run_is_refused_before_it_starts(tmp_path, agent_and_target):
    """Room for the run's first files but not for its journal: the run would die in the
    middle with its load already sent.  It must be refused up front instead."""
    address, url, requests_seen = agent_and_target
    before = requests_seen()
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as point:
        run_dir = point / "run"
        # 30 s at 100 ms intervals: 300 reports, several hundred KiB of journal.
        result = loadgate_run(tmp_path, address, url, run_dir, rate=50, duration="30s")
    check_refused_before_load(result, run_dir, requests_seen, before,
                              ("No space", "space"))


@pytest.mark.slow
def test_a_disk_that_fills_during_the_run_ends_it_cleanly(tmp_path, agent_and_target):
    """Someone else fills the disk while the run is going: the run must end with a clear
    error and stop its load, not crash with a traceback."""
    address, url, _ = agent_and_target
    with mounted(tmp_path / "filling", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as point:
        run_dir = point / "run"
        plan = tmp_path / "plan.yaml"
        plan.write_text(PLAN.format(url=url, rate=50, duration="3s"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadgate.controller.cli", "run", str(plan), "--no-progress",
             "--agents", address, "--run-dir", str(run_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            journal = run_dir / "journal.jsonl"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and b'"kind":"report"' not in _read(journal):
                time.sleep(0.05)
            fill(point, 0)
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode not in (0, None), output
    assert "Traceback" not in output, output
    assert "No space" in output or "space" in output, output


def _read(path):
    try:
        return path.read_bytes()
    except OSError:
        return b""
