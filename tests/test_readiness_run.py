"""``loadgate run`` of a readiness plan, and ``--resume`` of one whose controller was killed.

Real parts only: two ``loadgate target`` processes on loopback, the local agent that
``loadgate run`` starts itself, the controller as a process killed with SIGKILL mid-ramp.
"""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from rich.console import Console

from agent_helpers import start_agent
from loadgate.controller import gate_cli
from loadgate.controller.plan import load_plan, parse_plan
from loadgate.controller.readiness_run import (
    LOCAL_AGENTS_FILE, is_readiness_plan, is_readiness_run, render_summary, run_readiness)
from loadgate.controller.gates import GateResult, GateStatus
from loadgate.controller.verdict import Verdict, VerdictStatus, load
from loadgate.native.target import start_target_process, stop_target_process

# Baseline and canary are two routes of one target process: two processes on this shared
# machine are starved of CPU at different moments, and the relative gates would see it.
TARGET = ["--latency", "lognormal:20ms:0.2", "--route", "/canary", "latency=lognormal:20ms:0.2"]
CLI = [sys.executable, "-m", "loadgate.controller.cli"]


def plan_text(url, hold="2s", steps="[5, 25, 50, 100]", gates=True):
    gates_section = """\
        gates:
          latency: {p95: 200ms}
          error_rate: 2%
          relative: {test: mann-whitney, min_effect: 15%, ratios: {p50: 1.3, p99: 2}}
        """ if gates else "downtime_window: {start: '2025-01-01T00:00:00+00:00', " \
                          "end: '2025-01-01T01:00:00+00:00'}\n"
    return textwrap.dedent(f"""\
        apiVersion: loadgate/v1
        deployment: {{id: RUN-READINESS, type: FEATURE, risk: LOW, environment: DEV,
                     strategy: {"CANARY" if gates else "BIG-BANG"}}}
        targets:
          - {{name: baseline, url: "{url}", role: baseline}}
          - {{name: canary, url: "{url}", role: canary, weight: 0, request: {{path: /canary}}}}
        load: {{rate: 400, duration: 2s, connections: 32, interval: 500ms, timeout: 2s}}
        canary: {{steps: {steps}, hold: {hold}, max_hold: 30s}}
        monitoring: {{post_deploy_window: 2s}}
        """) + textwrap.dedent(gates_section)


@pytest.fixture(scope="module")
def target():
    process, host, port = start_target_process(TARGET)
    try:
        yield f"http://{host}:{port}"
    finally:
        stop_target_process(process)


