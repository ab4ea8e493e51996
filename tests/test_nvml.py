"""The NVML layer against a faithful fake (errors included) and against the real library."""
import ast
import inspect

import pynvml
import pytest

import fake_nvml
from fake_nvml import FakeNvml
from loadgate.agent import nvml as nvml_layer
from loadgate.agent import nvml_gpm
from loadgate.agent.nvml import Nvml, load_nvml_module, open_nvml

GIB = 1 << 30


def h100(**overrides):
    device = {
        "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-0000-h100", "memory_total": 80 * GIB,
        "memory_used": 3 * GIB, "memory_reserved": GIB // 2, "utilization": 87,
        "memory_utilization": 41, "power_mw": 612_000, "energy_mj": 10_000, "temperature": 64,
        "sm_clock": 1980, "memory_clock": 2619,
        "clock_event_reasons": pynvml.nvmlClocksEventReasonSwPowerCap, "ecc_corrected": 3,
        "ecc_uncorrected": 0, "processes": [[4242, 2 * GIB], [4343, None]], "gpm": True,
        "sm_activity": 73.5,
    }
    device.update(overrides)
    return device


def opened(spec):
    fake = FakeNvml(spec)
    return fake, Nvml(fake).open()


def test_every_field_of_a_healthy_gpu_is_read():
    fake, nvml = opened({"driver_version": "550.54.15", "devices": [h100()]})
    assert nvml.available and nvml.unavailable_reason == ""
    assert nvml.driver_version == "550.54.15"
    assert nvml.describe() == [{"index": 0, "uuid": "GPU-0000-h100",
                                "name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 80 * GIB,
                                "mig_enabled": False, "mig_devices": 0}]
    first = nvml.sample()[0]
    second = nvml.sample()[0]
    assert "sm_activity_percent" not in first  # GPM needs two samples
    assert second["sm_activity_percent"] == 73.5
    assert second["utilization_percent"] == 87.0
    assert second["memory_utilization_percent"] == 41.0
    assert second["memory_used_bytes"] == 3 * GIB
    assert second["memory_total_bytes"] == 80 * GIB
    assert second["memory_reserved_bytes"] == GIB // 2
    assert second["power_milliwatts"] == 612_000
    assert second["energy_millijoules"] > first["energy_millijoules"] > 10_000
    assert second["temperature_celsius"] == 64
    assert (second["sm_clock_mhz"], second["memory_clock_mhz"]) == (1980, 2619)
    assert second["clock_event_reasons"] == pynvml.nvmlClocksEventReasonSwPowerCap
    assert (second["ecc_corrected"], second["ecc_uncorrected"]) == (3, 0)
    assert second["xid_errors"] == 0
    assert second["processes"] == [{"pid": 4242, "used_memory_bytes": 2 * GIB},
                                   {"pid": 4343, "used_memory_bytes": 0}]
    assert set(second["available"]) == set(nvml_layer._SAMPLE_FIELDS)
    assert nvml.unavailable() == {"GPU-0000-h100": {}}
    nvml.close()
    assert fake._initialised == 0


def test_library_not_found_at_init_leaves_no_devices_and_says_why():
    _, nvml = opened({"init_error": "NVML_ERROR_LIBRARY_NOT_FOUND"})
    assert not nvml.available
    assert "library not found" in nvml.unavailable_reason
    assert nvml.sample() == [] and nvml.describe() == []
    nvml.close()


def test_driver_not_loaded_reason():
    _, nvml = opened({"init_error": "NVML_ERROR_DRIVER_NOT_LOADED"})
    assert nvml.unavailable_reason == "the NVIDIA driver is not loaded"


def test_no_gpus_is_a_reason_too():
    _, nvml = opened({"devices": []})
    assert not nvml.available and "no GPUs" in nvml.unavailable_reason


