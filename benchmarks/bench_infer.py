"""The inference clients against real peers on this machine, in one run.

1. LLM streaming: ``loadgate target``'s OpenAI emulation (its own process) with a fixed time
   to first token and inter-token delay, loaded at rising rates.  The configured delays are
   the ground truth: printed are achieved / intended rate, measured / configured TTFT (p50,
   p99), ITL and TPOT (p50), and the client's CPU per 1000 streamed tokens; the highest rate
   runs twice, with and without the poll before each send instant (``spin_ms``).
2. gRPC unary: a grpc.aio KServe v2 echo server (its own process) at rising rates: achieved /
   intended, schedule lag p99, the client's CPU per call, and loadgate's service time p50 at
   the lowest rate over that of a bare back-to-back grpc client (the cost loadgate adds).
3. torch: a small model on the CPU: loadgate's service time p50 over a bare loop's time per
   call on the same model and input (the cost of the harness around each call).

Nothing asserts; ``--json`` keeps the figures.

    python benchmarks/bench_infer.py [--duration 3] [--json out.json] [--skip torch]
"""
import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time

from loadgate.agent.inference.grpc_target import KSERVE_INFER, GrpcConfig, run_grpc
from loadgate.agent.inference.llm import LlmConfig, run_llm
from loadgate.agent.inference.llm_request import LlmRequestSpec
from loadgate.agent.inference.pacing import SPIN_NS
from loadgate.native.schedule import ConstantRate
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import kserve_v2_pb2 as kserve

TTFT_MS, ITL_MS, TOKENS = 50, 10, 32


def _cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _p(hist, pct):
    return hist.value_at_percentile(pct) / 1000.0


def bench_llm(duration, rates, spin_ns=SPIN_NS):
    proc, host, port = start_target_process(
        ["--llm-ttft", f"{TTFT_MS}ms", "--llm-itl", f"{ITL_MS}ms", "--llm-tokens", str(TOKENS)])
    rows = []
    try:
        url = f"http://{host}:{port}/v1/chat/completions"
        for rate in rates:
            cpu = _cpu_s()
            m = run_llm(LlmConfig(url, ConstantRate(rate, duration),
                                  LlmRequestSpec("bench", ("hello",), max_tokens=TOKENS),
                                  spin_ns=spin_ns))
            cpu = _cpu_s() - cpu
            h = m.histograms
            rows.append({
                "rate": rate,
                "spin_ms": spin_ns / 1e6,
                "achieved_over_intended": m.completed / (rate * duration),
                "ttft_p50_over_configured": _p(h["ttft_ms"], 50) / TTFT_MS,
                "ttft_p99_over_configured": _p(h["ttft_ms"], 99) / TTFT_MS,
                "itl_p50_over_configured": _p(h["itl_ms"], 50) / ITL_MS,
                "tpot_p50_over_configured": _p(h["tpot_ms"], 50) / ITL_MS,
                "schedule_lag_p99_ms": _p(h["schedule_lag_ms"], 99),
                "client_cpu_ms_per_1000_tokens": 1e6 * cpu / max(1, m.figures["output_tokens"]),
            })
    finally:
        stop_target_process(proc)
    return rows


async def _serve_kserve():
    import grpc

    from loadgate.proto.loadgate.v1 import kserve_v2_pb2_grpc as kserve_grpc

    class Echo(kserve_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            response = kserve.ModelInferResponse(model_name=request.model_name, id=request.id)
            response.raw_output_contents.extend(request.raw_input_contents)
            return response

    server = grpc.aio.server()
    kserve_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


def _bare_grpc_call_s(address, payload, calls):
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(KSERVE_INFER)
        for _ in range(50):
            call(payload)
        times = []
        for _ in range(calls):
            began = time.perf_counter()
            call(payload)
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def bench_grpc(duration, rates):
    proc = subprocess.Popen([sys.executable, __file__, "--serve-kserve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        address = f"127.0.0.1:{proc.stdout.readline().strip()}"
        request = kserve.ModelInferRequest(model_name="echo")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 256])
        request.raw_input_contents.append(bytes(1024))
        payload = request.SerializeToString()
        bare_s = _bare_grpc_call_s(address, payload, 500)
        for rate in rates:
            cpu = _cpu_s()
            m = run_grpc(GrpcConfig(address, KSERVE_INFER, payload, ConstantRate(rate, duration)))
            cpu = _cpu_s() - cpu
            h = m.histograms
            rows.append({
                "rate": rate,
                "achieved_over_intended": m.completed / (rate * duration),
                "latency_p50_ms": _p(h["latency_ms"], 50),
                "latency_p99_ms": _p(h["latency_ms"], 99),
                "schedule_lag_p99_ms": _p(h["schedule_lag_ms"], 99),
                "client_cpu_us_per_call": 1e6 * cpu / max(1, m.completed),
                "service_p50_over_bare_call": _p(h["service_time_ms"], 50) / (bare_s * 1e3),
            })
    finally:
        proc.stdin.close()
        proc.wait(10)
    return {"bare_call_p50_ms": bare_s * 1e3, "rates": rows}


def bench_torch(duration):
    import torch

    from loadgate.agent.inference.torch_target import TorchConfig, run_torch

    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(16, 10)).eval()
    sys.modules[__name__].BENCH_NET = net
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        for _ in range(20):
            net(x)
        times = []
        for _ in range(300):
            began = time.perf_counter_ns()
            net(x)
            times.append(time.perf_counter_ns() - began)
    bare_us = statistics.median(times) / 1e3
    rate = min(500.0, 0.5e6 / bare_us)
    m = run_torch(TorchConfig(f"{__name__}:BENCH_NET", ConstantRate(rate, duration),
                              input_shapes=((1, 3, 32, 32),), batch=8, threads=1, warmup=20))
    service_us = _p(m.histograms["service_time_ms"], 50) * 1e3
    return {"bare_call_p50_us": bare_us, "rate": rate,
            "service_p50_us": service_us, "service_p50_over_bare_call": service_us / bare_us,
            "latency_p99_ms": _p(m.histograms["latency_ms"], 99),
            "samples_per_s": m.figures["samples_per_s"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--llm-rates", default="10,50,100,200")
    parser.add_argument("--grpc-rates", default="200,1000,2000")
    parser.add_argument("--skip", action="append", default=[], choices=("llm", "grpc", "torch"))
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--serve-kserve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_kserve:
        asyncio.run(_serve_kserve())
        return 0
    results = {}
    if "llm" not in args.skip:
        rates = [float(r) for r in args.llm_rates.split(",")]
        # The highest rate again without the pre-send poll: its CPU cost against its precision.
        results["llm"] = bench_llm(args.duration, rates) + bench_llm(args.duration, rates[-1:], 0)
        print(f"LLM stream (TTFT {TTFT_MS} ms, ITL {ITL_MS} ms, {TOKENS} tokens):")
        for row in results["llm"]:
            print("  " + "  ".join(f"{k}={v:.3f}" for k, v in row.items()))
    if "grpc" not in args.skip:
        results["grpc"] = bench_grpc(args.duration, [float(r) for r in args.grpc_rates.split(",")])
        print(f"gRPC ModelInfer (bare call p50 {results['grpc']['bare_call_p50_ms']:.3f} ms):")
        for row in results["grpc"]["rates"]:
            print("  " + "  ".join(f"{k}={v:.3f}" for k, v in row.items()))
    if "torch" not in args.skip:
        results["torch"] = bench_torch(args.duration)
        print("torch: " + "  ".join(f"{k}={v:.3f}" for k, v in results["torch"].items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
