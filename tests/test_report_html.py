"""report.html from real run directories: a readiness run (real targets, a real agent
sampling the fake NVML of tests/fake_nvml.py, real gRPC) and a plain load run with failing
requests, then the same directories cut down to what a run in progress or an aborted one
leaves.  The page is parsed (html.parser) and every figure compared with summary.json and
verdict.json; the last test renders it in headless Chromium (skipped without chromium)."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from html.parser import HTMLParser

import pytest

from agent_helpers import start_agent
from loadgate.controller.merge import OUTCOME_OF_WIRE
from loadgate.controller.plan import load_plan
from loadgate.controller.readiness import Readiness
from loadgate.controller.report_html import render_report_html, write_report_html
from loadgate.controller.run_journal import (
    RecordKind, RunJournal, read_journal, report_fields, report_payload)
from loadgate.controller.runner import DistributedRun
from loadgate.controller.runner_reports import RejectReason, Rejection
from loadgate.controller.runner_source import AgentMeasurementSource
from loadgate.controller.runner_spec import TargetDefinition
from loadgate.controller.verdict import RunStatus
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import common_pb2
from test_controller_run import FAKE_GPU, definition, real_agents, real_target, run_to_end

TIME_CHARTS = ("latency", "throughput", "errors")
GPU_CHARTS = ("gpu-utilization_percent", "gpu-memory_used_bytes", "gpu-power_milliwatts")


class Page(HTMLParser):
    """The parts of report.html the tests read: charts, their series and bands, tables."""

    def __init__(self, text):
        super().__init__()
        self.tags = []  # (tag, attrs)
        self.charts = {}  # data-chart -> {"series": {name: points}, "bands": [...], ...}
        self.tables = []  # [[cell text, ...], ...] per table
        self.text = []
        self._chart = None
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "svg" and "data-chart" in attrs:
            self._chart = self.charts.setdefault(attrs["data-chart"], {
                "series": {}, "paths": {}, "bands": [], "spans": []})
        elif tag == "path" and "data-series" in attrs and self._chart is not None:
            self._chart["series"][attrs["data-series"]] = int(attrs["data-points"])
            self._chart["paths"][attrs["data-series"]] = attrs["d"]
        elif tag == "g" and "data-band" in attrs:
            self._chart["bands"].append(attrs["data-band"])
        elif tag == "g" and "data-span" in attrs:
            self._chart["spans"].append(attrs["data-span"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "span" and "data-us" in attrs and self._cell is not None:
            self._cell.append(f"us={attrs['data-us']};")

    def handle_endtag(self, tag):
        if tag == "svg":
            self._chart = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table(self, first_header):
        return next(t for t in self.tables if t and t[0] and t[0][0] == first_header)

    @property
    def all_text(self):
        return " ".join("".join(self.text).split())


def path_points(d):
    return [tuple(map(float, p)) for p in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", d)]


def write_plan(path, baseline_url, canary_url):
    path.write_text(textwrap.dedent(f"""\
        apiVersion: loadgate/v1
        deployment: {{id: DEPLOY-HTML-1, type: FEATURE, risk: LOW, environment: DEV,
                      strategy: CANARY}}
        targets:
          - {{name: baseline, url: "{baseline_url}", role: baseline}}
          - {{name: canary, url: "{canary_url}", role: canary, weight: 0}}
        load: {{rate: 240, duration: 2s, connections: 8, interval: 500ms, timeout: 2s}}
        gates:
          latency: {{p95: 250ms}}
          error_rate: 25%
        canary: {{steps: [50, 100], hold: 1s, max_hold: 15s}}
        monitoring: {{post_deploy_window: 1s}}
        """))
    return load_plan(str(path))


def run_readiness(base, canary_args, expected):
    """A readiness run in the controller service's layout (its load in run/load)."""
    baseline = start_target_process(["--latency", "lognormal:3ms:0.3", "--seed", "1"])
    canary = start_target_process(["--latency", "lognormal:3ms:0.3", "--seed", "2"]
                                  + canary_args)
    agent = start_agent(["--workers", "1"], fake_nvml=FAKE_GPU)
    try:
        plan = write_plan(base / "plan.yaml", f"http://{baseline[1]}:{baseline[2]}",
                          f"http://{canary[1]}:{canary[2]}")
        run_dir = base / "run"
        source = AgentMeasurementSource(plan, [agent.address], str(run_dir / "load"))
        readiness = Readiness(plan, run_dir, source)
        status = readiness.run(lambda: time.sleep(0.25), 2000)
        assert status is expected, readiness.reasons
    finally:
        agent.stop()
        stop_target_process(canary[0])
        stop_target_process(baseline[0])
    return run_dir


