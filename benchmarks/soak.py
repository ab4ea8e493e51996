"""Soak: one agent, one ``loadgate target``, a steady rate for N minutes.

    python benchmarks/soak.py --minutes 30 --rate 2000 [--json soak.json]

Every ``--sample`` seconds (default 10) it records the agent's resident memory and open file
descriptors (the agent process plus its engine workers, read from /proc), the connections the
engine holds open, and the worst schedule lag of the reports received since the last sample.
At the end it prints whether memory and descriptors stayed flat: after the warm-up (the first
``--warmup`` fraction of the samples, at least one minute), every sample is within ``--band``
(5 %) of the first sample after the warm-up.  Descriptors are judged without the engine's
connections, which may grow to ``max_connections`` when a burst finds the pool busy; those
are checked against that cap instead.

Everything runs on loopback; the run is bounded by its schedule (rate x minutes arrivals) and
by a deadline of the run's length plus two minutes.
"""
import argparse
import json
import subprocess
import sys
import threading
import time

import grpc
import psutil

from loadgate.native._hdr import Histogram
from loadgate.native.target import (parse_listening, read_first_line, start_target_process,
                                    stop_target_process)
from loadgate.proto.loadgate.v1 import agent_pb2, agent_pb2_grpc, common_pb2

RUN_ID = "soak"


