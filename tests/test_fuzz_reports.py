"""Malformed IntervalReports reaching the controller's ingest over real gRPC.

A real agent sits behind the gRPC relay of test_controller_run_relay.py; hypothesis chooses
which reports the relay damages and how (another run or agent, a wrong seq, an interval
going back, an unknown or repeated target, an outcome that does not exist, bytes that are
not a report, a report sent twice).  Every damaged report must be refused with a reason, the
agent re-asked from its last good seq, and the run end exactly as an undamaged one would:
every (agent, seq) journaled once, the merged totals equal to the journaled reports, and
the target's own count of requests equal to what the run counted.

The budget is fixed (derandomized, a handful of whole runs); benchmarks/fuzz_long.py runs
the same strategies longer."""
import asyncio

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from test_controller_run import (assert_seqs_contiguous, completed_in, definition,
                                 journal_reports, real_agents, real_target, sum_reports)
from test_controller_run_relay import DamagingRelay
from loadgate.controller.merge import Metric
from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.runner import DistributedRun
from loadgate.proto.loadgate.v1 import common_pb2

RATE = 100
DURATION_S = 2.0
KNOWN_OUTCOMES = set(common_pb2.Outcome.values()) - {common_pb2.OUTCOME_UNSPECIFIED}


def _edit(report_bytes, change):
    report = common_pb2.IntervalReport.FromString(report_bytes)
    change(report)
    return report.SerializeToString()


def damage_strategy():
    """A strategy of (name, function(report bytes) -> list of bytes to send instead)."""
    text = st.text(min_size=0, max_size=12)

    def wrong_run(suffix):
        return lambda r: [_edit(r, lambda m: setattr(m, "run_id", m.run_id + "x" + suffix))]

    def wrong_agent(suffix):
        return lambda r: [_edit(r, lambda m: setattr(m, "agent_id", m.agent_id + "x" + suffix))]

    def wrong_seq(delta):
        def change(m):
            m.seq = max(0, min(2 ** 64 - 1, m.seq + delta))
        return lambda r: [_edit(r, change)]

    def unknown_target(name):
        def change(m):
            if m.targets:
                m.targets[0].name = "main" + "x" + name
            else:
                m.run_id += "-no-targets"
        return lambda r: [_edit(r, change)]

    def duplicate_target(_):
        def change(m):
            if m.targets:
                m.targets.append(m.targets[0])
            else:
                m.agent_id += "-no-targets"
        return lambda r: [_edit(r, change)]

    def bad_outcome(value):
        def change(m):
            if m.targets:
                m.targets[0].outcomes.add(outcome=value, count=1)
            else:
                m.seq += 1
        return lambda r: [_edit(r, change)]

    def interval_back(_):
        # Two back: the previous report may legitimately share this one's index.
        def change(m):
            if m.interval_index >= 2:
                m.interval_index -= 2
            else:
                m.seq = 0
        return lambda r: [_edit(r, change)]

    def not_a_report(data):
        # Bytes that fail to parse, or parse into a report of no run: refused either way.
        return lambda r: [data]

    def twice(_):
        return lambda r: [r, r]

    return st.one_of(
        text.map(lambda s: ("wrong_run", wrong_run(s))),
        text.map(lambda s: ("wrong_agent", wrong_agent(s))),
        st.integers(-5, 2 ** 40).filter(bool).map(lambda d: ("wrong_seq", wrong_seq(d))),
        text.map(lambda s: ("unknown_target", unknown_target(s))),
        st.none().map(lambda _: ("duplicate_target", duplicate_target(_))),
        st.integers(-2 ** 31, 2 ** 31 - 1).filter(lambda v: v not in KNOWN_OUTCOMES).map(
            lambda v: ("bad_outcome", bad_outcome(v))),
        st.none().map(lambda _: ("interval_back", interval_back(_))),
        st.binary(max_size=64).map(lambda b: ("not_a_report", not_a_report(b))),
        st.none().map(lambda _: ("twice", twice(_))),
    )


@st.composite
def damage_plans(draw):
    """Up to four damages at positions at least two reports apart, so that the controller
    never sees MAX_REJECTIONS refusals in a row (that would rightly mark the agent faulty)."""
    count = draw(st.integers(1, 4))
    gaps = draw(st.lists(st.integers(2, 3), min_size=count, max_size=count))
    positions = [sum(gaps[:i + 1]) - 1 for i in range(count)]
    damages = draw(st.lists(damage_strategy(), min_size=count, max_size=count))
    return dict(zip(positions, damages))


@pytest.fixture(scope="module")
def peers():
    with real_target() as (url, requests_seen), real_agents(2) as agents:
        yield url, requests_seen, agents


@pytest.mark.slow
@settings(derandomize=True, max_examples=4, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(plan=damage_plans())
def test_damaged_reports_are_refused_and_the_run_stays_exact(peers, tmp_path_factory, plan):
    url, requests_seen, agents = peers
    run_dir = str(tmp_path_factory.mktemp("fuzzrun"))
    before = requests_seen()

    async def main():
        relay = DamagingRelay(agents[0].address,
                              {n: damage for n, (_, damage) in plan.items()})
        relayed = await relay.start()
        run = DistributedRun(definition(url, rate=RATE, duration_s=DURATION_S,
                                        interval_s=0.25, policy=AgentLossPolicy.ABORT),
                             [relayed, agents[1].address], run_dir)
        try:
            await run.prepare()
            await run.start(lead_s=0.3)
            return run, await run.wait(60), set(relay.damages)
        finally:
            await run.close()
            await relay.close()
    run, summary, unused = asyncio.run(main())
    seen = requests_seen() - before
    applied = [name for n, (name, _) in plan.items() if n not in unused]
    assert applied, "no damage reached the controller"
    assert summary["status"] == "completed", (summary.get("stop_reason"), applied)
    refused = summary["rejected_reports"]
    assert len(refused) == len(applied), (applied, refused)
    assert all(r["reason"] and r["message"] for r in refused)
    reports = journal_reports(run_dir)
    assert len(assert_seqs_contiguous(reports)) == 2
    total = int(RATE * DURATION_S)
    assert summary["load"]["sent"] == total == completed_in(reports) == seen
    for metric in Metric:
        assert sum_reports(reports, "main", metric) == \
            run.ingest.totals.targets["main"].histograms[metric]
