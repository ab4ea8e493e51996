"""``loadgate bench URL``: one open-loop (or, labelled, closed-loop) run from this machine,
familiar to wrk2 users.  Prints the intended and achieved rate, outcome counts, and the
latency, service-time and schedule-lag tables; warns when the generator fell behind.
"""
import contextlib
import json
import os
import sys

from loadgate.native.bench_report import build_report, format_report, interval_row
from loadgate.native.engine import EngineConfig, LoadRun, RequestTemplate, TargetSpec
from loadgate.native.engine_config import RotateMode
from loadgate.native.errors import ConfigError
from loadgate.native.schedule import ArrivalModel, ClosedLoop, make_schedule
from loadgate.native.target import parse_duration

TARGET_NAME = "target"
# Open-loop arrivals this command offers (ramps and steps need a plan).
ARRIVALS = (ArrivalModel.CONSTANT.value, ArrivalModel.POISSON.value)


def register(subparsers):
    parser = subparsers.add_parser(
        "bench", help="open-loop HTTP benchmark of one URL (wrk2-like)",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="http:// or https:// URL")
    parser.add_argument("-R", "--rate", type=float, help="requests per second (open loop)")
    parser.add_argument("-d", "--duration", default="10s", help="e.g. 10s, 1m, 500ms")
    parser.add_argument("-c", "--connections", type=int, default=16,
                        help="connections opened up front (the concurrency with --closed)")
    parser.add_argument("--max-connections", type=int, default=1024,
                        help="most connections the pool may grow to when all are busy")
    parser.add_argument("-t", "--workers", type=int, default=None,
                        help="worker processes (default: one per core)")
    parser.add_argument("--arrival", choices=ARRIVALS, default=ArrivalModel.CONSTANT.value)
    parser.add_argument("--seed", type=int, help="seed of the Poisson arrivals")
    parser.add_argument("--closed", action="store_true",
                        help="closed loop: -c request loops back to back (labelled as such)")
    parser.add_argument("--think", default="0", help="closed loop: pause between requests")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="", help="request body, or @FILE")
    parser.add_argument("--rotate-file", metavar="FILE",
                        help="rotate through bodies (one per line) or requests (see --rotate-mode)")
    parser.add_argument("--rotate-mode", choices=[m.value for m in RotateMode],
                        default=RotateMode.BODIES.value)
    parser.add_argument("--timeout", default="10s", help="per-request timeout")
    parser.add_argument("--interval", default="1s", help="reporting interval")
    parser.add_argument("--pacing-window", default="0",
                        help="let sends go out up to this late to share wake-ups (e.g. 1ms, "
                             "wrk2's granularity); default 0: every send at its instant")
    parser.add_argument("-k", "--insecure", action="store_true", help="accept any TLS certificate")
    parser.add_argument("--cacert", metavar="FILE", help="trust this CA for https")
    parser.add_argument("--json", metavar="FILE", help="write the versioned JSON result here")
    parser.add_argument("--hlog", metavar="FILE", help="write an HdrHistogram interval log here")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-interval lines")
    parser.set_defaults(func=run)
    return parser


def _headers(values):
    headers = []
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"-H wants 'Name: value', got {value!r}")
        headers.append((name.strip(), rest.strip()))
    return tuple(headers)


def _body(value):
    if not value.startswith("@"):
        return value.encode()
    try:
        with open(value[1:], "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read body file {value[1:]!r}: {exc.strerror}") from None


def config_from_args(args):
    """The EngineConfig the command line describes; ConfigError for bad flags."""
    duration = parse_duration(args.duration)
    if args.closed:
        if args.rate is not None:
            raise ConfigError("--closed runs -c request loops back to back; it takes no rate")
        schedule = ClosedLoop(args.connections, duration, parse_duration(args.think))
    else:
        if args.rate is None:
            raise ConfigError("an open-loop run needs -R/--rate (or --closed)")
        schedule = make_schedule(args.arrival, args.rate, duration, seed=args.seed)
    request = RequestTemplate(method=args.method, headers=_headers(args.header),
                              body=_body(args.body), rotate_file=args.rotate_file,
                              rotate_mode=args.rotate_mode)
    target = TargetSpec(TARGET_NAME, args.url, request=request, tls_verify=not args.insecure,
                        ca_file=args.cacert)
    return EngineConfig([target], schedule, connections=args.connections,
                        max_connections=max(args.max_connections, args.connections),
                        timeout_s=parse_duration(args.timeout),
                        interval_s=parse_duration(args.interval),
                        pacing_window_s=parse_duration(args.pacing_window))


