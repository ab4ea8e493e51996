"""Runs loadgate's in-process torch target on CUDA for a few seconds and prints its figures.

Run on a machine with an NVIDIA GPU and torch:  python tests/gpu/check_torch_target.py
[--seconds 5] [--rate 200] [--batch 32] [--device cuda].  It builds a small convolutional
network as TorchScript (in a temporary directory), runs it through a constant-rate schedule
with warm-up and per-batch synchronisation, prints the result (percentiles in ms, samples/s,
peak GPU memory) as JSON, and checks what only a GPU run can show.  Exits 1 without CUDA,
2 when a check fails.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

from loadgate.agent.inference.metrics import json_ready
from loadgate.agent.inference.torch_target import CallOutcome, TorchConfig, run_torch
from loadgate.native.schedule import ConstantRate


def _model(torch, path):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.jit.script(net.eval()).save(str(path))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=200.0, help="batches per second")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("CUDA is not available to torch", torch.__version__)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "convnet.pt"
        _model(torch, path)
        config = TorchConfig(str(path), ConstantRate(args.rate, args.seconds),
                             input_shapes=((1, 3, 224, 224),), batch=args.batch,
                             device=args.device, warmup=20)
        measurement = run_torch(config)
    result = json_ready(measurement.to_dict())
    for summary in result["metrics"].values():
        summary.pop("histogram")
    print(json.dumps(result, indent=2))
    figures = result["figures"]
    problems = []
    if measurement.outcomes.get(CallOutcome.OK, 0) != config.schedule.total_count():
        problems.append(f"not every batch completed: {result['requests']}")
    if not figures.get("peak_gpu_memory_bytes"):
        problems.append("no peak GPU memory reported")
    if not figures.get("device", "").startswith("cuda"):
        problems.append(f"ran on {figures.get('device')}")
    for problem in problems:
        print("CHECK FAILED:", problem)
    print(f"{figures.get('gpu_name')}: {figures['samples_per_s']:.0f} samples/s, "
          f"latency p50 {result['metrics']['latency_ms'].get('p50')} ms, "
          f"p99 {result['metrics']['latency_ms'].get('p99')} ms, "
          f"peak memory {figures.get('peak_gpu_memory_bytes', 0) / 2**20:.1f} MiB")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
