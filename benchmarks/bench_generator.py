"""The load generator against its peers, in one run on this machine.

nginx serves a fixed 3-byte answer on loopback, pinned to one core; every generator is pinned
to another core and measured the same way (CPU time of its whole process tree from wait4):

1. generator CPU seconds per 1M requests at a fixed 10k req/s: loadgate / wrk2 (goal <= 0.8),
   with exact pacing and with a 1 ms pacing window (wrk2's own granularity), beside the floor:
   ``pacing_floor.c``, the least an open-loop client can do (no parser, no histogram), built
   here with gcc and run both ways; what exact pacing costs it is this machine's price;
2. loadgate's schedule lag (actual send - intended send) p50 / p99 at that rate (goals 20 µs,
   200 µs), with wrk2's achieved rate beside it;
3. maximum throughput with 50 connections, closed loop: loadgate / wrk (goal >= 1.0);
4. the built-in ``loadgate target`` on one core under wrk2 at 20k req/s (it must not be the
   bottleneck): achieved rate and p99 beside nginx's under the same load.

Peers come from benchmarks/peers.sh.  Nothing asserts: the script prints what it measured and
the ratios, and --json keeps them.  Usage:

    python benchmarks/bench_generator.py [--duration 15] [--rate 10000] [--json out.json]
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def peers():
    out = subprocess.run(["bash", os.path.join(HERE, "peers.sh")], check=True,
                         capture_output=True, text=True).stdout
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {name: path for name, path in found.items() if path}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_nginx(nginx, core, workdir):
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=workdir, port=port))
    proc = subprocess.Popen(["taskset", "-c", str(core), nginx, "-p", workdir, "-c", conf,
                             "-g", "daemon off; master_process off;"])
    wait_listening(port)
    return proc, port


def run_pinned(cmd, core, timeout):
    """(stdout, exit code, CPU seconds of the process tree, wall seconds) of one command."""
    begin = time.monotonic()
    proc = subprocess.Popen(["taskset", "-c", str(core)] + cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = []
    deadline = begin + timeout
    for line in proc.stdout:
        out.append(line)
        if time.monotonic() > deadline:
            proc.kill()
            break
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return "".join(out), proc.returncode, usage.ru_utime + usage.ru_stime, time.monotonic() - begin


def parse_wrk(text):
    """Requests, achieved rate, error count and (wrk2 --latency) percentiles in µs."""
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not done or not rate:
        raise RuntimeError(f"unexpected wrk output:\n{text}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(non2xx.group(1)) if non2xx else 0
    scale = {"us": 1, "ms": 1e3, "s": 1e6}
    percentiles = {f"p{float(p):g}": round(float(v) * scale[unit], 1) for p, v, unit in
                   re.findall(r"^\s*(50|90|99|99\.9)\.?0*%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    return {"requests": int(done.group(1)), "rate": float(rate.group(1)), "errors": errors,
            "latency_us": percentiles}


def loadgate_cmd(url, args, json_path, closed, window):
    cmd = [sys.executable, "-m", "loadgate.controller.cli", "bench", url, "-d", f"{args.duration}s",
           "-c", str(args.connections), "-t", "1", "--json", json_path]
    if window:
        cmd += ["--pacing-window", window]
    return cmd + (["--closed"] if closed else ["-R", str(args.rate)])


def loadgate_available():
    probe = subprocess.run([sys.executable, "-m", "loadgate.controller.cli", "bench", "--help"],
                           capture_output=True, text=True)
    return probe.returncode == 0


def run_loadgate(url, args, workdir, closed, window=None):
    json_path = os.path.join(workdir, "closed.json" if closed else "open.json")
    text, rc, cpu, wall = run_pinned(loadgate_cmd(url, args, json_path, closed, window),
                                     args.generator_core, args.duration * 3 + 60)
    if rc != 0 or not os.path.exists(json_path):
        raise RuntimeError(f"loadgate bench failed ({rc}):\n{text}")
    with open(json_path) as f:
        report = json.load(f)
    requests = report["requests"]
    errors = sum((requests.get("errors") or {}).values()) + requests.get("timeouts", 0)
    return {"requests": requests["completed"], "rate": report["rate"]["achieved"],
            "intended": report["rate"].get("intended"), "errors": errors,
            "not_sent": requests.get("not_sent", 0), "cpu_s": cpu, "wall_s": wall,
            "self_cpu_s": (report.get("generator") or {}).get("cpu_seconds"),
            "lag_us": {k: report["schedule_lag"][k] for k in ("p50", "p90", "p99", "p99.9", "max")},
            "latency_us": {k: report["latency"][k] for k in ("p50", "p99", "max")}}


def run_wrk(binary, url, args, fixed_rate, rate=None, connections=None):
    cmd = [binary, "-t1", f"-c{connections or args.connections}", f"-d{args.duration}s"]
    cmd += [f"-R{rate or args.rate}", "--latency"] if fixed_rate else []
    text, rc, cpu, wall = run_pinned(cmd + [url], args.generator_core, args.duration * 3 + 60)
    if rc != 0:
        raise RuntimeError(f"{binary} failed ({rc}):\n{text}")
    return dict(parse_wrk(text), cpu_s=cpu, wall_s=wall)


def build_floor(workdir):
    """The path of pacing_floor.c compiled into ``workdir``, or None without a C compiler."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    binary = os.path.join(workdir, "pacing_floor")
    subprocess.run([compiler, "-O2", "-o", binary, os.path.join(HERE, "pacing_floor.c")],
                   check=True)
    return binary


