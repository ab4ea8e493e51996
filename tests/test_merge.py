"""Exact merging of interval reports and the rejection of bad ones (controller/merge.py and
controller/runner_ingest.py), with real histograms and a real fsynced journal."""
import errno
import random

import pytest

from loadgate.controller.merge import WIRE_OF_OUTCOME, IntervalMerger, Metric, RunTotals
from loadgate.controller.runner_reports import (AgentStream, HistogramLayout, RejectReason,
                                                Rejection)
from loadgate.controller.run_journal import (RecordKind, RunDirWriteError, RunJournal,
                                             accepted_reports, read_journal, report_payload)
from loadgate.controller.runner_ingest import ReportIngest
from loadgate.native._hdr import Histogram
from loadgate.native.outcomes import Outcome
from loadgate.proto.loadgate.v1 import common_pb2

TARGETS = ("baseline", "canary")
LAYOUT = HistogramLayout()


def make_report(agent, seq, index, rng, run_id="run-1", final=False, samples=50):
    """A report with real histograms of random samples; returns (report, raw samples)."""
    report = common_pb2.IntervalReport(
        run_id=run_id, agent_id=agent, seq=seq, interval_index=index,
        start_unix_ns=index * 10**9, end_unix_ns=(index + 1) * 10**9, intended=samples * 2,
        sent=samples * 2, final=final, scheduled_total=999 if final else 0)
    raw = {}
    for name in TARGETS:
        target = report.targets.add(name=name, sent=samples, late=1, bytes_read=100)
        values = {metric: [rng.randint(1, 5_000_000) for _ in range(samples)]
                  for metric in Metric}
        for metric, vs in values.items():
            h = Histogram()
            for v in vs:
                h.record(v)
            setattr(target, metric.value, h.encode_binary())
        target.outcomes.add(outcome=WIRE_OF_OUTCOME[Outcome.OK_2XX], count=samples - 3)
        target.outcomes.add(outcome=WIRE_OF_OUTCOME[Outcome.SERVER_5XX], count=3)
        raw[name] = values
    report.health.cpu_seconds = 0.01
    report.health.max_lag_us = 100 + index
    return report, raw


def new_ingest(tmp_path, agents):
    journal = RunJournal(tmp_path / "journal.jsonl")
    totals = RunTotals(TARGETS, LAYOUT)
    merger = IntervalMerger(TARGETS, agents, LAYOUT, totals=totals)
    ingest = ReportIngest(journal, merger, totals)
    streams = {a: AgentStream("run-1", a, TARGETS, LAYOUT) for a in agents}
    return ingest, streams


def test_merged_histograms_equal_histogram_of_all_samples(tmp_path):
    rng = random.Random(7)
    agents = ("a", "b", "c")
    ingest, streams = new_ingest(tmp_path, agents)
    everything = {(n, m): Histogram() for n in TARGETS for m in Metric}
    released = []
    for index in range(3):
        for agent in agents:
            report, raw = make_report(agent, index + 1, index, rng, final=index == 2)
            for name, values in raw.items():
                for metric, vs in values.items():
                    for v in vs:
                        everything[name, metric].record(v)
            result, ready = ingest.ingest_now(streams[agent], report.SerializeToString())
            assert not isinstance(result, Rejection)
            released.extend(ready)
    assert [m.index for m in released] == [0, 1, 2]
    assert all(set(m.agents) == set(agents) and not m.missing for m in released)
    for name in TARGETS:
        for metric in Metric:
            total = Histogram()
            for m in released:
                total.add(m.targets[name].histograms[metric])
            assert total == everything[name, metric]
            assert ingest.totals.targets[name].histograms[metric] == everything[name, metric]
            # Percentiles of the merge are those of all samples, not an average of agents'.
            assert (total.value_at_percentile(99.0)
                    == everything[name, metric].value_at_percentile(99.0))
    assert ingest.totals.targets["canary"].outcomes == {Outcome.OK_2XX: 9 * 47,
                                                        Outcome.SERVER_5XX: 9 * 3}
    assert released[1].intended == 3 * 100 and released[1].max_lag_us == 101
    kinds = [kind for kind, _ in read_journal(tmp_path / "journal.jsonl")]
    assert kinds == [RecordKind.REPORT] * 9


