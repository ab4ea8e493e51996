"""The controller's ingest cost per interval report: parse + check + journal + merge.

Each report carries 3 targets x 3 histograms (latency, service time, schedule lag) of
``--samples`` values per target, drawn like real latencies (lognormal around 2 ms), encoded
by the real histogram code, as an agent sends them.  The reports go through the controller's
real ingest path (controller/runner_ingest.py): protobuf parse, AgentStream.check, the
fsynced journal, then IntervalMerger decoding the 9 histograms straight into the merged
interval, and RunTotals.

Three regimes are timed: no journal (the CPU cost), one fsync per report (the worst case, one
agent at a time), and ``--batch`` reports per fsync (what the runner does: everything that
arrived while the previous fsync ran shares the next one).  The share of the histogram
decodes alone is printed too.  Times are CPU time of this process (what the controller pays;
the machine may be shared), best of ``--repeat`` runs, with wall time beside.  An agent's
first report has its histograms decoded whole to check their layout, once per run; it is
timed apart.  Goal: <= 200 us per report (1000 agents reporting every second then cost
<= 20 % of one core).

    python benchmarks/bench_ingest.py [--agents 100] [--intervals 11] [--samples 1000]
                                      [--batch 16] [--repeat 3]
"""
import argparse
import os
import tempfile
import time

import numpy as np

from loadgate.controller.merge import WIRE_OF_OUTCOME, IntervalMerger, Metric, RunTotals
from loadgate.controller.run_journal import RunJournal
from loadgate.controller.runner_ingest import ReportIngest
from loadgate.controller.runner_reports import AgentStream, HistogramLayout
from loadgate.native._hdr import Histogram
from loadgate.native.outcomes import Outcome
from loadgate.proto.loadgate.v1 import common_pb2

TARGETS = ("baseline", "canary", "main")
GOAL_US = 200.0


def encoded_histograms(rng, samples, count):
    """``count`` distinct encodings of ``samples`` latency-like values (µs)."""
    out = []
    for _ in range(count):
        h = Histogram()
        h.record_array(rng.lognormal(np.log(2000.0), 0.6, samples).astype(np.int64) + 1)
        out.append(h.encode_binary())
    return out


def make_reports(agents, intervals, samples, seed=1):
    rng = np.random.default_rng(seed)
    pool = encoded_histograms(rng, samples, 64)
    reports = {}
    for agent in range(agents):
        for index in range(intervals):
            report = common_pb2.IntervalReport(
                run_id="bench", agent_id=f"agent-{agent}", seq=index + 1, interval_index=index,
                start_unix_ns=index * 10**9, end_unix_ns=(index + 1) * 10**9,
                intended=3 * samples, sent=3 * samples, final=index == intervals - 1)
            for t, name in enumerate(TARGETS):
                target = report.targets.add(name=name, sent=samples, bytes_read=samples * 100)
                for m, metric in enumerate(Metric):
                    setattr(target, metric.value, pool[(agent * 31 + index * 7 + t * 3 + m) % 64])
                target.outcomes.add(outcome=WIRE_OF_OUTCOME[Outcome.OK_2XX], count=samples)
            report.health.cpu_seconds = 0.05
            reports[agent, index] = report.SerializeToString()
    return reports


def setup(directory, agents):
    layout = HistogramLayout()
    ids = [f"agent-{a}" for a in range(agents)]
    journal = RunJournal(os.path.join(directory, "journal.jsonl"))
    totals = RunTotals(TARGETS, layout)
    ingest = ReportIngest(journal, IntervalMerger(TARGETS, ids, layout, totals=totals), totals)
    streams = [AgentStream("bench", i, TARGETS, layout) for i in ids]
    return ingest, streams