@pytest.fixture(scope="module")
def readiness_dir(tmp_path_factory):
    """A canary answering 4 % of requests with 503, within the 25 % gate: promoted."""
    return run_readiness(tmp_path_factory.mktemp("html"),
                         ["--error-rate", "0.04", "--error-status", "503"], RunStatus.PASSED)


@pytest.fixture(scope="module")
def rolled_back_dir(tmp_path_factory):
    """A canary failing 60 % of requests: its first step fails and it is rolled back."""
    return run_readiness(tmp_path_factory.mktemp("rollback"), ["--error-rate", "0.6"],
                         RunStatus.FAILED)


@pytest.fixture(scope="module")
def load_dir(tmp_path_factory):
    """A plain `loadgate run`-style run: one agent without GPUs, a target failing 5 % of
    requests with 500 and resetting 3 %."""
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    with real_target(("--latency", "2ms", "--error-rate", "0.05", "--reset-rate", "0.03",
                      "--seed", "3")) as (url, _), real_agents(1) as agents:
        run = DistributedRun(definition(url, rate=200, duration_s=2.0,
                                        targets=(TargetDefinition("api", url + "/"),)),
                             [a.address for a in agents], str(run_dir))
        run_to_end(run)
    return run_dir


def json_file(path):
    with open(path) as handle:
        return json.load(handle)


@pytest.mark.slow
def test_readiness_report_draws_every_chart_from_the_run(readiness_dir):
    path = write_report_html(readiness_dir)
    assert path == os.path.join(str(readiness_dir), "report.html")
    with open(path, encoding="utf-8") as handle:
        page = Page(handle.read())
    summary = json_file(readiness_dir / "load" / "summary.json")
    verdict = json_file(readiness_dir / "verdict.json")

    for key in ("timeline", "spectrum", "host-cpu") + TIME_CHARTS + GPU_CHARTS:
        assert key in page.charts, key
    for key in ("spectrum", "host-cpu") + TIME_CHARTS + GPU_CHARTS:
        series = page.charts[key]["series"]
        assert series and max(series.values()) > 1, (key, series)
        for name, d in page.charts[key]["paths"].items():
            assert len(path_points(d)) == series[name]

    spectrum = page.charts["spectrum"]["series"]
    for name in ("baseline", "canary"):
        count = summary["targets"][name]["latency_us"]["count"]
        assert f"{name} ({count:,} requests)" in spectrum
        figures = summary["targets"][name]["latency_us"]
        row = next(r for r in page.table("target") if r[0] == name)
        assert [int(cell.split(";")[0][3:]) for cell in row[2:]] == \
            [figures[k] for k in ("p50", "p90", "p95", "p99", "p99_9", "max")]
    # Percentiles rise along the spectrum: SVG y grows downwards.
    ys = [y for _, y in path_points(page.charts["spectrum"]["paths"][
        next(s for s in spectrum if s.startswith("baseline"))])]
    assert ys == sorted(ys, reverse=True)

    gates = page.table("status")
    assert len(gates) - 1 == len(verdict["gates"])
    assert [(r[0], r[1], r[4], r[5]) for r in gates[1:]] == \
        [(g["status"], g["name"], g["window"], f"{g['samples']:,}") for g in verdict["gates"]]
    assert "Verdict: PASS" in page.all_text

    stage_rows = page.table("stage")[1:]
    assert [r[1].split()[0] for r in stage_rows] == \
        [f"[{s['state']}]" for s in verdict["stages"]]

    for key in TIME_CHARTS:
        bands = page.charts[key]["bands"]
        assert {"performance", "canary step 1 (50%)", "canary step 2 (100%)",
                "post-deploy"} <= set(bands), bands
    spans = page.charts["timeline"]["spans"]
    assert any(s.startswith("[SV:RAZVERNUTO]") for s in spans)
    assert sum(s.startswith("canary step") for s in spans) == 2

    by_target = {r[0]: r for r in page.tables[-1][1:]}
    header = page.tables[-1][0]
    for name in ("baseline", "canary"):
        for label, count in summary["targets"][name]["requests"].items():
            assert int(by_target[name][header.index(label)].replace(",", "")) == count
    assert summary["targets"]["canary"]["requests"]["5xx"] > 0
    assert page.charts["errors"]["series"]["canary 5xx/s"] > 1

    telemetry = [json.loads(line) for line in open(readiness_dir / "load" / "telemetry.jsonl")]
    with_gpu = sum(1 for t in telemetry if t.get("gpus"))
    assert with_gpu > 1
    power = page.charts["gpu-power_milliwatts"]["series"]
    assert list(power.values()) == [with_gpu]
    assert any("NVIDIA H100" in name for name in power)
    memory = page.charts["gpu-memory_used_bytes"]["series"]
    assert sorted(memory.values()) == [with_gpu, with_gpu]
    assert any(name.endswith("GPU 0 total") for name in memory)
    assert "no GPU telemetry" not in page.all_text