def start_agent(workers):
    """An agent subprocess on 127.0.0.1:0; returns (process, address)."""
    proc = subprocess.Popen([sys.executable, "-m", "loadgate.agent.main", "--listen",
                             "127.0.0.1:0", "--workers", str(workers), "--dead-man", "10s"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = read_first_line(proc, 30)
    address = parse_listening(line)
    if address is None:
        proc.kill()
        proc.wait()
        sys.exit(f"agent did not start: {line!r}")
    return proc, f"{address[0]}:{address[1]}"


def process_tree_usage(pid):
    """(resident bytes, open descriptors, resident bytes of the agent process alone) of
    ``pid`` and its descendants (the engine workers)."""
    try:
        root = psutil.Process(pid)
        processes = [root] + root.children(recursive=True)
        own = root.memory_info().rss
    except psutil.NoSuchProcess:
        return 0, 0, 0
    rss = fds = 0
    for process in processes:
        try:
            rss += process.memory_info().rss
            fds += process.num_fds()
        except psutil.NoSuchProcess:
            continue
    return rss, fds, own


class ReportReader:
    """Reads the run's report stream on a thread, keeping the worst lag since last taken."""

    def __init__(self, stub):
        self.stub = stub
        self.reports = 0
        self.completed = 0
        self.errors = 0
        self.final = None
        self.last_seq = 0  # acknowledged on every heartbeat, as a controller does once journaled
        self.open_connections = 0
        self._lag = Histogram()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self):
        last = 0
        while self.final is None:
            try:
                stream = self.stub.StreamReports(
                    agent_pb2.StreamReportsRequest(run_id=RUN_ID, after_seq=last))
                for report in stream:
                    last = report.seq
                    self._take(report)
                    self.last_seq = last
                    if report.final:
                        self.final = report
                        return
            except grpc.RpcError:
                time.sleep(0.5)

    def _take(self, report):
        with self._lock:
            self.reports += 1
            self.open_connections = report.health.open_connections
            for target in report.targets:
                self._lag.add(Histogram.decode_binary(target.schedule_lag))
                for outcome in target.outcomes:
                    if outcome.outcome == common_pb2.OUTCOME_OK_2XX:
                        self.completed += outcome.count
                    elif outcome.outcome != common_pb2.OUTCOME_NOT_SENT:
                        self.errors += outcome.count

    def take_lag(self):
        """(p99, max) schedule lag in µs since the last call."""
        with self._lock:
            lag, self._lag = self._lag, Histogram()
        if lag.total_count == 0:
            return 0, 0
        return lag.value_at_percentile(99.0), lag.max


def heartbeat(stub, stop, reader):
    while not stop.wait(1.0):
        try:
            stub.Ping(agent_pb2.PingRequest(controller_unix_ns=time.time_ns(),
                                            controller_id="soak", run_id=RUN_ID,
                                            journaled_seq=reader.last_seq), timeout=5)
        except grpc.RpcError:
            pass


def flatness(samples, key, warmup_fraction, band):
    """(flat?, baseline, lowest, highest) of ``key`` over the samples after the warm-up."""
    skip = max(int(len(samples) * warmup_fraction), 6)
    after = [s[key] for s in samples[skip:]]
    if len(after) < 2:
        return None, 0, 0, 0
    baseline = after[0]
    flat = all(abs(value - baseline) <= band * baseline for value in after)
    return flat, baseline, min(after), max(after)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="requests per second")
    parser.add_argument("--workers", type=int, default=1, help="engine workers of the agent")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--interval", type=float, default=1.0, help="report interval, seconds")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.1,
                        help="fraction of the samples treated as warm-up")
    parser.add_argument("--band", type=float, default=0.05, help="allowed drift, fraction")
    parser.add_argument("--json", help="write the samples and verdict here")
    args = parser.parse_args(argv)

    duration_s = args.minutes * 60.0
    target, host, port = start_target_process(["--latency", "1ms"])
    agent, address = start_agent(args.workers)
    channel = grpc.insecure_channel(address)
    stub = agent_pb2_grpc.AgentStub(channel)
    stop_heartbeat = threading.Event()
    samples = []
    try:
        spec = agent_pb2.RunSpec(
            targets=[agent_pb2.TargetSpec(name="main", url=f"http://{host}:{port}/",
                                          weight=1.0)],
            schedule=agent_pb2.ScheduleSpec(model="constant", rate=args.rate,
                                            duration_s=duration_s, shard_count=1),
            connections=args.connections, max_connections=args.connections * 4,
            timeout_s=5.0, interval_s=args.interval, workers=args.workers)
        stub.Prepare(agent_pb2.PrepareRequest(run_id=RUN_ID, spec=spec), timeout=60)
        reader = ReportReader(stub)
        threading.Thread(target=heartbeat, args=(stub, stop_heartbeat, reader),
                         daemon=True).start()
        start_ns = time.time_ns() + 500_000_000
        stub.Start(agent_pb2.StartRequest(run_id=RUN_ID, start_unix_ns=start_ns), timeout=30)
        reader.thread.start()
        print(f"soak: {args.rate:g} req/s for {args.minutes:g} min through agent {address} "
              f"(pid {agent.pid}) against target {host}:{port}", flush=True)
        print(f"{'t_s':>6} {'rss_MiB':>8} {'agent':>6} {'fds':>5} {'conns':>5} {'lag_p99_us':>10} "
              f"{'lag_max_us':>10} {'reports':>7} {'ok':>10} {'errors':>6}", flush=True)
        deadline = time.monotonic() + duration_s + 120.0
        began = time.monotonic()
        next_sample = began + args.sample
        while reader.final is None and time.monotonic() < deadline:
            time.sleep(max(0.0, min(1.0, next_sample - time.monotonic())))
            if time.monotonic() < next_sample:
                continue
            next_sample += args.sample
            rss, fds, own = process_tree_usage(agent.pid)
            lag_p99, lag_max = reader.take_lag()
            sample = {"t_s": round(time.monotonic() - began, 1), "rss_bytes": rss,
                      "agent_rss_bytes": own, "fds": fds,
                      "fds_besides_connections": fds - reader.open_connections,
                      "open_connections": reader.open_connections, "lag_p99_us": lag_p99,
                      "lag_max_us": lag_max, "reports": reader.reports,
                      "completed": reader.completed, "errors": reader.errors}
            samples.append(sample)
            print(f"{sample['t_s']:>6.0f} {rss / 2**20:>8.1f} {own / 2**20:>6.1f} {fds:>5} "
                  f"{reader.open_connections:>5} {lag_p99:>10} {lag_max:>10} "
                  f"{reader.reports:>7} {reader.completed:>10} {reader.errors:>6}", flush=True)
        reader.thread.join(timeout=30)
    finally:
        stop_heartbeat.set()
        channel.close()
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        stop_target_process(target)

    # Only samples taken while the run was generating count: the last one may see the drain.
    steady = [s for s in samples if s["t_s"] <= duration_s]
    memory = flatness(steady, "rss_bytes", args.warmup, args.band)
    descriptors = flatness(steady, "fds_besides_connections", args.warmup, args.band)
    cap = args.connections * 4
    peak_connections = max((s["open_connections"] for s in samples), default=0)
    final = reader.final
    scheduled = final.scheduled_total if final is not None else 0
    verdict = {
        "minutes": args.minutes, "rate": args.rate, "samples": len(samples),
        "scheduled": scheduled, "completed": reader.completed, "errors": reader.errors,
        "run_end": common_pb2.RunEnd.Name(final.run_end) if final is not None else "NONE",
        "memory_flat": memory[0], "memory_bytes": memory[1:],
        "fds_flat": descriptors[0], "fds_besides_connections": descriptors[1:],
        "peak_connections": peak_connections, "max_connections": cap,
        "lag_p99_us_worst": max((s["lag_p99_us"] for s in steady), default=0),
    }
    print(f"scheduled {scheduled}, completed {reader.completed}, errors {reader.errors}, "
          f"ended {verdict['run_end']}")
    print(f"memory after warm-up: first {memory[1] / 2**20:.1f} MiB, "
          f"range {memory[2] / 2**20:.1f}..{memory[3] / 2**20:.1f} MiB -> "
          f"{'FLAT' if memory[0] else 'NOT FLAT' if memory[0] is False else 'too short'} "
          f"(band {args.band:.0%})")
    print(f"connections: peak {peak_connections} of at most {cap}")
    print(f"descriptors besides connections after warm-up: first {descriptors[1]}, range "
          f"{descriptors[2]}..{descriptors[3]} -> "
          f"{'FLAT' if descriptors[0] else 'NOT FLAT' if descriptors[0] is False else 'too short'}")
    print(f"worst per-sample schedule lag p99: {verdict['lag_p99_us_worst']} us")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"verdict": verdict, "samples": samples}, out, indent=1)
    return 0 if memory[0] and descriptors[0] and peak_connections <= cap else 1


if __name__ == "__main__":
    sys.exit(main())