def test_interval_waits_for_every_agent_and_goes_out_in_order(tmp_path):
    rng = random.Random(1)
    ingest, streams = new_ingest(tmp_path, ("a", "b"))
    _, ready = ingest.ingest_now(streams["a"], make_report("a", 1, 0, rng)[0].SerializeToString())
    assert ready == []
    _, ready = ingest.ingest_now(streams["a"], make_report("a", 2, 1, rng)[0].SerializeToString())
    assert ready == []
    _, ready = ingest.ingest_now(streams["b"], make_report("b", 1, 0, rng)[0].SerializeToString())
    assert [m.index for m in ready] == [0]
    # An agent that is lost is no longer waited for; what it sent stays merged.
    ready = ingest.merger.agent_gone("b")
    assert [(m.index, m.agents, m.missing) for m in ready] == [(1, ("a",), ())]


def test_released_interval_lists_missing_agent_and_late_data_is_a_correction(tmp_path):
    rng = random.Random(2)
    ingest, streams = new_ingest(tmp_path, ("a", "b"))
    ingest.ingest_now(streams["a"], make_report("a", 1, 0, rng)[0].SerializeToString())
    ready = ingest.merger.release(0)
    assert [(m.index, m.missing) for m in ready] == [(0, ("b",))]
    report, _ = make_report("b", 1, 0, rng)
    _, ready = ingest.ingest_now(streams["b"], report.SerializeToString())
    assert len(ready) == 1 and ready[0].correction and ready[0].agents == ("b",)
    assert ingest.totals.per_agent["b"].reports == 1


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: setattr(r, "run_id", "other-run"), RejectReason.WRONG_RUN),
    (lambda r: setattr(r, "agent_id", "c"), RejectReason.WRONG_AGENT),
    (lambda r: setattr(r, "seq", 1), RejectReason.SEQ_REPEAT),
    (lambda r: setattr(r, "seq", 5), RejectReason.SEQ_GAP),
    (lambda r: setattr(r, "interval_index", 0), RejectReason.INTERVAL_ORDER),
    (lambda r: setattr(r.targets[0], "name", "nope"), RejectReason.UNKNOWN_TARGET),
    (lambda r: setattr(r.targets[1], "name", "baseline"), RejectReason.DUPLICATE_TARGET),
    (lambda r: r.targets[0].outcomes.add(outcome=42, count=1), RejectReason.BAD_OUTCOME),
])
def test_bad_report_is_rejected_and_changes_nothing(tmp_path, mutate, reason):
    rng = random.Random(3)
    ingest, streams = new_ingest(tmp_path, ("a",))
    for seq in (1, 2):
        ingest.ingest_now(streams["a"], make_report("a", seq, seq - 1, rng)[0].SerializeToString())
    before = {name: {m: t.histograms[m].copy() for m in Metric}
              for name, t in ingest.totals.targets.items()}
    report, _ = make_report("a", 3, 2, rng)
    mutate(report)
    result, ready = ingest.ingest_now(streams["a"], report.SerializeToString())
    assert isinstance(result, Rejection) and result.reason is reason and result.message
    assert ready == [] and streams["a"].last_seq == 2 and ingest.totals.intervals == 2
    for name, t in ingest.totals.targets.items():
        assert all(t.histograms[m] == before[name][m] for m in Metric)
    # The stream carries on with the good report once the agent resends it.
    good, _ = make_report("a", 3, 2, rng, final=True)
    result, ready = ingest.ingest_now(streams["a"], good.SerializeToString())
    assert not isinstance(result, Rejection) and [m.index for m in ready] == [2]
    records = list(read_journal(tmp_path / "journal.jsonl"))
    assert [k for k, _ in records] == [RecordKind.REPORT, RecordKind.REPORT, RecordKind.REJECTED,
                                       RecordKind.REPORT]
    assert records[2][1]["reason"] == reason.value
    assert report_payload(records[3][1]) == good.SerializeToString()