@pytest.mark.slow
def test_report_is_self_contained(readiness_dir):
    page = Page(render_report_html(readiness_dir))
    assert not [t for t, _ in page.tags if t in ("script", "link", "img", "iframe", "object")]
    assert not [(t, a) for t, a in page.tags if "src" in a]
    links = [a["href"] for t, a in page.tags if "href" in a]
    ids = {a["id"] for t, a in page.tags if "id" in a}
    assert links and all(link[0] == "#" and link[1:] in ids for link in links)
    assert all(a.get("role") == "img" and a.get("aria-labelledby")
               for t, a in page.tags if t == "svg" and "data-chart" in a)
    assert all(key in page.all_text for key in ("latency (ms)", "requests per second",
                                                "errors per second", "power (W)"))


@pytest.mark.slow
def test_plain_load_run_without_readiness_or_gpu(load_dir):
    page = Page(render_report_html(load_dir))
    summary = json_file(load_dir / "summary.json")
    assert "Load run report" in page.all_text and "Verdict: NO VERDICT" in page.all_text
    assert "no readiness journal or verdict.json" in page.all_text
    reason = json.loads(open(load_dir / "telemetry.jsonl").readline())["gpu_unavailable_reason"]
    assert f"no GPU telemetry: {reason}" in page.all_text
    assert not any(key in page.charts for key in GPU_CHARTS + ("timeline",))
    errors = page.charts["errors"]["series"]
    assert set(errors) == {f"api {label}/s" for label in ("5xx", "reset")
                           if summary["targets"]["api"]["requests"][label]}
    assert summary["requests"]["errors"] > 0
    row = next(r for r in page.tables[-1][1:] if r[0] == "api")
    assert row[-1] == f"{100.0 * summary['targets']['api']['error_rate']:.3f} %"
    assert page.charts["throughput"]["series"]["api completed/s"] > 1


