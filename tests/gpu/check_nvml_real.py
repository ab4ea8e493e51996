"""Samples the real NVML through loadgate's layer for a few seconds and prints every field.

Run on a machine with an NVIDIA GPU:  python tests/gpu/check_nvml_real.py [--seconds 5]
With torch installed (optional) it keeps the GPU busy meanwhile, so utilisation, power, SM
clocks, GPM SM activity and the process list have something to show.  Exits 1 when NVML is
unavailable, 2 when a field expected on every recent data-centre GPU is missing.
"""
import argparse
import json
import sys
import threading
import time

from loadgate.agent.nvml import open_nvml
from loadgate.agent.telemetry import TelemetrySampler

# Fields every driver of the last years gives on a data-centre GPU outside MIG.
EXPECTED = ("utilization_percent", "memory_used_bytes", "memory_total_bytes",
            "power_milliwatts", "energy_millijoules", "temperature_celsius", "sm_clock_mhz",
            "memory_clock_mhz", "clock_event_reasons")


def _busy_gpu(stop):
    try:
        import torch
    except ImportError:
        print("torch not installed: sampling an idle GPU")
        return
    if not torch.cuda.is_available():
        print("torch sees no CUDA device: sampling an idle GPU")
        return
    a = torch.randn(8192, 8192, device="cuda")
    while not stop.is_set():
        a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    nvml = open_nvml()
    print("driver:", nvml.driver_version or "-")
    if not nvml.available:
        print("NVML unavailable:", nvml.unavailable_reason)
        return 1
    print("devices:", json.dumps(nvml.describe(), indent=2))

    stop = threading.Event()
    load = threading.Thread(target=_busy_gpu, args=(stop,), daemon=True)
    load.start()
    sampler = TelemetrySampler(1.0, nvml).start()
    time.sleep(args.seconds)
    stop.set()
    samples = sampler.between(0, time.time_ns() + 1)
    for sample in samples:
        print(sample)
    last = samples[-1] if samples else sampler.sample_now()
    print("unavailable fields:", json.dumps(nvml.unavailable(), indent=2))
    status = 0
    for gpu in last.gpus:
        if gpu.is_mig_device:
            continue
        missing = [name for name in EXPECTED if name not in gpu.available]
        print(f"GPU {gpu.index} {gpu.name}: {len(gpu.available)} fields, missing expected: "
              f"{missing or 'none'}")
        if missing:
            status = 2
    sampler.close()
    load.join(timeout=10)
    return status


if __name__ == "__main__":
    sys.exit(main())
