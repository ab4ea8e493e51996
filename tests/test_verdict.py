"""verdict.json, report.md, junit.xml and `loadgate gate check` exit codes."""
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from loadgate.controller.plan import load_plan
from loadgate.controller.readiness import Readiness
from loadgate.controller.verdict import SCHEMA_VERSION, ErrorKind, RunStatus, load, write_error
from test_readiness_support import FakeClock, Profile, SyntheticSource, canary_plan


def finished_run(directory, canary_profile, rate=1000):
    clock = FakeClock()
    plan = load_plan(canary_plan(directory, rate=rate))
    source = SyntheticSource(clock, {"baseline": Profile(), "canary": canary_profile})
    readiness = Readiness(plan, directory / "run", source, clock)
    readiness.run(lambda: clock.advance(5.0), 5000)
    return directory / "run"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {"pass": finished_run(tmp_path_factory.mktemp("pass"), Profile()),
            "fail": finished_run(tmp_path_factory.mktemp("fail"),
                                 Profile(slowdown=1.3, slow_above_rps=4)),
            "inconclusive": finished_run(tmp_path_factory.mktemp("few"), Profile(), rate=2)}


def gate_check(run_dir, *extra):
    done = subprocess.run([sys.executable, "-m", "loadgate.controller.cli", "gate", "check",
                           str(run_dir), *extra], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_verdict_json_is_versioned_and_carries_every_gate(runs):
    with open(runs["fail"] / "verdict.json") as handle:
        data = json.load(handle)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["status"] == "FAIL" and data["recommendation"] == "DO NOT DEPLOY"
    assert data["marker"] == "[OTKAT]" and data["run_status"] == RunStatus.FAILED.value
    assert data["deployment"]["id"] == "DEPLOY-TEST-1"
    for gate in data["gates"]:
        assert set(gate) >= {"name", "measured", "threshold", "window", "samples", "status",
                             "reason", "unit"}
    windows = {g["window"] for g in data["gates"]}
    assert {"performance", "canary step 1 (5%)"} <= windows
    assert data["reasons"] and data["next_steps"]
    assert any(t["to"] == "OTKAT" for t in data["transitions"])
    assert load(runs["fail"]).to_dict() == data
    for run_dir in runs.values():
        assert "NaN" not in (run_dir / "verdict.json").read_text()


def test_report_md_reads_like_the_seed(runs):
    report = (runs["fail"] / "report.md").read_text()
    for expected in ("## Deployment Status Report - ", "### Infrastructure Validation "
                     "[SV:ZAVERSHENO]", "- Capacity Planning: [SV:ZAVERSHENO] at ",
                     "### Deployment Execution [OTKAT]", "# Deployment Classification Report",
                     "**Deployment ID**: DEPLOY-TEST-1", "- **Strategy**: CANARY "
                     "(jin-si-que bu-shu) - 5% → 25% → 50% → 100%",
                     "**Status**: [OTKAT] - DO NOT DEPLOY", "**Next Steps**:",
                     "1. Fix relative.", "| canary step 1 (5%) | FAIL |", "[AVARIYA] → [OTKAT]"):
        assert expected in report, expected
    passed = (runs["pass"] / "report.md").read_text()
    assert "**Status**: [SV:RAZVERNUTO] - DEPLOY" in passed
    assert "| canary step 4 (100%) | PASS |" in passed
    verdict = load(runs["pass"])
    p95 = next(g for g in verdict.gates if g.name == "baseline.latency.p95")
    assert f"{p95.measured:.2f} ms" in passed


@pytest.mark.parametrize("risk", ["LOW", "MEDIUM"])
def test_report_md_titles_the_overrides_by_the_plans_risk(tmp_path, risk):
    clock = FakeClock()
    plan = load_plan(canary_plan(tmp_path, risk=risk, extra="gates:\n  error_rate: 10%\n",
                                 hold="10s"))
    source = SyntheticSource(clock, {"baseline": Profile(), "canary": Profile()})
    readiness = Readiness(plan, tmp_path / "run", source, clock)
    readiness.run(lambda: clock.advance(5.0), 5000)
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"## Overrides of {risk}-risk defaults" in report
    assert "- gates.error_rate: 5% → 10%" in report
    assert "HIGH" not in report


def test_junit_has_one_case_per_gate(runs):
    for name, run_dir in runs.items():
        suite = ET.parse(run_dir / "junit.xml").getroot()
        verdict = load(run_dir)
        cases = suite.findall("testcase")
        assert len(cases) == len(verdict.gates) == int(suite.get("tests"))
        failures = [c for c in cases if c.find("failure") is not None]
        errors = [c for c in cases if c.find("error") is not None]
        assert len(failures) == int(suite.get("failures")) == sum(
            g.status.value == "FAIL" for g in verdict.gates)
        assert len(errors) == int(suite.get("errors"))
        if name == "pass":
            assert not failures and not errors


def test_gate_check_exit_codes_match_the_table(runs, tmp_path):
    assert gate_check(runs["pass"])[0] == 0
    code, out = gate_check(runs["fail"])
    assert code == 1 and "FAIL [OTKAT] DO NOT DEPLOY" in out
    assert gate_check(runs["inconclusive"])[0] == 2
    plan_error = tmp_path / "plan-error"
    plan_error.mkdir()
    write_error(str(plan_error), ErrorKind.PLAN, "plan.yaml:3:5: load.rate: must be > 0")
    code, out = gate_check(plan_error)
    assert code == 3 and "load.rate" in out
    infra = tmp_path / "infra"
    infra.mkdir()
    write_error(str(infra), ErrorKind.INFRASTRUCTURE, "agent 10.0.0.7:7070 unreachable")
    assert gate_check(infra)[0] == 4
    assert gate_check(tmp_path / "missing")[0] == 4
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "verdict.json").write_text("{not json")
    assert gate_check(corrupt)[0] == 4
    junit = tmp_path / "copied.xml"
    assert gate_check(runs["pass"], "--junit", str(junit))[0] == 0
    assert junit.read_bytes() == (runs["pass"] / "junit.xml").read_bytes()


def test_gate_check_reports_a_journaled_plan_that_no_longer_validates(runs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    lines = (runs["pass"] / "journal.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["plan"]["load"]["rate"] = -1
    (broken / "journal.jsonl").write_text(json.dumps(first) + "\n")
    code, out = gate_check(broken)
    assert code == 3 and "load.rate" in out