def run_floor(binary, port, args, window_ns):
    cmd = [binary, str(port), str(args.rate), str(args.duration), str(args.connections),
           str(window_ns)]
    text, rc, cpu, wall = run_pinned(cmd, args.generator_core, args.duration * 3 + 60)
    if rc != 0:
        raise RuntimeError(f"pacing_floor failed ({rc}):\n{text}")
    report = json.loads(text.strip().splitlines()[-1])
    return {"requests": report["completed"], "rate": report["completed"] / args.duration,
            "errors": report["requests"] - report["completed"], "cpu_s": cpu, "wall_s": wall,
            "lag_us": report["lag_us"]}


def start_pinned_server(cmd, core, name, stderr=None):
    """(process, host, port) of a server pinned to ``core`` once its first line of output,
    ``listening on HOST:PORT``, says where it listens."""
    # Imported here so that --peers-only runs where loadgate is not installed.
    from loadgate.native.target import parse_listening, read_first_line

    proc = subprocess.Popen(["taskset", "-c", str(core)] + cmd, stdout=subprocess.PIPE,
                            stderr=stderr)
    line = read_first_line(proc, 30)
    address = parse_listening(line)
    if address is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{name} did not start: {line!r}")
    return proc, address[0], address[1]


def start_target(core):
    proc, _, port = start_pinned_server(
        [sys.executable, "-m", "loadgate.native.target_cli", "--listen", "127.0.0.1:0"],
        core, "loadgate target")
    return proc, port


def per_million(run):
    return run["cpu_s"] / max(run["requests"], 1) * 1e6


def verdict(ok):
    return "meets goal" if ok else "MISSES goal"


