"""``loadgate infer``: open-loop load on inference targets, judged by percentile gates.

    loadgate infer llm URL --rate R --duration D --model M --prompt P --max-tokens N
    loadgate infer torch MODEL --rate R --duration D --batch B --input-shape 1,3,224,224
    loadgate infer grpc ADDR --method /inference.GRPCInferenceService/ModelInfer --payload F

Open loop by default (every latency from the request's intended start); ``--arrival closed
--concurrency N`` runs N request loops instead, labelled closed-loop in the result.
Each prints a summary, writes the full result (percentiles, encoded HDR histograms, gates)
with ``--json``, and exits 0 when every gate passes (or none is given), 1 when a gate fails
and 5 when a gate lacks the samples its percentile needs (INCONCLUSIVE).
"""
import argparse
import contextlib
import json
import sys

from loadgate.agent.inference.metrics import GateVerdict, json_ready, parse_gates
from loadgate.native.errors import ConfigError
from loadgate.native.schedule import make_schedule
from loadgate.native.target import parse_duration

EXIT_CODES = {GateVerdict.PASS: 0, GateVerdict.FAIL: 1, GateVerdict.INCONCLUSIVE: 5}
_SHOWN = ("p50", "p90", "p99", "max")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _add_common(parser):
    load = parser.add_argument_group("schedule")
    load.add_argument("--rate", type=float, help="arrivals per second (open loop)")
    load.add_argument("--duration", required=True, help="run length: 30s, 2m, or seconds")
    load.add_argument("--arrival", default="constant",
                      choices=("constant", "poisson", "ramp", "closed"),
                      help="arrival process, or closed for a fixed concurrency "
                      "(default %(default)s)")
    load.add_argument("--end-rate", type=float, help="final rate of a ramp")
    load.add_argument("--seed", type=int, help="seed of a Poisson schedule")
    load.add_argument("--concurrency", type=int, help="request loops of a closed loop")
    load.add_argument("--think-time", default="0", help="pause of a closed loop between "
                      "a response and the next request")
    load.add_argument("--spin-ms", type=float, default=0.5,
                      help="poll the event loop for this long before each send instant instead "
                      "of trusting its ~1 ms timer; 0 saves that CPU at up to ~1 ms of "
                      "schedule lag, which is measured and counted in latency either way "
                      "(default %(default)s)")
    out = parser.add_argument_group("result")
    out.add_argument("--gate", action="append", default=[], metavar="METRIC:pNN<=LIMIT",
                     help="a limit, e.g. latency_ms:p99<=50 or error_rate<=0.01 (repeatable)")
    out.add_argument("--json", metavar="FILE", help="write the full result here")
    out.add_argument("--hlog", metavar="FILE", help="write every metric's interval histograms "
                     "here, as an HdrHistogram log tagged by metric")
    out.add_argument("--interval", default="1s", help="interval of --hlog (default %(default)s)")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _schedule(args):
    if args.arrival != "closed" and args.rate is None:
        raise ConfigError(f"--arrival {args.arrival} needs --rate")
    return make_schedule(args.arrival, args.rate, parse_duration(args.duration), seed=args.seed,
                         end_rate=args.end_rate, concurrency=args.concurrency,
                         think_time_s=parse_duration(args.think_time))


@contextlib.contextmanager
def _interval_log(args, metrics):
    from loadgate.agent.inference.interval_log import IntervalLog

    if not args.hlog:
        yield None
        return
    interval_s = parse_duration(args.interval)
    if interval_s <= 0:
        raise ConfigError("--interval must be positive")
    try:
        handle = open(args.hlog, "w", encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"cannot write {args.hlog!r}: {exc.strerror}") from None
    with handle:
        yield IntervalLog(handle, metrics, interval_s)


def _spin_ns(args):
    if args.spin_ms < 0:
        raise ConfigError("--spin-ms must not be negative")
    return int(args.spin_ms * 1e6)


def _finish(args, measurement, gates):
    result = measurement.to_dict(gates)
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(json_ready(result), handle, indent=2)
                handle.write("\n")
        except OSError as exc:
            raise ConfigError(f"cannot write {args.json!r}: {exc.strerror}") from None
    if not args.quiet:
        _print_summary(result)
    if result["verdict"] is None:
        return 0
    return EXIT_CODES[GateVerdict(result["verdict"])]