def _progress(snapshot):
    combined = snapshot.combined()
    p50, p99 = combined.latency.percentiles([50.0, 99.0])
    label = "end" if snapshot.final else f"{snapshot.index + 1}"
    print(f"[{label:>4}] sent {snapshot.sent:>7}/{snapshot.intended:<7} ok {combined.completed:>7}"
          f" err {combined.errors:>5} timeout {combined.timeouts:>4}  latency p50 {p50}us "
          f"p99 {p99}us  lag max {snapshot.max_lag_us}us", flush=True)


def _silence_stdout():
    # What Python's docs advise on EPIPE: whatever is still buffered or printed later goes
    # to /dev/null, so neither this command nor the interpreter's exit raises again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _Intervals:
    """Takes each merged interval as the run hands it out: keeps its report row, writes its
    histograms to the interval log, prints its progress line.  When stdout's reader has gone
    (``bench ... | head``) the run is stopped, as by Ctrl-C, and the files are still written."""

    def __init__(self, run, hlog_file, progress):
        self.run = run
        self.rows = []
        self.hlog_file = hlog_file
        self.writer = None
        self.progress = progress
        self.reader_gone = False

    def __call__(self, snapshot):
        self.rows.append(interval_row(snapshot))
        if self.hlog_file is not None and snapshot.end_ns > snapshot.start_ns:
            self._write_hlog(snapshot)
        if self.progress and not self.reader_gone:
            try:
                _progress(snapshot)
            except BrokenPipeError:
                self.lost_reader()

    def lost_reader(self):
        if not self.reader_gone:
            self.reader_gone = True
            _silence_stdout()
            self.run.stop()

    def finish(self, start_ns):
        """A run with no interval of any length still leaves a valid (empty) log."""
        if self.hlog_file is not None and self.writer is None:
            from loadgate.native.hlog import HlogWriter

            self.writer = HlogWriter(self.hlog_file, start_time=start_ns / 1e9)

    def _write_hlog(self, snapshot):
        """Latency untagged (what HdrHistogram tools plot by default); service time and
        schedule lag tagged ``service_time`` and ``schedule_lag``."""
        from loadgate.native.hlog import HlogWriter

        begin, end = snapshot.start_ns / 1e9, snapshot.end_ns / 1e9
        if self.writer is None:
            self.writer = HlogWriter(self.hlog_file, start_time=begin)
        combined = snapshot.combined()
        self.writer.write_interval(combined.latency, begin, end)
        self.writer.write_interval(combined.service_time, begin, end, tag="service_time")
        self.writer.write_interval(combined.schedule_lag, begin, end, tag="schedule_lag")


def _open_output(path):
    try:
        return open(path, "w")
    except OSError as exc:
        raise ConfigError(f"cannot write {path!r}: {exc.strerror}") from None


def run(args):
    config = config_from_args(args)
    with contextlib.ExitStack() as files:
        # Both files are opened first: a path that cannot be written is an error before any
        # load is sent, not after the run.
        json_file = files.enter_context(_open_output(args.json)) if args.json else None
        hlog_file = files.enter_context(_open_output(args.hlog)) if args.hlog else None
        load_run = LoadRun(config, args.workers)
        intervals = _Intervals(load_run, hlog_file, progress=not args.quiet)
        load_run.start()
        result = load_run.drain(intervals)
        intervals.finish(result.totals.start_ns)
        report = build_report(result, config, args.url, len(result.workers), intervals.rows)
        if json_file is not None:
            json.dump(report, json_file, indent=2)
            json_file.write("\n")
    if not intervals.reader_gone:
        try:
            print(format_report(report))
            sys.stdout.flush()
        except BrokenPipeError:
            intervals.lost_reader()
    if result.worker_errors:
        print("\n".join(result.worker_errors), file=sys.stderr)
        return 1
    return 1 if intervals.reader_gone else 0
