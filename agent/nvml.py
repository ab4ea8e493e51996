"""GPU telemetry through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

Every figure is read on its own: a function missing from an old driver
(NVML_ERROR_FUNCTION_NOT_FOUND) or a device that does not support it
(NVML_ERROR_NOT_SUPPORTED) degrades that one field, is remembered so it is not asked again,
and is reported in ``unavailable``.  Without NVML at all the layer still works: it has no
devices and ``unavailable_reason`` says why.

The NVML module is injected (``Nvml(module)``) so tests can hand in a faithful fake with the
same function names and error codes; ``LOADGATE_FAKE_NVML`` names such a fake for an agent
subprocess (see :func:`load_nvml_module`).
"""
import importlib.util
import os
from dataclasses import dataclass, field

from loadgate.agent import nvml_gpm
from loadgate.native.errors import ConfigError

FAKE_ENV = "LOADGATE_FAKE_NVML"

# Figures a driver may lack without anything else being wrong; asking again will not help.
# (INVALID_ARGUMENT is what several calls answer for a MIG device handle.)
_PERMANENT_CODES = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND",
                    "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
                    "NVML_ERROR_INVALID_ARGUMENT")
_INIT_REASONS = {
    "NVML_ERROR_LIBRARY_NOT_FOUND": "NVML library not found (no NVIDIA driver installed on this node)",
    "NVML_ERROR_DRIVER_NOT_LOADED": "the NVIDIA driver is not loaded",
    "NVML_ERROR_NO_PERMISSION": "no permission to open the NVIDIA devices",
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": "NVML library and kernel driver versions differ",
}


def load_nvml_module():
    """The NVML module to use: the fake named by LOADGATE_FAKE_NVML (a .py path), else pynvml.

    Returns ``(module, reason)``; module is None, with the reason, when nvidia-ml-py is absent.
    """
    fake = os.environ.get(FAKE_ENV)
    if fake:
        try:
            spec = importlib.util.spec_from_file_location("loadgate_fake_nvml", fake)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except (OSError, SyntaxError, AttributeError) as exc:
            raise ConfigError(f"{FAKE_ENV}={fake} is not a loadable NVML fake: {exc}") from None
        return module, ""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed"
    return pynvml, ""


@dataclass
class _Device:
    index: int
    handle: object
    uuid: str
    name: str
    is_mig: bool = False
    parent_index: int = 0
    # field name -> why NVML cannot give it; such fields are never asked for again
    missing: dict = field(default_factory=dict)
    gpm_previous: object = None
    memory_total_bytes: int = 0  # read once at open: Describe never calls NVML