def _print_summary(result, out=None):
    out = out or sys.stdout
    requests = result["requests"]
    print(f"{result['kind']} {result['target']}: {requests['completed']}/{requests['scheduled']}"
          f" completed, {result['figures']['requests_per_s']:.1f}/s", file=out)
    failed = {k: v for k, v in requests["outcomes"].items() if v and k != "ok"}
    if failed:
        print("  not ok: " + ", ".join(f"{k}={v}" for k, v in failed.items()), file=out)
    for name, summary in result["metrics"].items():
        if summary["count"]:
            shown = "  ".join(f"{k} {summary[k]:.3f}" for k in _SHOWN)
            print(f"  {name:<16} n={summary['count']:<7} {shown}", file=out)
    for gate in result["gates"]:
        observed = "n/a" if gate["observed"] is None else f"{gate['observed']:.3f}"
        print(f"  gate {gate['gate']}: {gate['verdict']} (observed {observed}, "
              f"{gate['samples']} samples)", file=out)
    if result["verdict"]:
        print(f"verdict: {result['verdict']}", file=out)


def run_llm_command(args):
    from loadgate.agent.inference.llm import FIGURES, METRICS, LlmConfig, run_llm
    from loadgate.agent.inference.llm_request import (
        LlmRequestSpec, api_key_header, load_prompts, parse_extra_body, parse_header,
    )

    if (args.prompt is None) == (args.prompts_file is None):
        raise ConfigError("give exactly one of --prompt and --prompts-file")
    prompts = (args.prompt,) if args.prompt is not None else load_prompts(args.prompts_file)
    headers = [parse_header(h) for h in args.header]
    if args.api_key_env:
        headers.append(api_key_header(args.api_key_env))
    spec = LlmRequestSpec(args.model, prompts, max_tokens=args.max_tokens,
                          include_usage=not args.no_usage, headers=tuple(headers),
                          extra_body=parse_extra_body(args.extra_body))
    gates = list(args.gate)
    if args.ttft_limit_ms is not None:
        gates.append(f"ttft_ms:p{args.gate_percentile:g}<={args.ttft_limit_ms:g}")
    if args.tpot_limit_ms is not None:
        gates.append(f"tpot_ms:p{args.gate_percentile:g}<={args.tpot_limit_ms:g}")
    gates = parse_gates(gates, METRICS, FIGURES)
    config = LlmConfig(args.url, _schedule(args), spec, timeout_s=args.timeout,
                       max_connections=args.max_connections, spin_ns=_spin_ns(args),
                       ca_file=args.cacert)
    with _interval_log(args, METRICS) as log:
        measurement = run_llm(config, log)
    return _finish(args, measurement, gates)


def run_torch_command(args):
    from loadgate.agent.inference.torch_target import (
        FIGURES, METRICS, TorchConfig, parse_shape, run_torch,
    )

    gates = parse_gates(args.gate, METRICS, FIGURES)
    shapes = tuple(parse_shape(s) for s in (args.input_shape or ["1,3,224,224"]))
    config = TorchConfig(args.model, _schedule(args), input_shapes=shapes, batch=args.batch,
                         dtype=args.dtype, device=args.device, warmup=args.warmup,
                         threads=args.threads, grace_s=args.grace)
    with _interval_log(args, METRICS) as log:
        measurement = run_torch(config, log)
    return _finish(args, measurement, gates)


def run_grpc_command(args):
    from loadgate.agent.inference.grpc_target import (
        FIGURES, METRICS, GrpcConfig, load_payload, run_grpc,
    )

    gates = parse_gates(args.gate, METRICS, FIGURES)
    from loadgate.agent.inference.llm_request import parse_header

    payload = load_payload(args.payload, args.method, args.payload_format, args.proto_module)
    metadata = tuple((k.lower(), v) for k, v in (parse_header(m) for m in args.metadata))
    config = GrpcConfig(args.address, args.method, payload, _schedule(args),
                        timeout_s=args.timeout, max_in_flight=args.max_in_flight,
                        channels=args.channels, metadata=metadata,
                        tls=args.tls or bool(args.cacert), ca_file=args.cacert,
                        spin_ns=_spin_ns(args))
    with _interval_log(args, METRICS) as log:
        measurement = run_grpc(config, log)
    return _finish(args, measurement, gates)