def records(run_dir):
    with open(os.path.join(run_dir, "journal.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.endswith("\n")]


def canary_steps(run_dir):
    return [(r["index"], r["weight"], r["status"]) for r in records(run_dir)
            if r["kind"] == "step" and r.get("phase") == "canary"]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_plan_with_gates_is_a_readiness_plan_and_one_without_is_a_load_run():
    with_gates = parse_plan(plan_text("http://127.0.0.1:1"))
    without = parse_plan(plan_text("http://127.0.0.1:1", gates=False))
    assert is_readiness_plan(with_gates)
    assert not is_readiness_plan(without)


def test_only_a_readiness_journal_is_resumed_as_a_readiness_run(tmp_path):
    assert not is_readiness_run(str(tmp_path))
    (tmp_path / "journal.jsonl").write_text('{"kind": "run", "time": 1}\n')
    assert not is_readiness_run(str(tmp_path))
    (tmp_path / "journal.jsonl").write_text('{"kind": "plan", "time": 1, "plan": {}}\n')
    assert is_readiness_run(str(tmp_path))


def gate(name, status, measured, window="canary step 2 (25%)", unit="ms"):
    return GateResult(name, measured, 200.0, window, 400, GateStatus(status), "why", unit)


def verdict_of(status, gates, steps=(), stages=()):
    return Verdict(status=VerdictStatus(status), run_status="failed", recommendation=(
        "DEPLOY" if status == "PASS" else "DO NOT DEPLOY"), marker="[OTKAT]",
        deployment={"id": "D-1"}, classification=[], overrides=[], gates=list(gates),
        reasons=["canary step 2 (25%) failed"], next_steps=["Fix it", "Re-run"],
        stages=list(stages), steps=list(steps))


def test_the_summary_names_the_failed_gate_its_window_and_the_figures_beside_it(tmp_path):
    (tmp_path / "report.md").write_text("x")
    verdict = verdict_of("FAIL", [
        gate("canary.latency.p95", "PASS", 20.0, window="canary step 1 (5%)"),
        gate("canary.latency.p95", "PASS", 61.0),
        gate("relative.p95_ratio", "INCONCLUSIVE", 1.41, unit="x"),
        gate("relative.mann-whitney", "FAIL", 23.1, unit="pts")],
        steps=[{"phase": "canary", "window": "canary step 1 (5%)", "status": "PASS"},
               {"phase": "canary", "window": "canary step 2 (25%)", "status": "FAIL"}],
        stages=[{"node": "deployment.staging", "rolled_back": True}])
    text = render_summary(verdict, str(tmp_path))
    lines = text.splitlines()
    assert lines[1] == "Deployment D-1: FAIL [OTKAT]"
    assert lines[2] == "Recommendation: DO NOT DEPLOY"
    assert lines[3] == ("  FAIL relative.mann-whitney in canary step 2 (25%): measured 23.1 pts "
                        "against 200 pts (400 samples)")
    assert lines[4] == ("  in the same window: relative.p95_ratio 1.41 x (INCONCLUSIVE), "
                        "canary.latency.p95 61 ms (PASS)")
    assert "Canary: 2 step(s) judged, last canary step 2 (25%) FAIL, rolled back" in lines
    assert "Next Steps:" in lines and "  2. Re-run" in lines
    assert f"  {tmp_path / 'report.md'}" in lines and str(tmp_path / "report.html") not in text


def test_an_inconclusive_summary_names_the_gates_that_lacked_evidence(tmp_path):
    verdict = verdict_of("INCONCLUSIVE", [
        gate("canary.latency.p99", "INCONCLUSIVE", float("nan")),
        gate("canary.latency.p95", "PASS", 30.0)])
    text = render_summary(verdict, str(tmp_path))
    assert "  INCONCLUSIVE canary.latency.p99 in canary step 2 (25%): measured n/a" in text
    assert "canary.latency.p95" not in text


@pytest.mark.slow
def test_loadgate_run_of_a_readiness_plan_writes_the_verdict_and_reports(tmp_path, target):
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(target, steps="[25, 100]"))
    run_dir = tmp_path / "run"
    result = subprocess.run(CLI + ["run", str(plan), "--run-dir", str(run_dir), "--workers",
                                   "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("verdict.json", "report.md", "junit.xml", "report.html"):
        assert (run_dir / name).stat().st_size > 0, name
    verdict = load(str(run_dir))
    assert verdict.status.value == "PASS"
    assert canary_steps(run_dir) == [(0, 25, "PASS"), (1, 100, "PASS")]
    assert "Recommendation: DEPLOY" in result.stdout and str(run_dir / "report.html") in \
        result.stdout
    # Without a terminal the progress is one line per transition, on stderr.
    assert "deployment.staging: NSV:VYPOLNYAETSYA -> NSV:TESTIRUYETSYA" in result.stderr
    check = subprocess.run(CLI + ["gate", "check", str(run_dir)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 == result.returncode, check.stdout
    assert not os.path.exists(run_dir / "load" / "summary.json") or \
        json.loads((run_dir / "load" / "summary.json").read_text())["status"] != "failed"
    assert render_summary(verdict, str(run_dir)).count("\n") > 4


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_target_that_does_not_answer_is_an_infrastructure_error(tmp_path, target):
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(target).replace(f'url: "{target}", role: canary',
                                              f'url: "http://127.0.0.1:{closed_port()}", '
                                              'role: canary'))
    run_dir = tmp_path / "run"
    result = subprocess.run(CLI + ["run", str(plan), "--run-dir", str(run_dir), "--workers",
                                   "1", "--no-progress"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "no answer from canary" in result.stdout
    assert not [r for r in records(run_dir) if r["kind"] == "step"]  # no load was judged
    check = subprocess.run(CLI + ["gate", "check", str(run_dir)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 4, check.stdout


@pytest.mark.slow
def test_a_killed_controller_resumes_at_the_step_it_was_in(tmp_path, target):
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(target, hold="2s", steps="[25, 50, 100]"))
    run_dir = tmp_path / "run"
    first = subprocess.Popen(CLI + ["run", str(plan), "--run-dir", str(run_dir), "--workers",
                                    "1", "--no-progress"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and first.poll() is None:
            if os.path.exists(run_dir / "journal.jsonl") and \
                    [s[:2] for s in canary_steps(run_dir)] == [(0, 25)]:
                break
            time.sleep(0.05)
        assert canary_steps(run_dir) == [(0, 25, "PASS")], "the first step never finished"
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(30)
    left = json.loads((run_dir / LOCAL_AGENTS_FILE).read_text())["pids"]
    assert left and all(alive(pid) for pid in left)  # their own session: SIGKILL spared them
    killed_at = len(records(run_dir))
    assert not (run_dir / "verdict.json").exists()
    assert gate_cli.check(str(run_dir))[0] is gate_cli.ExitCode.INCONCLUSIVE  # undecided

    resumed = subprocess.run(CLI + ["run", "--resume", str(run_dir), "--workers", "1"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Its progress tells what this controller did, not the history it took over.
    assert "deployment.staging:" in resumed.stderr and "infrastructure" not in resumed.stderr
    assert not any(alive(pid) for pid in left)
    steps = canary_steps(run_dir)
    assert steps == [(0, 25, "PASS"), (1, 50, "PASS"), (2, 100, "PASS")]
    after = records(run_dir)[killed_at:]
    # Nothing before the ramp ran again: no infrastructure, performance or monitoring work.
    assert not [r for r in after if r["kind"] == "transition" and
                not r["node"].startswith("deployment")]
    assert not [r for r in after if r["kind"] == "step" and r.get("weight") == 25]
    assert os.path.isdir(run_dir / "load") and os.path.isdir(run_dir / "load-2")
    assert load(str(run_dir)).status.value == "PASS"
    assert gate_cli.check(str(run_dir))[0] is gate_cli.ExitCode.PASS
    assert (run_dir / "report.html").exists()
    assert not (run_dir / LOCAL_AGENTS_FILE).exists()
    # A decided run is not run again: resuming it only repeats the summary.
    again = subprocess.run(CLI + ["run", "--resume", str(run_dir)], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "Recommendation: DEPLOY" in again.stdout
    assert not os.path.exists(run_dir / "load-3")


@pytest.mark.slow
def test_live_progress_shows_the_stages_the_window_and_each_target(tmp_path, target):
    """Also the path with agents named by the caller: none is started or recorded."""
    path = tmp_path / "plan.yaml"
    path.write_text(plan_text(target, hold="1s", steps="[50, 100]"))
    screen = Console(file=io.StringIO(), force_terminal=True, width=120)
    out = io.StringIO()
    with start_agent(["--workers", "1"]) as agent:
        verdict = run_readiness(load_plan(str(path)), tmp_path / "run", out=out,
                                console=screen, agents=[agent.address])
    assert verdict.status.value == "PASS", out.getvalue()
    shown = screen.file.getvalue()
    for text in ("Infrastructure Validation", "[SV:ZAVERSHENO]", "canary step 1 (50%)",
                 "p99 ms", "baseline", "canary", "deployment.staging"):
        assert text in shown, text
    assert "Recommendation: DEPLOY" in out.getvalue()
    assert not (tmp_path / "run" / LOCAL_AGENTS_FILE).exists()
    assert not (tmp_path / "run" / "load" / "agents").exists()


@pytest.mark.slow
def test_a_run_waiting_for_approval_goes_on_when_approved_from_another_process(tmp_path,
                                                                               target):
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(target, hold="1s", steps="[100]")
                    + "approval: {required: true, approvers: [alice]}\n")
    run_dir = tmp_path / "run"
    controller = subprocess.Popen(CLI + ["run", str(plan), "--run-dir", str(run_dir),
                                         "--workers", "1", "--no-progress"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [
                r for r in (records(run_dir) if (run_dir / "journal.jsonl").exists() else [])
                if r.get("phase") == "approval"]:
            time.sleep(0.1)
        assert gate_cli.check(str(run_dir))[0] is gate_cli.ExitCode.INCONCLUSIVE
        assert not [r for r in records(run_dir) if r.get("phase") == "canary"]
        approve = subprocess.run(CLI + ["approve", str(run_dir), "--who", "alice", "--reason",
                                        "latency budget reviewed"],
                                 capture_output=True, text=True, timeout=30)
        assert approve.returncode == 0, approve.stdout + approve.stderr
        stdout, stderr = controller.communicate(timeout=90)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    assert controller.returncode == 0, stdout + stderr
    assert f"waiting for approval: loadgate approve {run_dir}" in stderr
    verdict = load(str(run_dir))
    assert [d["who"] for d in verdict.decisions] == ["alice"]
    assert canary_steps(run_dir) == [(0, 100, "PASS")]