class Nvml:
    """One NVML session: devices found at :meth:`open`, sampled by :meth:`sample`.

    Not thread-safe by itself; the telemetry sampler calls it from its one thread.
    """

    def __init__(self, module=None, reason=""):
        self.nvml = module
        self.unavailable_reason = reason
        self.driver_version = ""
        self.devices = []
        self._event_set = None
        self._xid_counts = {}

    # -- set-up ---------------------------------------------------------------------------

    def open(self):
        """Initialise NVML and enumerate GPUs and MIG devices; returns self, never raises."""
        if self.nvml is None:
            self.unavailable_reason = self.unavailable_reason or "NVML is not available"
            return self
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            self.unavailable_reason = self._init_reason(exc)
            self.nvml = None
            return self
        try:
            self.driver_version = self._text(self.nvml.nvmlSystemGetDriverVersion())
        except self.nvml.NVMLError:
            self.driver_version = ""
        try:
            count = self.nvml.nvmlDeviceGetCount()
        except self.nvml.NVMLError as exc:
            self.unavailable_reason = f"NVML could not count devices: {exc}"
            return self
        for index in range(count):
            self._add_gpu(index)
        for device in self.devices:
            device.memory_total_bytes = self._memory(device).get("memory_total_bytes", 0)
        if not self.devices:
            self.unavailable_reason = "NVML found no GPUs on this node"
        self._register_xid_events()
        return self

    def close(self):
        """Releases the event set and NVML itself; safe to call twice."""
        if self.nvml is None:
            return
        if self._event_set is not None:
            try:
                self.nvml.nvmlEventSetFree(self._event_set)
            except self.nvml.NVMLError:
                pass
            self._event_set = None
        for device in self.devices:
            nvml_gpm.release(self, device)
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass
        self.nvml = None

    @property
    def available(self):
        return self.nvml is not None and bool(self.devices)

    def _init_reason(self, exc):
        for code_name, reason in _INIT_REASONS.items():
            if exc.value == getattr(self.nvml, code_name, None):
                return reason
        return f"NVML failed to initialise: {exc}"

    @staticmethod
    def _text(value):
        return value.decode() if isinstance(value, bytes) else str(value)

    def _add_gpu(self, index):
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            device = _Device(index, handle, self._text(nvml.nvmlDeviceGetUUID(handle)),
                             self._text(nvml.nvmlDeviceGetName(handle)))
        except nvml.NVMLError:
            return
        self.devices.append(device)
        for mig_handle in self._mig_handles(device):
            try:
                self.devices.append(_Device(
                    index, mig_handle, self._text(nvml.nvmlDeviceGetUUID(mig_handle)),
                    self._text(nvml.nvmlDeviceGetName(mig_handle)), is_mig=True,
                    parent_index=index))
            except nvml.NVMLError:
                continue

    def _mig_handles(self, device):
        nvml = self.nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(device.handle)
            if current != nvml.NVML_DEVICE_MIG_ENABLE:
                return []
            slots = nvml.nvmlDeviceGetMaxMigDeviceCount(device.handle)
        except nvml.NVMLError:
            return []
        handles = []
        for slot in range(slots):
            try:
                handles.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(device.handle, slot))
            except nvml.NVMLError:
                continue  # an empty slot answers NOT_FOUND
        return handles

    def _register_xid_events(self):
        nvml = self.nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError:
            self._event_set = None
            return
        for device in self.devices:
            if device.is_mig:
                continue
            try:
                nvml.nvmlDeviceRegisterEvents(device.handle, nvml.nvmlEventTypeXidCriticalError,
                                              self._event_set)
                self._xid_counts[device.uuid] = 0
            except nvml.NVMLError as exc:
                device.missing["xid_errors"] = str(exc)

    # -- sampling -------------------------------------------------------------------------

    def describe(self):
        """One dict per physical GPU for NodeInfo: index, uuid, name, memory, MIG state.
        Answers from what ``open`` read, so any thread may call it."""
        gpus = []
        for device in self.devices:
            if device.is_mig:
                continue
            mig = [d for d in self.devices if d.is_mig and d.parent_index == device.index]
            gpus.append({"index": device.index, "uuid": device.uuid, "name": device.name,
                         "memory_total_bytes": device.memory_total_bytes,
                         "mig_enabled": bool(mig), "mig_devices": len(mig)})
        return gpus

    def sample(self):
        """One dict per GPU and MIG device, GpuSample's field names, plus ``available``."""
        if not self.available:
            return []
        self._drain_xid_events()
        return [self._sample_device(device) for device in self.devices]

    def unavailable(self):
        """``{uuid: {field: reason}}`` for every figure NVML cannot give."""
        result = {}
        for device in self.devices:
            missing = {}
            for name, reason in device.missing.items():
                for field_name in (name,) + _READ_TOGETHER.get(name, ()):
                    missing[field_name] = reason
            result[device.uuid] = missing
        return result

    def read(self, device, name, function, *args, **kwargs):
        """The NVML value, or None when field ``name`` cannot be read now; a permanent
        error (unsupported, missing function) is recorded and the field never asked again."""
        if name in device.missing:
            return None
        try:
            return function(*args, **kwargs)
        except self.nvml.NVMLError as exc:
            if self._is_permanent(exc):
                device.missing[name] = str(exc)
            return None
        except AttributeError as exc:
            # the installed bindings lack the function: the same as an old driver lacking it
            device.missing[name] = str(exc)
            return None

    def _is_permanent(self, exc):
        return any(exc.value == getattr(self.nvml, code, None) for code in _PERMANENT_CODES)

    def _sample_device(self, device):
        nvml = self.nvml
        out = {"index": device.index, "uuid": device.uuid, "name": device.name,
               "is_mig_device": device.is_mig, "parent_index": device.parent_index}
        rates = self.read(device, "utilization_percent", nvml.nvmlDeviceGetUtilizationRates,
                           device.handle)
        if rates is not None:
            out["utilization_percent"] = float(rates.gpu)
            out["memory_utilization_percent"] = float(rates.memory)
        out.update(self._memory(device))
        power = self.read(device, "power_milliwatts", nvml.nvmlDeviceGetPowerUsage, device.handle)
        if power is not None:
            out["power_milliwatts"] = int(power)
        energy = self.read(device, "energy_millijoules",
                            nvml.nvmlDeviceGetTotalEnergyConsumption, device.handle)
        if energy is not None:
            out["energy_millijoules"] = int(energy)
        temperature = self.read(device, "temperature_celsius", nvml.nvmlDeviceGetTemperature,
                                 device.handle, nvml.NVML_TEMPERATURE_GPU)
        if temperature is not None:
            out["temperature_celsius"] = int(temperature)
        for name, clock in (("sm_clock_mhz", nvml.NVML_CLOCK_SM),
                            ("memory_clock_mhz", nvml.NVML_CLOCK_MEM)):
            value = self.read(device, name, nvml.nvmlDeviceGetClockInfo, device.handle, clock)
            if value is not None:
                out[name] = int(value)
        reasons = self._clock_event_reasons(device)
        if reasons is not None:
            out["clock_event_reasons"] = int(reasons)
        for name, kind in (("ecc_corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                           ("ecc_uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
            value = self.read(device, name, nvml.nvmlDeviceGetTotalEccErrors, device.handle,
                               kind, nvml.NVML_VOLATILE_ECC)
            if value is not None:
                out[name] = int(value)
        if device.uuid in self._xid_counts:
            out["xid_errors"] = self._xid_counts[device.uuid]
        activity = nvml_gpm.sm_activity(self, device)
        if activity is not None:
            out["sm_activity_percent"] = activity
        processes = self.read(device, "processes", nvml.nvmlDeviceGetComputeRunningProcesses,
                               device.handle)
        if processes is not None:
            out["processes"] = [{"pid": int(p.pid), "used_memory_bytes": int(p.usedGpuMemory or 0)}
                                for p in processes]
        out["available"] = [name for name in _SAMPLE_FIELDS if name in out]
        return out

    def _memory(self, device):
        nvml = self.nvml
        if "memory_reserved_bytes" not in device.missing:
            info = self.read(device, "memory_reserved_bytes", nvml.nvmlDeviceGetMemoryInfo,
                              device.handle, version=nvml.nvmlMemory_v2)
            if info is not None:
                return {"memory_used_bytes": int(info.used), "memory_total_bytes": int(info.total),
                        "memory_reserved_bytes": int(info.reserved)}
        info = self.read(device, "memory_used_bytes", nvml.nvmlDeviceGetMemoryInfo, device.handle)
        if info is None:
            return {}
        return {"memory_used_bytes": int(info.used), "memory_total_bytes": int(info.total)}

    def _clock_event_reasons(self, device):
        # Drivers before 535 only have the older "throttle reasons" name of the same bitmask.
        nvml = self.nvml
        name = "clock_event_reasons"
        if name in device.missing:
            return None
        for function_name in ("nvmlDeviceGetCurrentClocksEventReasons",
                              "nvmlDeviceGetCurrentClocksThrottleReasons"):
            function = getattr(nvml, function_name, None)
            if function is None:
                continue
            try:
                return function(device.handle)
            except nvml.NVMLError as exc:
                if exc.value == nvml.NVML_ERROR_FUNCTION_NOT_FOUND:
                    continue
                if self._is_permanent(exc):
                    device.missing[name] = str(exc)
                return None
        device.missing[name] = "this driver has neither clock-event nor throttle reasons"
        return None

    def _drain_xid_events(self):
        # Waits 0 ms: only events already queued are counted, the sampler never blocks here.
        nvml = self.nvml
        if self._event_set is None:
            return
        for _ in range(1024):
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, 0)
            except nvml.NVMLError:
                return  # NVML_ERROR_TIMEOUT: nothing pending
            if data.eventType != nvml.nvmlEventTypeXidCriticalError:
                continue
            try:
                uuid = self._text(nvml.nvmlDeviceGetUUID(data.device))
            except nvml.NVMLError:
                continue
            if uuid in self._xid_counts:
                self._xid_counts[uuid] += 1


# Fields one NVML call gives together, filed under the first one's name when it fails.
_READ_TOGETHER = {
    "utilization_percent": ("memory_utilization_percent",),
    "memory_used_bytes": ("memory_total_bytes",),
}

_SAMPLE_FIELDS = (
    "utilization_percent", "memory_utilization_percent", "memory_used_bytes",
    "memory_total_bytes", "memory_reserved_bytes", "power_milliwatts", "energy_millijoules",
    "temperature_celsius", "sm_clock_mhz", "memory_clock_mhz", "clock_event_reasons",
    "ecc_corrected", "ecc_uncorrected", "xid_errors", "sm_activity_percent", "processes",
)


def open_nvml(module=None):
    """An opened :class:`Nvml` over ``module``, or over :func:`load_nvml_module`'s choice."""
    if module is None:
        module, reason = load_nvml_module()
    else:
        reason = ""
    return Nvml(module, reason).open()