def measure_round(found, args, with_loadgate):
    """One of each run, back to back, so the runs of a round share the machine's conditions."""
    runs = {"load_average": float(open("/proc/loadavg").read().split()[0])}
    only = set(args.only.split(",")) if args.only else None

    def wanted(name):
        return only is None or name in only

    workdir = tempfile.mkdtemp(prefix="lg-bench-")
    nginx, port = start_nginx(found["nginx"], args.server_core, workdir)
    url = f"http://127.0.0.1:{port}/"
    try:
        if "wrk2" in found and wanted("wrk2_fixed"):
            runs["wrk2_fixed"] = run_wrk(found["wrk2"], url, args, fixed_rate=True)
        if with_loadgate and wanted("loadgate_fixed"):
            runs["loadgate_fixed"] = run_loadgate(url, args, workdir, closed=False)
        if with_loadgate and wanted("loadgate_fixed_1ms"):
            runs["loadgate_fixed_1ms"] = run_loadgate(url, args, workdir, closed=False,
                                                      window="1ms")
        floor = None
        if wanted("floor_fixed") or wanted("floor_fixed_1ms"):
            floor = build_floor(workdir)
        if floor and wanted("floor_fixed"):
            runs["floor_fixed"] = run_floor(floor, port, args, 0)
        if floor and wanted("floor_fixed_1ms"):
            runs["floor_fixed_1ms"] = run_floor(floor, port, args, 1_000_000)
        if wanted("wrk_max"):
            runs["wrk_max"] = run_wrk(found["wrk"], url, args, fixed_rate=False)
        if with_loadgate and wanted("loadgate_max"):
            runs["loadgate_max"] = run_loadgate(url, args, workdir, closed=True)
        if "wrk2" in found and args.target_rate and wanted("nginx_at_target_rate"):
            runs["nginx_at_target_rate"] = run_wrk(found["wrk2"], url, args, True,
                                                   args.target_rate, 100)
    finally:
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    if "wrk2" in found and args.target_rate and wanted("target_at_target_rate"):
        target, port = start_target(args.server_core)
        try:
            runs["target_at_target_rate"] = run_wrk(
                found["wrk2"], f"http://127.0.0.1:{port}/", args, True, args.target_rate, 100)
        finally:
            target.terminate()
            target.wait(10)
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per run")
    parser.add_argument("--rate", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--generator-core", type=int, default=0)
    parser.add_argument("--server-core", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every run this often; ratios are reported per round and as medians")
    parser.add_argument("--peers-only", action="store_true", help="skip loadgate")
    parser.add_argument("--target-rate", type=int, default=20000,
                        help="rate for the built-in target's check (0 skips it)")
    parser.add_argument("--only", help="comma-separated runs to do (names as in the table, "
                                       "e.g. wrk2_fixed,loadgate_fixed_1ms); default all")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)

    found = peers()
    with_loadgate = not args.peers_only and loadgate_available()
    results = {"machine": {"cpus": os.cpu_count(), "generator_core": args.generator_core,
                           "server_core": args.server_core},
               "rate": args.rate, "duration_s": args.duration, "connections": args.connections,
               "rounds": []}
    print(f"nginx on core {args.server_core}, generators on core {args.generator_core}, "
          f"{args.connections} connections, {args.duration} s per run")
    for number in range(args.rounds):
        runs = measure_round(found, args, with_loadgate)
        results["rounds"].append(runs)
        print(f"\nround {number + 1} of {args.rounds} (load average {runs['load_average']:.2f} "
              f"before it)")
        report(runs, args)
    if args.rounds > 1:
        summarise(results)
    if not with_loadgate:
        print("loadgate bench is not available (or --peers-only): peers measured alone")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def report(runs, args):
    print(f"{'run':<22}{'requests':>10}{'req/s':>11}{'errors':>8}{'CPU s':>8}{'CPU s/1M':>10}")
    for name in ("wrk2_fixed", "loadgate_fixed", "loadgate_fixed_1ms", "floor_fixed",
                 "floor_fixed_1ms", "wrk_max", "loadgate_max", "nginx_at_target_rate",
                 "target_at_target_rate"):
        run = runs.get(name)
        if run:
            print(f"{name:<22}{run['requests']:>10}{run['rate']:>11.0f}{run['errors']:>8}"
                  f"{run['cpu_s']:>8.2f}{per_million(run):>10.2f}")
    lg, w2 = runs.get("loadgate_fixed"), runs.get("wrk2_fixed")
    if lg and w2:
        ratio = runs["cpu_ratio"] = per_million(lg) / per_million(w2)
        print(f"(1) CPU per 1M requests at {args.rate} req/s: loadgate {per_million(lg):.2f} s, "
              f"wrk2 {per_million(w2):.2f} s -> ratio {ratio:.2f} (goal <= 0.8, {verdict(ratio <= 0.8)})")
        if lg.get("self_cpu_s") is not None:
            steady = lg["self_cpu_s"] / max(lg["requests"], 1) * 1e6
            runs["cpu_ratio_self_reported"] = steady / per_million(w2)
            print(f"    loadgate's own count of its workers' CPU (no interpreter start-up): "
                  f"{steady:.2f} s per 1M -> ratio {steady / per_million(w2):.2f}")
    for name, label in (("loadgate_fixed_1ms", "loadgate, 1 ms pacing window"),
                        ("floor_fixed", "floor, exact pacing"),
                        ("floor_fixed_1ms", "floor, 1 ms pacing window")):
        run = runs.get(name)
        if run and w2:
            ratio = runs[f"cpu_ratio_{name}"] = per_million(run) / per_million(w2)
            lag = run["lag_us"]
            own = ""
            if run.get("self_cpu_s") is not None:
                steady = run["self_cpu_s"] / max(run["requests"], 1) * 1e6
                own = f" (workers alone {steady:.2f} s, ratio {steady / per_million(w2):.2f})"
            print(f"    {label}: {per_million(run):.2f} s per 1M -> ratio {ratio:.2f}{own}, "
                  f"lag p50 {lag['p50']} µs p99 {lag['p99']} µs")
    if lg:
        lag = lg["lag_us"]
        print(f"(2) schedule lag at {args.rate} req/s: p50 {lag['p50']} µs, p99 {lag['p99']} µs, "
              f"p99.9 {lag['p99.9']} µs, max {lag['max']} µs "
              f"(goals p50 <= 20, p99 <= 200: {verdict(lag['p50'] <= 20 and lag['p99'] <= 200)})")
    lgm, wm = runs.get("loadgate_max"), runs.get("wrk_max")
    if lgm and wm:
        ratio = runs["throughput_ratio"] = lgm["rate"] / wm["rate"]
        print(f"(3) max throughput, {args.connections} connections: loadgate {lgm['rate']:.0f} req/s, "
              f"wrk {wm['rate']:.0f} req/s -> ratio {ratio:.2f} (goal >= 1.0, {verdict(ratio >= 1.0)})")
    tg, ng = runs.get("target_at_target_rate"), runs.get("nginx_at_target_rate")
    if tg and ng:
        print(f"(4) loadgate target on one core under wrk2 -R{args.target_rate} -c100: "
              f"{tg['rate']:.0f} req/s (nginx {ng['rate']:.0f}), p50 {tg['latency_us'].get('p50')} µs "
              f"p99 {tg['latency_us'].get('p99')} µs (nginx p50 {ng['latency_us'].get('p50')} µs "
              f"p99 {ng['latency_us'].get('p99')} µs), rate ratio {tg['rate'] / ng['rate']:.2f}")


def summarise(results):
    rounds = results["rounds"]

    def median(values):
        values = sorted(v for v in values if v is not None)
        return values[len(values) // 2] if values else None

    summary = results["summary"] = {
        "cpu_ratio_median": median(r.get("cpu_ratio") for r in rounds),
        "cpu_ratio_self_reported_median": median(r.get("cpu_ratio_self_reported") for r in rounds),
        "throughput_ratio_median": median(r.get("throughput_ratio") for r in rounds),
        "cpu_ratio_1ms_window_median": median(r.get("cpu_ratio_loadgate_fixed_1ms")
                                              for r in rounds),
        "cpu_ratio_floor_exact_median": median(r.get("cpu_ratio_floor_fixed") for r in rounds),
        "cpu_ratio_floor_1ms_median": median(r.get("cpu_ratio_floor_fixed_1ms") for r in rounds),
        "lag_p50_us_median": median(r["loadgate_fixed"]["lag_us"]["p50"]
                                    for r in rounds if "loadgate_fixed" in r),
        "lag_p99_us_median": median(r["loadgate_fixed"]["lag_us"]["p99"]
                                    for r in rounds if "loadgate_fixed" in r),
    }
    print(f"\nmedians over {len(rounds)} rounds: " + ", ".join(
        f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}"
        for name, value in summary.items() if value is not None))


if __name__ == "__main__":
    sys.exit(main())