@pytest.mark.slow
def test_loadgate_report_command(load_dir):
    (load_dir / "report.html").unlink(missing_ok=True)
    result = subprocess.run([sys.executable, "-m", "loadgate.controller.cli", "report",
                             str(load_dir)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(load_dir / "report.html")
    assert "Load run report" in (load_dir / "report.html").read_text()
    result = subprocess.run([sys.executable, "-m", "loadgate.controller.cli", "report",
                             str(load_dir / "absent")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 4 and "no such run directory" in result.stderr


@pytest.mark.slow
def test_partial_run_dirs_draw_what_exists(readiness_dir, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(readiness_dir, unfinished)
    (unfinished / "verdict.json").unlink()
    (unfinished / "load" / "summary.json").unlink()
    cut_journal(unfinished / "load" / "journal.jsonl")
    for hlog in (unfinished / "load" / "hlog").iterdir():
        text = hlog.read_text()
        hlog.write_text(text[:len(text) * 2 // 3])
    page = Page(render_report_html(unfinished))
    text = page.all_text
    assert "Verdict: NO VERDICT" in text and "no verdict.json" in text
    assert "no summary.json" in text and "from the merged hlogs" in text
    assert "in progress (no finished record)" in text
    assert "damaged" not in text  # torn last lines are what a running run leaves
    assert "(from the journal so far)" in text
    for key in ("timeline", "spectrum") + TIME_CHARTS:
        assert max(page.charts[key]["series"].values(), default=2) > 1, key

    empty = tmp_path / "empty"
    empty.mkdir()
    page = Page(render_report_html(empty))
    assert not page.charts
    for reason in ("no load run in this directory", "no latency percentile spectrum",
                   "no GPU telemetry", "no readiness journal or verdict.json"):
        assert reason in page.all_text


@pytest.mark.slow
def test_rolled_back_canary_shows_the_failure(rolled_back_dir):
    page = Page(render_report_html(rolled_back_dir))
    verdict = json_file(rolled_back_dir / "verdict.json")
    assert "Verdict: FAIL" in page.all_text and "DO NOT DEPLOY" in page.all_text
    failed = [r for r in page.table("status")[1:] if r[0] == "FAIL"]
    assert failed and {r[4] for r in failed} == {"canary step 1 (50%)"}
    assert len(failed) == sum(g["status"] == "FAIL" for g in verdict["gates"])
    spans = page.charts["timeline"]["spans"]
    for state in ("[AVARIYA]", "[OTKAT]"):
        assert any(s.startswith(state) for s in spans), state
    assert "canary step 1 (50%): judged window: FAIL" in spans
    assert "canary step 1 (50%)" in page.charts["errors"]["bands"]
    assert page.charts["errors"]["series"]["canary 5xx/s"] > 1
    assert "(rolled back)" in page.all_text


@pytest.mark.slow
def test_damaged_files_are_named_not_fatal(readiness_dir, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(readiness_dir, damaged)
    (damaged / "verdict.json").write_text("{not json")
    (damaged / "load" / "summary.json").write_text("[1, 2]")
    with open(damaged / "load" / "telemetry.jsonl", "a") as handle:
        handle.write("{torn\n")
    hlog = damaged / "load" / "hlog" / "canary.latency.hlog"
    lines = hlog.read_text().splitlines(keepends=True)
    middle = len(lines) // 2
    hlog.write_text("".join(lines[:middle]) + "0.0,0.5,1.0,HISTFAAAAgarbage\n"
                    + "".join(lines[middle:]))
    journal = damaged / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:3]) + "{damaged\n" + "".join(lines[3:]))
    page = Page(render_report_html(damaged))
    text = page.all_text
    assert "verdict.json is unreadable" in text
    assert "summary.json does not hold a JSON object" in text
    assert "latency hlog of canary is damaged after interval" in text
    assert "the readiness journal is damaged" in text
    assert "Deployment readiness report" in text and "no gate results" in text
    assert page.charts["spectrum"]["series"] and page.charts["gpu-power_milliwatts"]["series"]


@pytest.mark.slow
def test_a_resumed_run_draws_every_load_dir(readiness_dir, load_dir, tmp_path):
    """The controller service gives a resumed run a fresh load-2/ beside load/."""
    resumed = tmp_path / "resumed"
    shutil.copytree(readiness_dir, resumed)
    shutil.copytree(load_dir, resumed / "load-2")
    page = Page(render_report_html(resumed))
    first = json_file(readiness_dir / "load" / "summary.json")
    second = json_file(load_dir / "summary.json")
    spectrum = page.charts["spectrum"]["series"]
    latency = page.table("target")
    assert latency[0][0] == "target" and "the hlogs of 2 load runs merged" in page.all_text
    for summary in (first, second):
        assert summary["run_id"] in page.all_text
        for name, figures in summary["targets"].items():
            count = figures["latency_us"]["count"]
            assert f"{name} ({count:,} requests)" in spectrum
            row = next(r for r in latency if r[0] == name)
            assert [int(cell.split(";")[0][3:]) for cell in row[2:]] == \
                [figures["latency_us"][k] for k in ("p50", "p90", "p95", "p99", "p99_9",
                                                    "max")]
    outcomes = {r[0]: r for r in page.tables[-1][1:]}
    header = page.tables[-1][0]
    assert int(outcomes["api"][header.index("5xx")].replace(",", "")) == \
        second["targets"]["api"]["requests"]["5xx"]


@pytest.mark.slow
def test_discarded_and_undecodable_reports_are_not_counted(load_dir, tmp_path):
    """Counts follow the merge: a REPORT the controller later DISCARDED (its histograms did
    not decode) is out, and a payload that is no IntervalReport is named, not fatal."""
    copy = tmp_path / "run"
    shutil.copytree(load_dir, copy)
    before = Page(render_report_html(copy)).tables[-1]
    records = [r for kind, r in read_journal(copy / "journal.jsonl")
               if kind is RecordKind.REPORT]
    victim = max(records, key=lambda r: len(r["report"]))
    report = common_pb2.IntervalReport.FromString(report_payload(victim))
    journal = RunJournal(copy / "journal.jsonl")
    journal.append(RecordKind.DISCARDED, **Rejection(
        victim["agent_id"], victim["seq"], victim["index"], RejectReason.BAD_HISTOGRAM,
        "test: histograms taken back").to_dict())
    journal.append(RecordKind.REPORT, **report_fields(victim["agent_id"], 999, 0, b"\xff\x01"))
    journal.close()
    page = Page(render_report_html(copy))
    after = page.tables[-1]
    header = before[0]
    for outcome in report.targets[0].outcomes:
        label = OUTCOME_OF_WIRE[outcome.outcome].label
        column = header.index(label)
        assert int(before[1][column].replace(",", "")) - outcome.count == \
            int(after[1][column].replace(",", ""))
    assert f"report {victim['agent_id']}#999 in the run journal does not decode" in \
        page.all_text


def cut_journal(path):
    """Leaves the first half of a run journal and a torn line, as a killed controller does."""
    lines = path.read_bytes().split(b"\n")
    keep = lines[:len(lines) // 2]
    path.write_bytes(b"\n".join(keep) + b"\n" + lines[len(lines) // 2][:40])


# -- headless Chromium ------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(Debian: apt-get install chromium)")


def chromium(tmp_path, url, *args):
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-extensions",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, url]
    result = subprocess.run(command, capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.decode("utf-8", "replace")


def png_pixels(path):
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunks.setdefault(kind, []).append(data[position + 8:position + 8 + length])
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    assert depth == 8 and colour in (2, 6)
    step = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks[b"IDAT"]))
    stride = width * step
    rows, previous = [], bytearray(stride)
    for y in range(height):
        offset = y * (stride + 1)
        kind, line = raw[offset], bytearray(raw[offset + 1:offset + 1 + stride])
        for x in range(stride):
            left = line[x - step] if x >= step else 0
            up, corner = previous[x], previous[x - step] if x >= step else 0
            if kind == 1:
                line[x] = (line[x] + left) & 255
            elif kind == 2:
                line[x] = (line[x] + up) & 255
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 255
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else
                                      up if pb <= pc else corner)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, step, rows


@pytest.mark.slow
@needs_chromium
def test_report_renders_in_headless_chromium(readiness_dir, tmp_path):
    path = write_report_html(readiness_dir)
    url = "file://" + path
    with open(path, encoding="utf-8") as handle:
        source = Page(handle.read())
    rendered = Page(chromium(tmp_path, url, "--dump-dom"))
    assert set(rendered.charts) == set(source.charts)
    for key, chart in source.charts.items():
        assert rendered.charts[key]["series"] == chart["series"], key

    shot = tmp_path / "report.png"
    chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1400,3000",
             "--hide-scrollbars")
    width, height, step, rows = png_pixels(shot)
    assert (width, height) == (1400, 3000)
    colours = {}
    for row in rows:
        for x in range(0, len(row), step):
            pixel = row[x:x + 3]
            colours[pixel] = colours.get(pixel, 0) + 1
    # The PASS badge and the baseline (blue) and canary (red) lines were painted.
    for name, rgb in (("PASS badge", "1e7b34"), ("baseline", "1f77b4"), ("canary", "d62728")):
        assert colours.get(bytes.fromhex(rgb), 0) > 200, name
