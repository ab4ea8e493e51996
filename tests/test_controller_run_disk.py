"""A disk that fills while ``loadgate run`` is going (a real 1 MiB tmpfs, filled by the test):
the run ends FAILED with exit status 4, an error naming the file and its errno, the
summary printed, the agents' load stopped, and the journal still a whole, readable prefix of
what the run received."""
import subprocess
import sys
import time

import pytest

from agent_helpers import start_agent
from test_controller_run import real_target
from test_faults_disk import PLAN, fill, mounted
from loadgate.controller.run_journal import RecordKind, read_journal
from loadgate.native.errors import InfrastructureError

RATE = 100
DURATION_S = 5


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_fails_the_run_and_stops_the_load(tmp_path):
    with real_target() as (url, requests_seen), start_agent(["--workers", "1"]) as agent, \
            mounted(tmp_path / "filling", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as point:
        run_dir = point / "run"
        journal = run_dir / "journal.jsonl"
        plan = tmp_path / "plan.yaml"
        plan.write_text(PLAN.format(url=url, rate=RATE, duration=f"{DURATION_S}s"))
        before = requests_seen()
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadgate.controller.cli", "run", str(plan), "--no-progress",
             "--agents", agent.address, "--run-dir", str(run_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and b'"kind":"report"' not in _read(journal):
                time.sleep(0.02)
            journaled_before_fill = _read(journal)
            fill(point, 0)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        sent = requests_seen() - before
        time.sleep(0.5)
        after_end = requests_seen() - before
        records = list(read_journal(journal))
        final_journal = journal.read_bytes()

    output = stdout + stderr
    assert proc.returncode == InfrastructureError.exit_code, output
    assert "Traceback" not in output, output
    # Whichever file of the run directory the disk refused first is named, with its errno.
    assert f"error: cannot write {run_dir}/" in stderr, output
    assert "[Errno 28] No space left on device" in stderr, output
    assert "failed (cannot write" in stdout, output  # the summary, printed
    # The load stopped with the run, well short of its schedule, and nothing came after.
    assert 0 < sent < RATE * DURATION_S * 0.6, output
    assert after_end == sent
    # Everything journaled before the disk filled is still there, whole and readable.
    assert final_journal.startswith(journaled_before_fill[:journaled_before_fill.rfind(b"\n") + 1])
    kinds = [kind for kind, _ in records]
    assert kinds[0] is RecordKind.RUN and RecordKind.REPORT in kinds
    # A journal that could still record the end records the failure.
    assert all(r["status"] == "failed" for kind, r in records if kind is RecordKind.FINISHED)


def _read(path):
    try:
        return path.read_bytes()
    except OSError:
        return b""
