"""The controller SIGKILLed while its agents keep generating (their dead-man time outlasts the
outage), then ``loadgate run --resume DIR``: the resumed controller picks every agent's stream
up at the last journaled seq, and the run ends as if nothing had happened, with no shortfall,
every (agent, seq) journaled once and the target's count equal to the run's.

test_controller_run_deadman.py covers the other case (agents stop by themselves).  Here also:
killed twice (the resumed controller killed too), and killed in the middle of a journal
write, which leaves a torn last line that the next controller must cut off, not build on."""
import json
import os
import signal
import subprocess
import sys

import pytest

from test_controller_run import (assert_seqs_contiguous, completed_in, journal_reports,
                                 real_agents, real_target)
from test_controller_run_deadman import wait_for_reports
from loadgate.controller.run_journal import RecordKind, read_journal
from loadgate.controller.rundir import JOURNAL

RATE = 100
DURATION_S = 4.0
CLI = [sys.executable, "-m", "loadgate.controller.cli", "run", "--no-progress"]


def write_plan(path, url):
    path.write_text(f"""
apiVersion: loadgate/v1
deployment: {{id: KILL-TEST, type: FEATURE, risk: LOW, environment: DEV, strategy: BIG-BANG}}
targets:
  - {{name: main, url: "{url}"}}
load: {{rate: {RATE}, duration: {DURATION_S}s, interval: 250ms, connections: 2, timeout: 1s}}
agent_loss: continue
downtime_window: {{start: "2025-01-01T00:00:00+00:00", end: "2025-01-01T01:00:00+00:00"}}
""")


def kill_after(command, run_dir, reports):
    """Starts a controller, SIGKILLs it once ``reports`` reports are journaled."""
    controller = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_reports(run_dir, reports)
    finally:
        controller.send_signal(signal.SIGKILL)
        controller.wait()


def journal_report_count(run_dir):
    return sum(1 for kind, _ in read_journal(os.path.join(run_dir, JOURNAL))
               if kind is RecordKind.REPORT)


def check_complete(run_dir, resumed, seen, resumes):
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["status"] == "completed"
    assert all(a["state"] == "finished" for a in summary["agents"])
    records = list(read_journal(os.path.join(run_dir, JOURNAL)))
    reports = journal_reports(run_dir)
    assert len(assert_seqs_contiguous(reports)) == 2
    assert sum(1 for r in reports if r.final) == 2
    # The agents never stopped: nothing is missing, nothing doubled.
    assert summary["load"]["shortfall"] == 0
    assert summary["load"]["sent"] == RATE * DURATION_S == completed_in(reports) == seen
    kinds = [kind for kind, _ in records]
    assert kinds.count(RecordKind.RESUMED) == resumes and kinds[-1] is RecordKind.FINISHED


@pytest.fixture
def peers():
    with real_target() as (url, requests_seen), \
            real_agents(2, args=("--workers", "1", "--dead-man", "20s")) as agents:
        yield url, requests_seen, ",".join(a.address for a in agents)


@pytest.mark.slow
def test_a_controller_killed_twice_resumes_twice_and_loses_nothing(tmp_path, peers):
    url, requests_seen, agents = peers
    plan = tmp_path / "plan.yaml"
    write_plan(plan, url)
    run_dir = str(tmp_path / "run")
    kill_after(CLI + [str(plan), "--agents", agents, "--run-dir", run_dir], run_dir, 2)
    first = journal_report_count(run_dir)
    kill_after(CLI + ["--resume", run_dir], run_dir, first + 3)
    resumed = subprocess.run(CLI + ["--resume", run_dir], capture_output=True, text=True,
                             timeout=60)
    check_complete(run_dir, resumed, requests_seen(), resumes=2)


@pytest.mark.slow
def test_a_controller_killed_mid_write_leaves_a_torn_line_the_resume_cuts_off(tmp_path, peers):
    url, requests_seen, agents = peers
    plan = tmp_path / "plan.yaml"
    write_plan(plan, url)
    run_dir = str(tmp_path / "run")
    kill_after(CLI + [str(plan), "--agents", agents, "--run-dir", run_dir], run_dir, 2)
    # What a SIGKILL between write() and its end leaves: the head of a record, no newline.
    journal = os.path.join(run_dir, JOURNAL)
    with open(journal, "rb") as f:
        last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    with open(journal, "ab") as f:
        f.write(last[:len(last) // 2])
    resumed = subprocess.run(CLI + ["--resume", run_dir], capture_output=True, text=True,
                             timeout=60)
    check_complete(run_dir, resumed, requests_seen(), resumes=1)