def run(reports, agents, intervals, batch, journaled, directory):
    """(CPU seconds, wall seconds) spent ingesting the reports of intervals 1.., journaling
    ``batch`` reports per fsync.  Interval 0 goes first, untimed: an agent's first report
    is checked more closely (its histogram layout), once per run.  CPU time is the cost;
    wall time adds the fsync waits (and any time the machine gave to other processes)."""
    ingest, streams = setup(directory, agents)
    released = 0
    order = [(agent, index) for index in range(intervals) for agent in range(agents)]
    began = began_cpu = None
    for start in range(0, len(order), batch):
        if began is None and order[start][1] >= 1:
            began, began_cpu = time.perf_counter(), time.process_time()
        for agent, index in order[start:start + batch]:
            ingest.accept(streams[agent], reports[agent, index])
        taken = ingest.take()
        if journaled:
            ingest.journal_batch(taken)
        released += len(ingest.merge(taken))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    ingest.journal.close()
    if released != intervals or ingest.rejections:
        raise SystemExit(f"ingest went wrong: {released} intervals, {ingest.rejections[:1]}")
    return cpu, elapsed


def first_reports(reports, agents, directory):
    """CPU seconds per agent's first report (the layout check decodes it whole)."""
    ingest, streams = setup(directory, agents)
    began = time.process_time()
    for agent in range(agents):
        ingest.ingest_now(streams[agent], reports[agent, 0])
    return (time.process_time() - began) / agents


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--intervals", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=3, help="runs per regime; best is kept")
    parser.add_argument("--samples", type=int, default=1000, help="values per histogram")
    parser.add_argument("--batch", type=int, default=16,
                        help="reports sharing one fsync in the batched regime")
    parser.add_argument("--dir", help="where the journal goes (default a temporary directory)")
    args = parser.parse_args()
    reports = make_reports(args.agents, args.intervals, args.samples)
    size = np.mean([len(r) for r in reports.values()])
    count = args.agents * (args.intervals - 1)
    print(f"{count} reports timed ({args.agents} agents x {args.intervals - 1} intervals "
          f"after the first), "
          f"{len(TARGETS)} targets x {len(Metric)} histograms, {size:.0f} bytes each")
    regimes = [("decode + check + merge, no journal", 1, False),
               ("decode + check + merge + journal, one fsync per report", 1, True),
               (f"decode + check + merge + journal, one fsync per {args.batch} reports",
                args.batch, True)]
    print(f"{'regime (best of ' + str(args.repeat) + ')':<58} {'CPU':>10} {'wall':>10}")
    results = []
    for label, batch, journaled in regimes:
        best = None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(dir=args.dir) as directory:
                cpu, wall = run(reports, args.agents, args.intervals, batch, journaled, directory)
            best = (cpu, wall) if best is None else (min(best[0], cpu), min(best[1], wall))
        cpu, wall = best[0] / count, best[1] / count
        results.append(cpu)
        print(f"{label:<58} {cpu * 1e6:7.1f} us {wall * 1e6:7.1f} us")
    decode = min(decode_cost(reports) for _ in range(args.repeat)) / (args.agents * args.intervals)
    print(f"{'  of which Histogram.decode_binary x 9 alone':<58} {decode * 1e6:7.1f} us")
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        first = first_reports(reports, args.agents, directory)
    print(f"{'an agent first report (layout check, once per run)':<58} {first * 1e6:7.1f} us")
    batched = results[-1]
    print(f"batched ingest CPU / goal ({GOAL_US:.0f} us): {batched * 1e6 / GOAL_US:.2f}  "
          f"-> 1000 agents at 1 report/s use {batched * 1000 * 100:.1f} % of a core")


def decode_cost(reports):
    """Seconds spent in the histogram decodes alone, for every report."""
    parsed = [common_pb2.IntervalReport.FromString(r) for r in reports.values()]
    began = time.process_time()
    for report in parsed:
        for target in report.targets:
            for metric in Metric:
                Histogram.decode_binary(getattr(target, metric.value))
    return time.process_time() - began


if __name__ == "__main__":
    main()
