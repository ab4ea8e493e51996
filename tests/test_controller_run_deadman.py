"""The controller SIGKILLed mid-run: the agents stop load by themselves within the dead-man
time (seen at the target), and ``loadgate run --resume`` collects every interval exactly once."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_controller_run import (assert_seqs_contiguous, completed_in, journal_reports,
                                 real_agents, real_target)
from loadgate.controller.run_journal import RecordKind, read_journal
from loadgate.controller.rundir import JOURNAL

RUN = [sys.executable, "-m", "loadgate.controller.cli", "run"]
DEAD_MAN_S = 1.5
RATE = 100
DURATION_S = 4.0


def write_plan(path, url):
    path.write_text(f"""
apiVersion: loadgate/v1
deployment: {{id: DEADMAN-TEST, type: FEATURE, risk: LOW, environment: DEV, strategy: BIG-BANG}}
targets:
  - {{name: main, url: "{url}"}}
load: {{rate: {RATE}, duration: {DURATION_S}s, interval: 500ms, connections: 2, timeout: 1s}}
agent_loss: continue
downtime_window: {{start: "2025-01-01T00:00:00+00:00", end: "2025-01-01T01:00:00+00:00"}}
""")


def wait_for_reports(run_dir, count, timeout=30.0):
    path = os.path.join(run_dir, JOURNAL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            kinds = [kind for kind, _ in read_journal(path)]
            if kinds.count(RecordKind.REPORT) >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"no {count} reports journaled in {timeout} s")


def kill_controller_after_reports(run_args, run_dir, reports=2):
    """Runs ``loadgate run RUN_ARGS`` and SIGKILLs it once ``reports`` reports are journaled,
    as a crash mid-run would."""
    controller = subprocess.Popen(
        RUN + list(run_args),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_reports(run_dir, reports)
    finally:
        controller.send_signal(signal.SIGKILL)
        controller.wait()


@pytest.mark.slow
def test_killed_controller_agents_stop_and_resume_collects_everything(tmp_path):
    plan = tmp_path / "plan.yaml"
    run_dir = str(tmp_path / "run")
    with real_target() as (url, requests_seen), \
            real_agents(2, args=("--workers", "1", "--dead-man", f"{DEAD_MAN_S}s")) as agents:
        write_plan(plan, url)
        kill_controller_after_reports(
            [str(plan), "--agents", ",".join(a.address for a in agents), "--run-dir", run_dir,
             "--no-progress"], run_dir)
        killed = time.monotonic()
        # Watch the target until well past the schedule's end: the count must stop growing
        # within the dead-man time and then stay flat.
        last_count, last_change = requests_seen(), killed
        while time.monotonic() < killed + DURATION_S + 1.0:
            count = requests_seen()
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            time.sleep(0.05)
        assert last_change - killed < DEAD_MAN_S + 1.0
        assert last_count < RATE * DURATION_S

        report = os.path.join(run_dir, "report.html")
        assert not os.path.exists(report)
        resumed = subprocess.run(RUN + ["--resume", run_dir, "--no-progress"],
                                 capture_output=True, text=True, timeout=60)
        seen = requests_seen()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"report: {report}" in resumed.stdout and os.path.getsize(report)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    reports = journal_reports(run_dir)
    assert_seqs_contiguous(reports)
    assert all(a["state"] == "finished" for a in summary["agents"])
    # Nothing lost, nothing doubled: the merged count is what the target answered.
    assert summary["load"]["completed"] == completed_in(reports) == seen
    assert summary["load"]["shortfall"] == RATE * DURATION_S - summary["load"]["sent"] > 0
    kinds = [kind for kind, _ in read_journal(os.path.join(run_dir, JOURNAL))]
    assert RecordKind.RESUMED in kinds and kinds[-1] is RecordKind.FINISHED


def agent_alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.mark.slow
def test_resume_adopts_and_stops_the_local_agents_of_a_killed_controller(tmp_path):
    plan = tmp_path / "plan.yaml"
    run_dir = str(tmp_path / "run")
    with real_target() as (url, requests_seen):
        write_plan(plan, url)
        plan.write_text(plan.read_text() + "local_agents: 2\n")
        kill_controller_after_reports(
            [str(plan), "--run-dir", run_dir, "--workers", "1", "--no-progress",
             "--dead-man", str(DEAD_MAN_S)], run_dir)
        with open(os.path.join(run_dir, "local-agents.json")) as f:
            pids = json.load(f)["pids"]
        # Orphaned, the agents live on (holding their reports) and stop their own load.
        assert len(pids) == 2 and all(agent_alive(pid) for pid in pids)
        time.sleep(DEAD_MAN_S + 1.0)
        stopped_at = requests_seen()
        time.sleep(0.5)
        assert requests_seen() == stopped_at < RATE * DURATION_S

        resumed = subprocess.run(RUN + ["--resume", run_dir, "--no-progress"],
                                 capture_output=True, text=True, timeout=60)
        seen = requests_seen()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert [a["state"] for a in summary["agents"]] == ["finished", "finished"]
    assert summary["load"]["completed"] == completed_in(journal_reports(run_dir)) == seen
    assert not any(agent_alive(pid) for pid in pids)
