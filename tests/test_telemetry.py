"""Host telemetry and the sampling thread (with the fake NVML for GPU figures)."""
import os
import time

from fake_nvml import FakeNvml
from loadgate.agent.nvml import Nvml
from loadgate.agent.telemetry import TelemetrySampler, telemetry_message
from loadgate.agent.telemetry_host import HostSampler
from loadgate.proto.loadgate.v1 import common_pb2

GPU = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-t", "memory_total": 80 << 30,
       "memory_used": 1 << 30, "utilization": 55, "power_mw": 300_000,
       "processes": [[123, 1 << 20]]}


def _meminfo_kib(key):
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def test_host_sample_agrees_with_proc():
    host = HostSampler()
    time.sleep(0.05)
    first = host.sample()
    assert first["cpu_count"] == os.cpu_count()
    assert first["memory_total_bytes"] == _meminfo_kib("MemTotal") * 1024
    assert 0 < first["memory_used_bytes"] < first["memory_total_bytes"]
    assert 0.0 <= first["cpu_percent"] <= 100.0
    assert first["load1"] == os.getloadavg()[0] or abs(first["load1"] - os.getloadavg()[0]) < 1
    # network counters are cumulative
    second = host.sample()
    assert second["net_rx_bytes"] >= first["net_rx_bytes"]
    assert second["net_tx_bytes"] >= first["net_tx_bytes"]


def test_cpu_percent_sees_a_busy_core():
    host = HostSampler()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        pass
    assert host.sample()["cpu_percent"] >= 100.0 / os.cpu_count() * 0.5


def test_telemetry_message_carries_every_gpu_field_and_processes():
    fake = FakeNvml({"devices": [GPU]})
    nvml = Nvml(fake).open()
    message = telemetry_message(42, HostSampler().sample(), nvml.sample(), "")
    assert message.unix_ns == 42 and message.host.cpu_count == os.cpu_count()
    gpu = message.gpus[0]
    assert (gpu.uuid, gpu.utilization_percent, gpu.power_milliwatts) == ("GPU-t", 55.0, 300_000)
    assert [(p.pid, p.used_memory_bytes) for p in gpu.processes] == [(123, 1 << 20)]
    assert "power_milliwatts" in gpu.available and "temperature_celsius" not in gpu.available
    # survives the wire
    assert common_pb2.TelemetrySample.FromString(message.SerializeToString()) == message


def test_sampler_thread_samples_at_its_rate_and_hands_out_windows():
    sampler = TelemetrySampler(0.05, Nvml(FakeNvml({"devices": [GPU]})).open()).start()
    try:
        begin = time.time_ns()
        time.sleep(0.6)
        middle = time.time_ns()
        time.sleep(0.3)
        end = time.time_ns()
        early = sampler.between(begin, middle)
        late = sampler.between(middle, end)
    finally:
        sampler.close()
    assert 5 <= len(early) <= 14
    assert 2 <= len(late) <= 8
    assert all(begin <= s.unix_ns < middle for s in early)
    assert all(middle <= s.unix_ns < end for s in late)
    assert all(s.gpus[0].uuid == "GPU-t" for s in early + late)
    assert sampler.gpu_unavailable_reason == ""


def test_sampler_without_nvml_says_why_in_every_sample():
    sampler = TelemetrySampler(1.0, Nvml(FakeNvml({"init_error": "NVML_ERROR_LIBRARY_NOT_FOUND"}))
                               .open())
    try:
        sample = sampler.sample_now()
    finally:
        sampler.close()
    assert not sample.gpus
    assert "library not found" in sample.gpu_unavailable_reason
    assert sampler.latest() is sample