def register(subparsers):
    parser = subparsers.add_parser("infer", help="load inference targets: LLM streams, "
                                   "PyTorch models, gRPC (KServe v2)", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="infer_kind", metavar="KIND", required=True)

    llm = kinds.add_parser("llm", help="OpenAI-compatible streaming endpoint (SSE)")
    llm.add_argument("url", help="e.g. http://127.0.0.1:8000/v1/chat/completions")
    llm.add_argument("--model", required=True, help="the model name sent in each request")
    llm.add_argument("--prompt", help="the prompt of every request")
    llm.add_argument("--prompts-file", metavar="FILE",
                     help="prompts used in turn: one per line, text or JSON")
    llm.add_argument("--max-tokens", type=int, default=128)
    llm.add_argument("--no-usage", action="store_true",
                     help="do not ask for the usage chunk (servers that reject stream_options)")
    llm.add_argument("--extra-body", metavar="JSON", help='merged into every request body, '
                     'e.g. \'{"ignore_eos": true, "temperature": 0}\' for fixed-length answers')
    llm.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    llm.add_argument("--api-key-env", metavar="VAR", help="send $VAR as a bearer token")
    llm.add_argument("--timeout", type=_positive_float, default=60.0,
                     help="seconds a request may take after sending (default %(default)s)")
    llm.add_argument("--max-connections", type=int, default=256)
    llm.add_argument("--cacert", metavar="FILE", help="CA bundle for https (default: system)")
    llm.add_argument("--ttft-limit-ms", type=float, help="gate on time to first token")
    llm.add_argument("--tpot-limit-ms", type=float, help="gate on time per output token")
    llm.add_argument("--gate-percentile", type=float, default=99.0,
                     help="percentile of the TTFT/TPOT gates (default %(default)s, as MLPerf)")
    _add_common(llm)
    llm.set_defaults(func=run_llm_command)

    torch = kinds.add_parser("torch", help="in-process PyTorch model (needs the torch extra)")
    torch.add_argument("model", help="TorchScript .pt, torch.export .pt2, or module:function")
    torch.add_argument("--batch", type=int, default=1, help="batch size (first dimension)")
    torch.add_argument("--input-shape", action="append", metavar="D0,D1,...",
                       help="shape of an input, once per input (default 1,3,224,224)")
    torch.add_argument("--dtype", default="float32")
    torch.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    torch.add_argument("--warmup", type=int, default=5, help="batches run before measuring")
    torch.add_argument("--threads", type=int, help="torch intra-op threads")
    torch.add_argument("--grace", type=float, default=10.0,
                       help="seconds past the schedule's end that queued batches may still run")
    _add_common(torch)
    torch.set_defaults(func=run_torch_command)

    grpc = kinds.add_parser("grpc", help="unary gRPC method, e.g. KServe v2 ModelInfer")
    grpc.add_argument("address", help="HOST:PORT")
    grpc.add_argument("--method", default="/inference.GRPCInferenceService/ModelInfer")
    grpc.add_argument("--payload", required=True, metavar="FILE",
                      help="the request: protobuf binary, or JSON (.json)")
    grpc.add_argument("--payload-format", default="auto", choices=("auto", "binary", "json"))
    grpc.add_argument("--proto-module", action="append", default=[], metavar="MODULE",
                      help="generated _pb2 module defining the method (for JSON payloads)")
    grpc.add_argument("--metadata", action="append", default=[], metavar="KEY:VALUE")
    grpc.add_argument("--timeout", type=_positive_float, default=10.0, help="per call deadline")
    grpc.add_argument("--max-in-flight", type=int, default=1024)
    grpc.add_argument("--channels", type=int, default=1, help="HTTP/2 connections")
    grpc.add_argument("--tls", action="store_true")
    grpc.add_argument("--cacert", metavar="FILE", help="root certificates for TLS (implies --tls)")
    _add_common(grpc)
    grpc.set_defaults(func=run_grpc_command)

