"""``loadgate target``: the built-in HTTP target for tests, demos and benchmarks.

Also runnable as ``python -m loadgate.native.target_cli``.  The first line on stdout is
``listening on HOST:PORT`` (flushed), the contract start_target_process relies on.
"""
import argparse
import os
import sys

from loadgate.native.errors import ConfigError, LoadgateError
from loadgate.native.target import (
    Behaviour, LatencySpec, LlmSpec, LoadLatency, TargetConfig, parse_behaviour, parse_duration,
    serve,
)

_EPILOG = """\
latency: 5ms | uniform:1ms:5ms | exponential:2ms | lognormal:2ms:0.5 (median, sigma)
failure rates (--error-rate, --reset-rate, --hang-rate, --malformed-rate) are exclusive
  outcomes of one draw per request and may add up to at most 1
stalls: nothing is answered in [k*EVERY, k*EVERY+FOR) after start; queued answers leave at its end
load latency: 30ms@200rps adds 30 ms, 30%@200rps adds 30 %, while the rate seen over
  --load-window exceeds 200 req/s (the threshold is for the whole target, split over workers)
routes: --route /slow 'latency=50ms,error-rate=0.1' (option names as the flags; longest prefix wins)
LLM: POST /v1/chat/completions and /v1/completions, JSON or "stream": true (server-sent events)
stats: GET /__target/stats returns this worker's counters and its epoch (CLOCK_MONOTONIC ns)
"""


def add_arguments(parser):
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="address to listen on; port 0 picks a free one (default %(default)s)")
    parser.add_argument("--port-file", metavar="FILE", help="also write the chosen port to FILE")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    parser.add_argument("--seed", type=int, help="seed of every random decision")
    parser.add_argument("--latency", default="0", help="injected latency (see below)")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--error-status", type=int, default=500)
    parser.add_argument("--reset-rate", type=float, default=0.0, help="fraction answered by a TCP RST")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="fraction never answered")
    parser.add_argument("--malformed-rate", type=float, default=0.0,
                        help="fraction answered with an invalid HTTP response")
    parser.add_argument("--stall-every", default="0", metavar="DURATION")
    parser.add_argument("--stall-for", default="0", metavar="DURATION")
    parser.add_argument("--load-latency", metavar="EXTRA@RATE")
    parser.add_argument("--load-window", default="1s", metavar="DURATION")
    parser.add_argument("--body-size", type=int, default=3, help="bytes of a 200 answer's body")
    parser.add_argument("--route", nargs=2, action="append", default=[],
                        metavar=("PREFIX", "OPTIONS"), help="behaviour for a path prefix")
    parser.add_argument("--llm-ttft", default="50ms", help="time to first token")
    parser.add_argument("--llm-itl", default="10ms", help="delay between tokens")
    parser.add_argument("--llm-tokens", type=int, default=16, help="tokens per answer")
    parser.set_defaults(func=run)


def config_from_args(args):
    """The TargetConfig the parsed flags describe."""
    load = LoadLatency.parse(args.load_latency, args.load_window) if args.load_latency else None
    behaviour = Behaviour(
        latency=LatencySpec.parse(args.latency), error_rate=args.error_rate,
        error_status=args.error_status, reset_rate=args.reset_rate, hang_rate=args.hang_rate,
        malformed_rate=args.malformed_rate, stall_every_s=parse_duration(args.stall_every),
        stall_for_s=parse_duration(args.stall_for), load_latency=load, body_size=args.body_size)
    routes = tuple((prefix, parse_behaviour(options, behaviour)) for prefix, options in args.route)
    for prefix, _ in routes:
        if not prefix.startswith("/"):
            raise ConfigError(f"route prefix {prefix!r} must start with /")
    llm = LlmSpec(parse_duration(args.llm_ttft), parse_duration(args.llm_itl), args.llm_tokens)
    return TargetConfig(behaviour=behaviour, routes=routes, llm=llm, seed=args.seed,
                        workers=args.workers)


def _address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen wants HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def run(args):
    config = config_from_args(args)
    host, port = _address(args.listen)

    def ready(bound_host, bound_port):
        if args.port_file:
            with open(args.port_file + ".tmp", "w") as f:
                f.write(f"{bound_port}\n")
            os.replace(args.port_file + ".tmp", args.port_file)
        print(f"listening on {bound_host}:{bound_port}", flush=True)

    serve(config, host, port, ready)
    return 0


def register(subparsers):
    parser = subparsers.add_parser(
        "target", help="run the built-in HTTP target", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="loadgate target", epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LoadgateError as exc:
        print(f"loadgate target: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