@pytest.mark.parametrize("symbol, fields", [
    ("nvmlDeviceGetPowerUsage", {"power_milliwatts"}),
    ("nvmlDeviceGetTotalEnergyConsumption", {"energy_millijoules"}),
    ("nvmlDeviceGetTemperature", {"temperature_celsius"}),
    ("nvmlDeviceGetUtilizationRates", {"utilization_percent", "memory_utilization_percent"}),
    ("nvmlDeviceGetTotalEccErrors", {"ecc_corrected", "ecc_uncorrected"}),
    ("nvmlDeviceGetComputeRunningProcesses_v3", {"processes"}),
    ("nvmlDeviceGetClockInfo", {"sm_clock_mhz", "memory_clock_mhz"}),
    ("nvmlGpmQueryDeviceSupport", {"sm_activity_percent"}),
])
@pytest.mark.parametrize("code", ["NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND"])
def test_an_unsupported_or_missing_function_degrades_only_its_fields(symbol, fields, code):
    fake, nvml = opened({"devices": [h100(errors={symbol: code})]})
    nvml.sample()
    calls_before = fake.calls.count(symbol)
    sample = nvml.sample()[0]
    assert set(nvml_layer._SAMPLE_FIELDS) - set(sample["available"]) == fields
    for name in fields:
        assert name not in sample
    assert set(nvml.unavailable()["GPU-0000-h100"]) == fields
    # a permanent error is not asked again on every sample
    assert fake.calls.count(symbol) == calls_before


def test_a_transient_error_skips_one_sample_only():
    fake, nvml = opened({"devices": [h100(errors={"nvmlDeviceGetPowerUsage": "NVML_ERROR_UNKNOWN"})]})
    assert "power_milliwatts" not in nvml.sample()[0]
    assert nvml.unavailable()["GPU-0000-h100"] == {}
    fake._devices[0].spec["errors"] = {}
    assert nvml.sample()[0]["power_milliwatts"] == 612_000


def test_old_driver_without_memory_info_v2_falls_back_to_v1():
    _, nvml = opened({"missing_functions": ["nvmlDeviceGetMemoryInfo_v2"], "devices": [h100()]})
    sample = nvml.sample()[0]
    assert sample["memory_used_bytes"] == 3 * GIB and sample["memory_total_bytes"] == 80 * GIB
    assert "memory_reserved_bytes" not in sample["available"]
    assert "memory_reserved_bytes" in nvml.unavailable()["GPU-0000-h100"]


def test_old_driver_without_clock_event_reasons_uses_throttle_reasons():
    fake, nvml = opened({"missing_functions": ["nvmlDeviceGetCurrentClocksEventReasons"],
                         "devices": [h100(clock_event_reasons=0x4)]})
    assert nvml.sample()[0]["clock_event_reasons"] == 0x4
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" in fake.calls


def test_neither_clock_reason_function_degrades_that_field():
    _, nvml = opened({"missing_functions": ["nvmlDeviceGetCurrentClocksEventReasons",
                                            "nvmlDeviceGetCurrentClocksThrottleReasons"],
                      "devices": [h100()]})
    sample = nvml.sample()[0]
    assert "clock_event_reasons" not in sample
    assert sample["temperature_celsius"] == 64


def test_xid_events_are_counted_per_gpu():
    second = h100(uuid="GPU-0001-h100", xid_events=[79])
    fake, nvml = opened({"devices": [h100(xid_events=[13, 48]), second]})
    samples = nvml.sample()
    assert [s["xid_errors"] for s in samples] == [2, 1]
    fake.inject_xid(1, 94)
    assert [s["xid_errors"] for s in nvml.sample()] == [2, 2]


def test_xid_registration_not_supported_degrades_xid_only():
    _, nvml = opened({"devices": [h100(errors={"nvmlDeviceRegisterEvents":
                                               "NVML_ERROR_NOT_SUPPORTED"})]})
    sample = nvml.sample()[0]
    assert "xid_errors" not in sample and sample["power_milliwatts"] == 612_000


def test_gpm_unsupported_device_has_no_sm_activity():
    _, nvml = opened({"devices": [h100(gpm=False)]})
    nvml.sample()
    sample = nvml.sample()[0]
    assert "sm_activity_percent" not in sample
    assert nvml.unavailable()["GPU-0000-h100"]["sm_activity_percent"] == \
        "GPM is not supported on this GPU"