@pytest.mark.parametrize("damage", [
    lambda r: setattr(r.targets[0], "latency", b"\x1c\x84\x93\x14garbage"),
    lambda r: setattr(r.targets[1], "service_time", r.targets[1].service_time[:-5]),
    lambda r: setattr(r.targets[1], "schedule_lag", b""),
])
def test_a_report_whose_histograms_do_not_decode_is_discarded_whole(tmp_path, damage):
    rng = random.Random(6)
    ingest, streams = new_ingest(tmp_path, ("a",))
    for seq in (1, 2):
        ingest.ingest_now(streams["a"], make_report("a", seq, seq - 1, rng)[0].SerializeToString())
    before = {name: {m: t.histograms[m].copy() for m in Metric}
              for name, t in ingest.totals.targets.items()}
    completed = ingest.totals.completed
    bad, _ = make_report("a", 3, 2, rng)
    damage(bad)
    result, ready = ingest.ingest_now(streams["a"], bad.SerializeToString())
    assert isinstance(result, Rejection) and result.reason is RejectReason.BAD_HISTOGRAM
    assert "histogram" in result.message and result.seq == 3
    # Interval 2 is handed out empty, marked as refused from "a"; nothing of it was added,
    # including the histograms of targets that did decode.
    assert [(m.index, m.discarded, m.completed) for m in ready] == [(2, ("a",), 0)]
    assert all(h.total_count == 0 for t in ready[0].targets.values()
               for h in t.histograms.values())
    assert ingest.totals.completed == completed and ingest.totals.intervals == 2
    for name, t in ingest.totals.targets.items():
        assert all(t.histograms[m] == before[name][m] for m in Metric)
    # The agent holds the same bytes, so its seq is consumed and it carries on after it.
    assert streams["a"].last_seq == 3
    good, _ = make_report("a", 4, 3, rng, final=True)
    result, ready = ingest.ingest_now(streams["a"], good.SerializeToString())
    assert not isinstance(result, Rejection) and [m.index for m in ready] == [3]
    kinds = [k for k, _ in read_journal(tmp_path / "journal.jsonl")]
    assert kinds == [RecordKind.REPORT] * 3 + [RecordKind.DISCARDED, RecordKind.REPORT]
    assert [r["seq"] for r in accepted_reports(tmp_path / "journal.jsonl")] == [1, 2, 4]


def test_a_stream_whose_histograms_have_another_layout_is_rejected(tmp_path):
    rng = random.Random(5)
    ingest, streams = new_ingest(tmp_path, ("a",))
    report, _ = make_report("a", 1, 0, rng)
    report.targets[1].schedule_lag = Histogram(1, 1000, 2).encode_binary()
    result, _ = ingest.ingest_now(streams["a"], report.SerializeToString())
    assert result.reason is RejectReason.HISTOGRAM_LAYOUT and "1..1000 at 2 digits" in result.message
    assert ingest.totals.intervals == 0 and streams["a"].last_seq == 0


def test_garbage_bytes_are_rejected_as_malformed(tmp_path):
    ingest, streams = new_ingest(tmp_path, ("a",))
    result, _ = ingest.ingest_now(streams["a"], b"\xff\xff\xff\xff not protobuf")
    assert isinstance(result, Rejection) and result.reason is RejectReason.MALFORMED


def test_report_after_final_is_rejected(tmp_path):
    rng = random.Random(4)
    ingest, streams = new_ingest(tmp_path, ("a",))
    ingest.ingest_now(streams["a"], make_report("a", 1, 0, rng, final=True)[0].SerializeToString())
    result, _ = ingest.ingest_now(streams["a"], make_report("a", 2, 1, rng)[0].SerializeToString())
    assert result.reason is RejectReason.AFTER_FINAL


def test_journal_ignores_a_torn_last_line(tmp_path):
    journal = RunJournal(tmp_path / "j.jsonl")
    journal.append(RecordKind.RUN, run_id="x")
    journal.close()
    with open(tmp_path / "j.jsonl", "ab") as f:
        f.write(b'{"kind":"report","ag')
    assert [k for k, _ in read_journal(tmp_path / "j.jsonl")] == [RecordKind.RUN]


def test_a_journal_write_the_disk_refuses_leaves_the_journal_whole(tmp_path):
    """A real ENOSPC (a 64 KiB tmpfs): the record that does not fit is cut back off, the
    error names the file and errno, and the journal refuses every later record."""
    from test_faults_disk import mounted
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as point:
        path = point / "journal.jsonl"
        journal = RunJournal(path)
        journal.append(RecordKind.RUN, run_id="x")
        whole = path.read_bytes()
        with pytest.raises(RunDirWriteError) as info:
            journal.append(RecordKind.STOPPING, reason="y" * (256 << 10))
        assert info.value.errno == errno.ENOSPC and info.value.path == str(path)
        assert f"cannot write {path}: [Errno 28]" in str(info.value)
        assert path.read_bytes() == whole
        with pytest.raises(RunDirWriteError):
            journal.append(RecordKind.FINISHED, status="failed")
        journal.close()
        assert path.read_bytes() == whole
        assert [k for k, _ in read_journal(path)] == [RecordKind.RUN]


def test_merge_serves_no_report_checking_names():
    # Report checking lives in runner_reports only; a second way in hides stale imports.
    from loadgate.controller import merge
    for name in ("AgentStream", "HistogramLayout", "Rejection", "RejectReason"):
        assert not hasattr(merge, name), name
