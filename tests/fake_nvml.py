"""A faithful fake of the ``pynvml`` module (nvidia-ml-py) for machines without a GPU.

It exposes the functions loadgate's NVML layer calls, under pynvml's names and signatures,
raising pynvml's own ``NVMLError`` subclasses with pynvml's codes, and re-exports pynvml's
constants and structs.  Its behaviour comes from a spec (a dict, JSON on the wire):

    {"init_error": "NVML_ERROR_LIBRARY_NOT_FOUND",         # nvmlInit fails with this code
     "driver_version": "550.54.15",
     "missing_functions": ["nvmlDeviceGetMemoryInfo_v2"],  # C symbols an old driver lacks
     "devices": [{"name": ..., "uuid": ..., "memory_total": ..., "memory_used": ...,
                  "memory_reserved": ..., "utilization": ..., "memory_utilization": ...,
                  "power_mw": ..., "energy_mj": ..., "temperature": ..., "sm_clock": ...,
                  "memory_clock": ..., "clock_event_reasons": ..., "ecc_corrected": ...,
                  "ecc_uncorrected": ..., "processes": [[pid, bytes], ...], "gpm": true,
                  "sm_activity": ..., "xid_events": [79, ...],
                  "errors": {"nvmlDeviceGetPowerUsage": "NVML_ERROR_NOT_SUPPORTED"},
                  "mig": [{"name": ..., "uuid": ..., "memory_total": ..., "memory_used": ...}]}]}

Used in-process as ``FakeNvml(spec)``, or by an agent subprocess through
``LOADGATE_FAKE_NVML=<this file>`` with the spec in ``LOADGATE_FAKE_NVML_SPEC`` (JSON text or
a path to a JSON file); the module then behaves like ``pynvml`` itself.
"""
import ctypes
import json
import os
import time
from types import SimpleNamespace

import pynvml

SPEC_ENV = "LOADGATE_FAKE_NVML_SPEC"

# Real NVML energy counters grow with time; the fake's grow by this much per call.
_ENERGY_STEP_MJ = 1500


class _Handle:
    """An opaque device handle, as pynvml's c_nvmlDevice_t is to its callers."""

    def __init__(self, spec, parent=None):
        self.spec = spec
        self.parent = parent
        self.mig = [_Handle(m, self) for m in spec.get("mig", ())]
        self.energy = int(spec.get("energy_mj", 0))
        self.pending_xids = list(spec.get("xid_events", ()))


