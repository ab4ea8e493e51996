"""The cost of WatchRun watchers to the controller, against its ingest cost without them.

A paced stream of ``--rate`` agent reports per second goes through the controller's real
ingest path (runner_ingest.ReportIngest: parse, check, fsynced journal batches, merge).  Each
report carries 3 targets x 3 histograms of ``--samples`` values, encoded by the real
histogram code.  Two stream shapes by default (``--agents``): 1000 agents reporting every
1 s (loadgate's default interval) and 100 agents every 100 ms, ten times the merged
intervals and so ten times the watch events.  Every merged interval goes through what a
served run does with it (service_runs.publish_interval: IntervalStats with percentiles and
the encoded merged histogram, fanned out by the WatchHub) to a real Controller gRPC server
on loopback, and ``--watchers`` client processes follow it with
WatchRun; their CPU is theirs, not the controller's.

The figure is the controller process's CPU time (every thread: ingest, hub, gRPC) per
second of stream, with no watcher and with ``--watchers``, best of ``--repeat`` runs,
alternated so that drift on a shared machine hits both.  Goal: within 10 %.

    python benchmarks/bench_watch.py [--rate 1000] [--agents 1000,100] [--seconds 10] \
        [--watchers 10] [--samples 1000] [--repeat 3]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import grpc
import numpy as np

from loadgate.controller.merge import WIRE_OF_OUTCOME, Metric
from loadgate.controller.service import ControllerService
from loadgate.controller.service_server import start_server
from loadgate.controller.service_runs import publish_interval
from loadgate.controller.watch_hub import WatchHub
from loadgate.native._hdr import Histogram
from loadgate.native.outcomes import Outcome
from loadgate.proto.loadgate.v1 import common_pb2, controller_pb2, controller_pb2_grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ingest import TARGETS, setup  # noqa: E402

WEIGHTS = {"baseline": 0.45, "canary": 0.1, "main": 0.45}
GOAL = 1.10
BATCHES_PER_SECOND = 100


class StreamedRun:
    """What the server needs of a run to serve WatchRun: an id and a hub."""

    def __init__(self, run_id):
        self.run_id = run_id
        self.finished = True  # nothing for the server to stop when it goes away
        self.hub = WatchHub(lambda: controller_pb2.RunInfo(run_id=run_id))


def make_reports(agents, intervals, samples, interval_s, seed=7):
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(32):
        histogram = Histogram()
        histogram.record_array(rng.lognormal(np.log(3000.0), 0.5, samples).astype(np.int64) + 1)
        pool.append(histogram.encode_binary())
    step = int(interval_s * 1e9)
    reports = []
    for index in range(intervals):
        for agent in range(agents):
            report = common_pb2.IntervalReport(
                run_id="bench", agent_id=f"agent-{agent}", seq=index + 1, interval_index=index,
                start_unix_ns=index * step, end_unix_ns=(index + 1) * step,
                intended=3 * samples, sent=3 * samples, final=index == intervals - 1)
            for t, name in enumerate(TARGETS):
                target = report.targets.add(name=name, sent=samples)
                for m, metric in enumerate(Metric):
                    setattr(target, metric.value, pool[(agent * 7 + index * 5 + t * 3 + m) % 32])
                target.outcomes.add(outcome=WIRE_OF_OUTCOME[Outcome.OK_2XX], count=samples)
            report.health.cpu_seconds = 0.01
            reports.append((agent, report.SerializeToString()))
    return reports


def feed(reports, agents, rate, hub, directory):
    """Ingests ``reports`` paced at ``rate`` per second; returns (CPU s, wall s, intervals,
    the largest lag behind the pace in seconds)."""
    ingest, streams = setup(directory, agents)
    per_batch = max(1, rate // BATCHES_PER_SECOND)
    released = 0
    worst_lag = 0.0
    began, began_cpu = time.perf_counter(), time.process_time()
    for number, start in enumerate(range(0, len(reports), per_batch)):
        due = began + number / BATCHES_PER_SECOND
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        else:
            worst_lag = max(worst_lag, now - due)
        for agent, payload in reports[start:start + per_batch]:
            ingest.accept(streams[agent], payload)
        taken = ingest.take()
        ingest.journal_batch(taken)
        for merged in ingest.merge(taken):
            publish_interval(hub, merged, WEIGHTS, lambda: "canary 10%")
            released += 1
    cpu, wall = time.process_time() - began_cpu, time.perf_counter() - began
    ingest.journal.close()
    if ingest.rejections:
        raise SystemExit(f"ingest rejected reports: {ingest.rejections[:1]}")
    return cpu, wall, released, worst_lag


def start_watchers(address, run_id, count):
    command = [sys.executable, os.path.abspath(__file__), "--watch", address, run_id]
    return [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]


def wait_watching(hub, count, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while hub.watcher_count() < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {hub.watcher_count()} of {count} watchers joined")
        time.sleep(0.05)


def one_run(args, reports, agents, watchers, server_service, run_number):
    run = StreamedRun(f"bench-{run_number}-{watchers}")
    server_service.add(run)
    processes = start_watchers(args.address, run.run_id, watchers)
    wait_watching(run.hub, watchers)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        cpu, wall, released, lag = feed(reports, agents, args.rate, run.hub, directory)
    run.hub.finish(controller_pb2.RunInfo(run_id=run.run_id, finished=True))
    counts = []
    for process in processes:
        out, _ = process.communicate(timeout=60)
        counts.append(tuple(int(x) for x in out.split()))
    return cpu, wall, released, lag, counts


def watch_only(address, run_id):
    """A watcher process: reads WatchRun to the end, prints 'intervals skipped'."""
    channel = grpc.insecure_channel(address)
    stub = controller_pb2_grpc.ControllerStub(channel)
    intervals = skipped = 0
    for event in stub.WatchRun(controller_pb2.WatchRunRequest(run_id=run_id)):
        intervals += event.WhichOneof("event") == "interval"
        skipped = max(skipped, event.skipped)
    print(intervals, skipped)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000, help="reports per second")
    parser.add_argument("--agents", type=lambda text: [int(a) for a in text.split(",")],
                        default=[1000, 100],
                        help="agent counts, one stream shape each (default 1000,100: one "
                             "merged interval per second, then ten)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1000, help="values per histogram")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="where journals go (default a temporary directory)")
    parser.add_argument("--watch", nargs=2, metavar=("ADDR", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch:
        return watch_only(*args.watch)
    service = ControllerService(tempfile.mkdtemp(prefix="bench-watch-"), accept_plans=False)
    server = start_server(service, "127.0.0.1:0")
    args.address = server.address
    ratios = []
    try:
        for agents in args.agents:
            ratios.append((agents, regime(args, service, agents)))
    finally:
        server.stop()
    for agents, ratio in ratios:
        print(f"{agents} agents every {agents / args.rate * 1000:.0f} ms: controller CPU with "
              f"{args.watchers} watchers / without: {ratio:.3f}  (goal <= {GOAL:.2f})")
    return 0


def regime(args, service, agents):
    """Runs one stream shape; prints its runs and returns the with/without CPU ratio."""
    interval_s = agents / args.rate
    intervals = max(2, int(args.seconds / interval_s))
    reports = make_reports(agents, intervals, args.samples, interval_s)
    seconds = intervals * interval_s
    print(f"{len(reports)} reports: {agents} agents every {interval_s * 1000:.0f} ms "
          f"= {args.rate}/s for {seconds:.1f} s; {len(TARGETS)} targets x "
          f"{len(Metric)} histograms of {args.samples} values; {intervals} merged intervals")
    best = {}
    for repeat in range(args.repeat):
        for watchers in (0, args.watchers):
            cpu, wall, released, lag, counts = one_run(args, reports, agents, watchers, service,
                                                       f"{agents}-{repeat}")
            print(f"  run {repeat + 1}, {watchers:2d} watchers: CPU {cpu / seconds * 100:5.1f} % "
                  f"of a core, wall {wall:5.2f} s, worst lag behind pace {lag * 1000:6.1f} ms, "
                  f"{released} intervals; per watcher (intervals, skipped): "
                  f"{sorted(set(counts)) if counts else '-'}")
            best[watchers] = min(best.get(watchers, cpu), cpu)
    base, watched = best[0], best[args.watchers]
    print(f"  best: without watchers {base / seconds * 100:.1f} % of a core "
          f"({base / len(reports) * 1e6:.0f} us per report), with {args.watchers} "
          f"{watched / seconds * 100:.1f} % ({watched / len(reports) * 1e6:.0f} us per report)")
    return watched / base


if __name__ == "__main__":
    sys.exit(main())