def test_mig_devices_are_sampled_under_their_parent():
    mig = [{"name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "uuid": "MIG-a", "memory_total": 10 * GIB,
            "memory_used": GIB, "processes": [[77, GIB]]},
           {"name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "uuid": "MIG-b", "memory_total": 10 * GIB}]
    _, nvml = opened({"devices": [h100(mig=mig)]})
    assert nvml.describe()[0]["mig_enabled"] and nvml.describe()[0]["mig_devices"] == 2
    samples = nvml.sample()
    assert [s["uuid"] for s in samples] == ["GPU-0000-h100", "MIG-a", "MIG-b"]
    first_mig = samples[1]
    assert first_mig["is_mig_device"] and first_mig["parent_index"] == 0
    assert first_mig["memory_used_bytes"] == GIB
    assert first_mig["processes"] == [{"pid": 77, "used_memory_bytes": GIB}]
    assert "utilization_percent" not in first_mig  # NVML does not give it per MIG device


def test_real_library_on_this_machine_says_why_when_absent():
    nvml = open_nvml(pynvml)
    try:
        if nvml.available:
            assert nvml.describe() and all(s["available"] for s in nvml.sample())
        else:
            assert nvml.unavailable_reason
    finally:
        nvml.close()


def test_missing_bindings_package_is_a_reason(monkeypatch):
    monkeypatch.delenv("LOADGATE_FAKE_NVML", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    module, reason = load_nvml_module()
    assert module is None and "not installed" in reason
    nvml = Nvml(module, reason).open()
    assert not nvml.available and nvml.unavailable_reason == reason


def test_fake_named_by_environment_is_loaded(monkeypatch):
    monkeypatch.setenv("LOADGATE_FAKE_NVML", fake_nvml.__file__)
    monkeypatch.setenv("LOADGATE_FAKE_NVML_SPEC", '{"devices": [{"name": "G", "uuid": "GPU-e",'
                                                  ' "memory_total": 1024, "utilization": 5}]}')
    nvml = open_nvml()
    assert [d["uuid"] for d in nvml.describe()] == ["GPU-e"]
    assert nvml.sample()[0]["utilization_percent"] == 5.0
    nvml.close()


def _nvml_names_used(source):
    # Every NVML function, constant or struct the layer names: attributes of the module object
    # (however reached) and function names passed around as strings.
    prefixes = ("nvml", "NVML_", "c_nvml")
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith(prefixes) \
                and node.attr not in ("nvml",):
            names.add(node.attr)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith(prefixes) and node.value.isidentifier():
            names.add(node.value)
    return names


def test_every_nvml_name_the_layer_uses_exists_in_the_installed_bindings():
    used = _nvml_names_used(inspect.getsource(nvml_layer) + inspect.getsource(nvml_gpm))
    assert len(used) > 30
    missing = sorted(name for name in used if not hasattr(pynvml, name))
    assert missing == []
    for name in used:
        if name.startswith("nvml") and callable(getattr(pynvml, name)) \
                and not isinstance(getattr(pynvml, name), type) \
                and not name.startswith("nvmlEventType") and not name.startswith("nvmlMemory"):
            # the fake mirrors pynvml's signature, so calls the layer makes fit both
            real = inspect.signature(getattr(pynvml, name))
            fake = inspect.signature(getattr(FakeNvml({}), name))
            assert len(fake.parameters) == len(real.parameters), name


def test_the_fake_refuses_functions_it_does_not_implement():
    with pytest.raises(AttributeError):
        FakeNvml({}).nvmlDeviceSetMigMode
    assert FakeNvml({}).NVML_ERROR_NOT_SUPPORTED == pynvml.NVML_ERROR_NOT_SUPPORTED


def test_fake_calls_before_init_fail_like_nvml():
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        FakeNvml({"devices": [h100()]}).nvmlDeviceGetCount()


def test_a_fake_that_cannot_be_loaded_is_a_config_error(monkeypatch, tmp_path):
    from loadgate.native.errors import ConfigError

    monkeypatch.setenv("LOADGATE_FAKE_NVML", str(tmp_path / "missing.py"))
    with pytest.raises(ConfigError, match="not a loadable NVML fake"):
        load_nvml_module()