class FakeNvml:
    """The pynvml surface loadgate uses, backed by a spec; attributes fall back to pynvml's
    constants and types so code written against pynvml reads the same names."""

    def __init__(self, spec):
        self._spec = spec
        self._initialised = 0
        self._devices = [_Handle(d) for d in spec.get("devices", ())]
        self._event_sets = {}
        self._gpm_samples = {}
        self.calls = []

    def __getattr__(self, name):
        value = getattr(pynvml, name)
        if callable(value) and name.startswith("nvml") and not name.startswith("nvmlEventType") \
                and not isinstance(value, type):
            raise AttributeError(f"the fake NVML does not implement {name}")
        return value

    NVMLError = pynvml.NVMLError

    # -- plumbing that mirrors pynvml's own checks ----------------------------------------

    def _call(self, symbol, handle=None):
        self.calls.append(symbol)
        if not self._initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if symbol in self._spec.get("missing_functions", ()):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if handle is not None:
            code = handle.spec.get("errors", {}).get(symbol)
            if code:
                raise pynvml.NVMLError(getattr(pynvml, code))
        return handle.spec if handle is not None else None

    @staticmethod
    def _field(spec, key):
        if key not in spec:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return spec[key]

    # -- library ----------------------------------------------------------------------------

    def nvmlInit(self):
        self.calls.append("nvmlInit")
        code = self._spec.get("init_error")
        if code:
            raise pynvml.NVMLError(getattr(pynvml, code))
        self._initialised += 1

    def nvmlShutdown(self):
        self._call("nvmlShutdown")
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self):
        self._call("nvmlSystemGetDriverVersion")
        return self._spec.get("driver_version", "550.54.15")

    def nvmlDeviceGetCount(self):
        self._call("nvmlDeviceGetCount_v2")
        return len(self._devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._call("nvmlDeviceGetHandleByIndex_v2")
        if not 0 <= index < len(self._devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._devices[index]

    def nvmlDeviceGetUUID(self, handle):
        return self._call("nvmlDeviceGetUUID", handle)["uuid"]

    def nvmlDeviceGetName(self, handle):
        return self._call("nvmlDeviceGetName", handle)["name"]

    # -- MIG --------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle):
        spec = self._call("nvmlDeviceGetMigMode", handle)
        if "mig" not in spec:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if spec["mig"] else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        self._call("nvmlDeviceGetMaxMigDeviceCount", handle)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index):
        self._call("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if index >= len(handle.mig):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return handle.mig[index]

    # -- figures ----------------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle):
        spec = self._call("nvmlDeviceGetUtilizationRates", handle)
        if handle.parent is not None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=self._field(spec, "utilization"),
                               memory=spec.get("memory_utilization", 0))

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        spec = self._call("nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo",
                          handle)
        if version and version != pynvml.nvmlMemory_v2:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        total, used = spec["memory_total"], spec.get("memory_used", 0)
        info = SimpleNamespace(total=total, used=used, free=total - used)
        if version:
            info.version = version
            info.reserved = spec.get("memory_reserved", 0)
        return info

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._field(self._call("nvmlDeviceGetPowerUsage", handle), "power_mw")

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        spec = self._call("nvmlDeviceGetTotalEnergyConsumption", handle)
        self._field(spec, "energy_mj")
        handle.energy += _ENERGY_STEP_MJ
        return handle.energy

    def nvmlDeviceGetTemperature(self, handle, sensor):
        spec = self._call("nvmlDeviceGetTemperature", handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._field(spec, "temperature")

    def nvmlDeviceGetClockInfo(self, handle, clock_type):
        spec = self._call("nvmlDeviceGetClockInfo", handle)
        keys = {pynvml.NVML_CLOCK_SM: "sm_clock", pynvml.NVML_CLOCK_MEM: "memory_clock"}
        if clock_type not in keys:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._field(spec, keys[clock_type])

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        spec = self._call("nvmlDeviceGetCurrentClocksEventReasons", handle)
        return self._field(spec, "clock_event_reasons")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        spec = self._call("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return self._field(spec, "clock_event_reasons")

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter_type):
        spec = self._call("nvmlDeviceGetTotalEccErrors", handle)
        if counter_type != pynvml.NVML_VOLATILE_ECC and counter_type != pynvml.NVML_AGGREGATE_ECC:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        key = ("ecc_corrected" if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
               else "ecc_uncorrected")
        return self._field(spec, key)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        spec = self._call("nvmlDeviceGetComputeRunningProcesses_v3", handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF,
                                computeInstanceId=0xFFFFFFFF)
                for pid, used in spec.get("processes", ())]

    # -- XID events -------------------------------------------------------------------------

    def nvmlEventSetCreate(self):
        self._call("nvmlEventSetCreate")
        event_set = object()
        self._event_sets[id(event_set)] = []
        return event_set

    def nvmlDeviceRegisterEvents(self, handle, event_types, event_set):
        self._call("nvmlDeviceRegisterEvents", handle)
        if event_types & pynvml.nvmlEventTypeXidCriticalError:
            self._event_sets[id(event_set)].append(handle)

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        self._call("nvmlEventSetWait_v2")
        for handle in self._event_sets[id(event_set)]:
            if handle.pending_xids:
                return SimpleNamespace(device=handle, eventType=pynvml.nvmlEventTypeXidCriticalError,
                                       eventData=handle.pending_xids.pop(0),
                                       gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
        if timeout_ms:
            time.sleep(timeout_ms / 1000.0)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set):
        self._call("nvmlEventSetFree")
        self._event_sets.pop(id(event_set), None)

    def inject_xid(self, index, xid):
        """Queues an XID critical error on GPU ``index``, as the driver would."""
        self._devices[index].pending_xids.append(xid)

    # -- GPM --------------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle):
        spec = self._call("nvmlGpmQueryDeviceSupport", handle)
        return SimpleNamespace(version=pynvml.NVML_GPM_SUPPORT_VERSION,
                               isSupportedDevice=int(bool(spec.get("gpm"))))

    def nvmlGpmSampleAlloc(self):
        # A real (opaque) sample pointer, so it fits c_nvmlGpmMetricsGet_t as NVML's does.
        self._call("nvmlGpmSampleAlloc")
        buffer = ctypes.create_string_buffer(16)
        sample = ctypes.cast(buffer, pynvml.c_nvmlGpmSample_t)
        self._gpm_samples[ctypes.addressof(buffer)] = [buffer, None]
        return sample

    def nvmlGpmSampleGet(self, handle, sample):
        self._call("nvmlGpmSampleGet", handle)
        self._gpm_sample(sample)[1] = handle
        return sample

    def nvmlGpmSampleFree(self, sample):
        self._call("nvmlGpmSampleFree")
        self._gpm_samples.pop(ctypes.cast(sample, ctypes.c_void_p).value)

    def _gpm_sample(self, sample):
        entry = self._gpm_samples.get(ctypes.cast(sample, ctypes.c_void_p).value)
        if entry is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return entry

    def nvmlGpmMetricsGet(self, metrics_get):
        self._call("nvmlGpmMetricsGet")
        if metrics_get.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        first = self._gpm_sample(metrics_get.sample1)[1]
        second = self._gpm_sample(metrics_get.sample2)[1]
        if first is None or first is not second:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        for i in range(metrics_get.numMetrics):
            metric = metrics_get.metrics[i]
            if metric.metricId != pynvml.NVML_GPM_METRIC_SM_UTIL:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            metric.value = float(second.spec.get("sm_activity", 0.0))
        return metrics_get


def _load_env_spec():
    text = os.environ.get(SPEC_ENV, "")
    if not text:
        return {"devices": []}
    if text.lstrip().startswith("{"):
        return json.loads(text)
    with open(text) as handle:
        return json.load(handle)


_default = None


def __getattr__(name):
    # Module-level use (LOADGATE_FAKE_NVML): behave like pynvml, backed by the env spec.
    global _default
    if _default is None:
        _default = FakeNvml(_load_env_spec())
    return getattr(_default, name)
