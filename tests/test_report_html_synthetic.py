"""report.html of readiness runs without a load directory: the orchestrator driven by the
synthetic MeasurementSource of test_readiness_support (real histograms of drawn latencies, a
fake clock), so long procedures -- a knee search, an approval wait -- take a fraction of a
second.  The report then holds the verdict, gates, stages and timeline, and says that the
load charts are missing."""
from html.parser import HTMLParser

from loadgate.controller.plan import load_plan
from loadgate.controller.readiness import Readiness
from loadgate.controller.report_html import render_report_html
from loadgate.controller.verdict import RunStatus, load
from test_readiness_support import FakeClock, Profile, SyntheticSource, canary_plan


class Spans(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.spans, self.charts, self.text = [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-span" in attrs:
            self.spans.append(attrs["data-span"])
        if "data-chart" in attrs:
            self.charts.append(attrs["data-chart"])

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self):
        return " ".join("".join(self.text).split())


def run(tmp_path, profiles, **plan_args):
    clock = FakeClock()
    plan = load_plan(canary_plan(tmp_path, **plan_args))
    readiness = Readiness(plan, tmp_path / "run", SyntheticSource(clock, profiles), clock)
    return readiness, readiness.run(lambda: clock.advance(5.0), 5000)


def test_knee_search_and_canary_steps_on_the_timeline(tmp_path):
    slows_down = Profile(slowdown=10.0, slow_above_rps=700.0)
    readiness, status = run(tmp_path, {"baseline": slows_down, "canary": Profile()},
                            rate=500, extra="knee: {start: 200, step: 200, max: 1000, "
                                            "window: 10s}\n")
    assert status is RunStatus.PASSED, readiness.reasons
    verdict = load(tmp_path / "run")
    page = Spans(render_report_html(tmp_path / "run"))
    assert page.charts == ["timeline"]
    assert f"Knee of the throughput curve: {verdict.knee['rate']:g} req/s" in page.all_text
    windows = [s.split(":")[0] for s in page.spans if "judged window" in s]
    assert [w for w in windows if w.startswith("knee")] == [
        "knee 200 req/s", "knee 400 req/s", "knee 600 req/s", "knee 800 req/s"]
    assert "knee 800 req/s: judged window: FAIL" in page.spans
    assert [w for w in windows if w.startswith("canary step")] == [
        f"canary step {i} ({w}%)" for i, w in enumerate((5, 25, 50, 100), 1)]
    assert "no load run in this directory" in page.all_text
    assert "Verdict: PASS" in page.all_text


def test_a_run_waiting_for_approval_reads_as_in_progress(tmp_path):
    readiness, status = run(tmp_path, {"baseline": Profile(), "canary": Profile()},
                            risk="HIGH")
    assert status is RunStatus.WAITING
    page = Spans(render_report_html(tmp_path / "run"))
    text = page.all_text
    assert "Verdict: NO VERDICT" in text and "no verdict.json" in text
    assert "in progress or interrupted: no verdict yet" in text
    assert "(from the journal so far)" in text
    assert any(s.startswith("[SV:PROVERENO]") for s in page.spans)
