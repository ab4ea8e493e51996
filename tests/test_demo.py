"""``loadgate demo`` as a process: real targets, a real local agent, the whole procedure.

The regressed canary is rolled back at 25 % -- the first step whose load crosses its
regression threshold, after the 5 % step passed on enough samples -- and the run ends FAIL
(exit 1); ``--healthy`` reaches 100 % and passes (exit 0).  ``loadgate gate check`` on the
produced directories gives the same codes.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest
import yaml

from loadgate.controller import demo
from loadgate.controller.gates import min_samples_for_percentile
from loadgate.controller.plan import parse_plan
from loadgate.controller.readiness_run import is_readiness_plan
from loadgate.controller.verdict import load

CLI = [sys.executable, "-m", "loadgate.controller.cli"]


def run_demo(run_dir, *flags):
    return subprocess.run(CLI + ["demo", "--run-dir", str(run_dir), "--hold", "2s", *flags],
                          capture_output=True, text=True, timeout=170)


def journal(run_dir):
    with open(os.path.join(run_dir, "journal.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def canary_steps(run_dir):
    return [(r["weight"], r["status"]) for r in journal(run_dir)
            if r["kind"] == "step" and r.get("phase") == "canary"]


def gate_check(run_dir):
    return subprocess.run(CLI + ["gate", "check", str(run_dir)], capture_output=True,
                          text=True, timeout=60).returncode


def test_the_demo_plan_is_valid_and_its_ramp_crosses_the_regression_at_25_percent():
    data = demo.demo_plan("http://127.0.0.1:1", 600.0, 3.0, False)
    plan = parse_plan(yaml.safe_dump(data))
    assert is_readiness_plan(plan) and plan.canary.steps == (5, 25, 50, 100)
    threshold = demo.THRESHOLD_SHARE * plan.load.rate
    assert plan.load.rate * 0.05 < threshold < plan.load.rate * 0.25
    # The 5 % step may hold long enough to get twice the samples a p99 claim needs.
    needed = min_samples_for_percentile(99.0, plan.gates.confidence / 100)
    assert plan.canary.max_hold_s * plan.load.rate * 0.05 >= 2 * needed


@pytest.mark.slow
def test_the_demo_rolls_back_the_regressed_canary_at_25_percent(tmp_path):
    run_dir = tmp_path / "demo"
    result = run_demo(run_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert canary_steps(run_dir) == [(5, "PASS"), (25, "FAIL")]
    records = journal(run_dir)
    states = [(r["node"], r["to"]) for r in records if r["kind"] == "transition"]
    assert ("deployment.staging", "AVARIYA") in states
    assert ("deployment.staging", "OTKAT") in states and ("deployment", "OTKAT") in states
    step_one = next(r for r in records if r.get("phase") == "canary" and r["index"] == 0)
    assert all(g["status"] == "PASS" for g in step_one["gates"])
    assert min(g["samples"] for g in step_one["gates"]) >= 299
    assert (run_dir / "rollback.log").read_text().split()[-1] == "0%"
    verdict = load(str(run_dir))
    assert verdict.status.value == "FAIL" and verdict.recommendation == "DO NOT DEPLOY"
    failed = [g for g in verdict.gates if g.status.value == "FAIL"]
    assert failed and {g.window for g in failed} == {"canary step 2 (25%)"}
    assert all(g.name.startswith("relative.") for g in failed)
    for name in ("report.md", "report.html", "junit.xml", "verdict.json"):
        assert str(run_dir / name) in result.stdout
    assert "Recommendation: DO NOT DEPLOY" in result.stdout and "Next Steps:" in result.stdout
    assert f"FAIL {failed[0].name} in canary step 2 (25%)" in result.stdout
    assert "[OTKAT]" in (run_dir / "report.md").read_text()
    assert gate_check(run_dir) == 1


@pytest.mark.slow
def test_the_healthy_demo_is_promoted_to_100_percent(tmp_path):
    run_dir = tmp_path / "healthy"
    result = run_demo(run_dir, "--healthy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert canary_steps(run_dir) == [(5, "PASS"), (25, "PASS"), (50, "PASS"), (100, "PASS")]
    states = {(r["node"], r["to"]) for r in journal(run_dir) if r["kind"] == "transition"}
    assert ("deployment.staging", "SV:RAZVERNUTO") in states
    assert not {s for s in states if s[1] in ("AVARIYA", "OTKAT")}
    assert not (run_dir / "rollback.log").exists()
    assert load(str(run_dir)).status.value == "PASS"
    assert "Recommendation: DEPLOY" in result.stdout
    assert gate_check(run_dir) == 0


def test_a_bad_regression_is_a_plan_error_before_anything_starts(tmp_path):
    result = subprocess.run(CLI + ["demo", "--run-dir", str(tmp_path / "demo"),
                                   "--regression", "slower"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3 and "'slower'" in result.stderr
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_sigterm_stops_the_demo_its_agent_and_its_target(tmp_path):
    run_dir = tmp_path / "demo"
    demo_process = subprocess.Popen(CLI + ["demo", "--run-dir", str(run_dir), "--no-progress"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                (run_dir / "local-agents.json").exists() and (run_dir / "journal.jsonl").exists()
                and any(r.get("phase") == "performance" for r in journal(run_dir))):
            time.sleep(0.1)
        agents = json.loads((run_dir / "local-agents.json").read_text())["pids"]
        demo_process.send_signal(signal.SIGTERM)
        assert demo_process.wait(60) == 130
    finally:
        if demo_process.poll() is None:
            demo_process.kill()
            demo_process.wait()
    for pid in agents:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    url = urllib.parse.urlsplit(yaml.safe_load((run_dir / "plan.yaml").read_text())
                                ["targets"][0]["url"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((url.hostname, url.port), 2).close()
    assert not (run_dir / "verdict.json").exists()  # undecided, and journaled for the record
