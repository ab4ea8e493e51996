"""End-to-end CPU per request of a run through one agent vs ``loadgate bench``, same run.

nginx (or ``loadgate target`` when nginx is missing) answers on loopback, pinned to the server
core.  On the other core, in turn:

- ``bench``: ``loadgate bench URL -R RATE`` (one engine worker);
- ``agent``: ``loadgate agent --workers 1`` and ``loadgate run PLAN --agents ADDR`` (the
  controller: clock probe, heartbeats, report stream, journal, merge, run directory).

Each side's CPU is that of its whole process trees from wait4 (the agent is stopped with
SIGTERM after the run, so its engine workers are counted), interpreter start-up included on
both sides; requests are the completed ones each side reports.  The ratio is agent CPU per
request over bench CPU per request (goal <= 1.1); beside it, the same ratio with both engines'
CPU taken as equal (what the agent and controller add outside the engine).  Nothing asserts.  Usage:

    python benchmarks/bench_agent_overhead.py [--duration 15] [--rate 10000] [--rounds 3]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_generator import run_pinned, start_nginx, start_pinned_server, start_target  # noqa: E402

CLI = [sys.executable, "-m", "loadgate.controller.cli"]
PLAN = """\
apiVersion: loadgate/v1
deployment: {{id: BENCH-AGENT, type: FEATURE, risk: LOW, environment: DEV, strategy: BIG-BANG}}
targets:
  - {{name: main, url: "{url}"}}
load: {{rate: {rate}, duration: {duration}s, interval: 1s, connections: {connections}, timeout: 2s}}
downtime_window: {{start: "2025-01-01T00:00:00+00:00", end: "2025-01-01T01:00:00+00:00"}}
"""


def run_bench(url, args, workdir):
    json_path = os.path.join(workdir, "bench.json")
    cmd = CLI + ["bench", url, "-d", f"{args.duration}s", "-c", str(args.connections), "-t", "1",
                 "-R", str(args.rate), "--json", json_path]
    text, rc, cpu, wall = run_pinned(cmd, args.generator_core, args.duration * 3 + 60)
    if rc != 0 or not os.path.exists(json_path):
        raise RuntimeError(f"loadgate bench failed ({rc}):\n{text}")
    with open(json_path) as f:
        report = json.load(f)
    return {"requests": report["requests"]["completed"], "cpu_s": cpu, "wall_s": wall,
            "engine_cpu_s": (report.get("generator") or {}).get("cpu_seconds")}


def start_agent(core):
    proc, host, port = start_pinned_server(
        CLI + ["agent", "--listen", "127.0.0.1:0", "--workers", "1"], core, "agent",
        stderr=subprocess.DEVNULL)
    return proc, f"{host}:{port}"


def run_agent(url, args, workdir):
    run_dir = os.path.join(workdir, f"run-{time.monotonic_ns()}")
    plan = os.path.join(workdir, "plan.yaml")
    with open(plan, "w") as f:
        f.write(PLAN.format(url=url, rate=args.rate, duration=args.duration,
                            connections=args.connections))
    agent, address = start_agent(args.generator_core)
    try:
        text, rc, controller_cpu, wall = run_pinned(
            CLI + ["run", plan, "--agents", address, "--no-progress", "--run-dir", run_dir],
            args.generator_core, args.duration * 3 + 60)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(agent.pid, 0)
        agent.stdout.close()
    if rc != 0:
        raise RuntimeError(f"loadgate run failed ({rc}):\n{text}")
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    agent_cpu = usage.ru_utime + usage.ru_stime
    return {"requests": summary["load"]["completed"], "cpu_s": agent_cpu + controller_cpu,
            "agent_cpu_s": agent_cpu, "controller_cpu_s": controller_cpu, "wall_s": wall,
            "engine_cpu_s": summary["generator"]["cpu_seconds"]}


def per_request_us(run):
    return run["cpu_s"] / max(run["requests"], 1) * 1e6


def measure_round(url, args, workdir):
    bench = run_bench(url, args, workdir)
    agent = run_agent(url, args, workdir)
    # The engine's own CPU for the same requests varies by ~10 % between runs on a shared
    # machine; the CPU outside the engine on each side is what the agent path itself adds.
    added = (agent["cpu_s"] - agent["engine_cpu_s"]) - (bench["cpu_s"] - bench["engine_cpu_s"])
    return {"bench": bench, "agent": agent,
            "ratio": per_request_us(agent) / per_request_us(bench),
            "ratio_same_engine": 1.0 + added / bench["cpu_s"]}


def report(number, runs):
    bench, agent = runs["bench"], runs["agent"]
    print(f"round {number}: bench {bench['requests']} requests, {bench['cpu_s']:.2f} s CPU "
          f"({per_request_us(bench):.1f} µs/request; engine {bench['engine_cpu_s']:.2f} s)")
    print(f"         agent {agent['requests']} requests, {agent['cpu_s']:.2f} s CPU = agent "
          f"{agent['agent_cpu_s']:.2f} + controller {agent['controller_cpu_s']:.2f} "
          f"({per_request_us(agent):.1f} µs/request; engine {agent['engine_cpu_s']:.2f} s)")
    print(f"         ratio agent/bench CPU per request: {runs['ratio']:.3f} (goal <= 1.1); "
          f"with the engine's CPU taken as equal: {runs['ratio_same_engine']:.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per run")
    parser.add_argument("--rate", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--generator-core", type=int, default=1)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="loadgate-bench-agent-")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx:
        server, port = start_nginx(nginx, args.server_core, workdir)
    else:
        server, port = start_target(args.server_core)
    url = f"http://127.0.0.1:{port}/"
    print(f"{'nginx' if nginx else 'loadgate target'} on core {args.server_core}, generators "
          f"on core {args.generator_core}, {args.rate} req/s, {args.connections} connections, "
          f"{args.duration} s per run")
    rounds = []
    try:
        for number in range(1, args.rounds + 1):
            runs = measure_round(url, args, workdir)
            rounds.append(runs)
            report(number, runs)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    for key in ("ratio", "ratio_same_engine"):
        ratios = sorted(r[key] for r in rounds)
        print(f"median {key} over {len(ratios)} rounds: {ratios[len(ratios) // 2]:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rate": args.rate, "duration_s": args.duration,
                       "connections": args.connections, "rounds": rounds}, f, indent=2)


if __name__ == "__main__":
    main()
