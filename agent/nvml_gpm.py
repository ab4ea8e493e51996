"""GPM (GPU Performance Monitoring, Hopper and later): SM activity between two samples.

GPM metrics are differences of two device samples, so the first call for a device only
takes a sample.  MIG devices would need nvmlGpmMigSampleGet with their GPU-instance id,
which NVML does not hand out cheaply; they are reported as lacking the figure.
"""
FIELD = "sm_activity_percent"


def sm_activity(layer, device):
    """SM activity (0..100) since the previous call for ``device``, or None (first call, MIG,
    unsupported).  Called by Nvml.sample only, on the telemetry thread."""
    nvml = layer.nvml
    if device.is_mig:
        device.missing.setdefault(FIELD, "GPM is sampled on the parent GPU only")
        return None
    if FIELD in device.missing:
        return None
    if device.gpm_previous is None:
        support = layer.read(device, FIELD, nvml.nvmlGpmQueryDeviceSupport, device.handle)
        if support is None:
            return None
        if not support.isSupportedDevice:
            device.missing[FIELD] = "GPM is not supported on this GPU"
            return None
        device.gpm_previous = _take_sample(layer, device)
        return None
    current = _take_sample(layer, device)
    if current is None:
        return None
    metrics = nvml.c_nvmlGpmMetricsGet_t()
    metrics.version = nvml.NVML_GPM_METRICS_GET_VERSION
    metrics.numMetrics = 1
    metrics.sample1 = device.gpm_previous
    metrics.sample2 = current
    metrics.metrics[0].metricId = nvml.NVML_GPM_METRIC_SM_UTIL
    result = layer.read(device, FIELD, nvml.nvmlGpmMetricsGet, metrics)
    _free_sample(layer, device.gpm_previous)
    device.gpm_previous = current
    if result is None:
        return None
    return float(result.metrics[0].value)


def release(layer, device):
    """Frees the sample kept for ``device``; called when NVML is closed."""
    if device.gpm_previous is not None:
        _free_sample(layer, device.gpm_previous)
        device.gpm_previous = None


def _take_sample(layer, device):
    nvml = layer.nvml
    sample = layer.read(device, FIELD, nvml.nvmlGpmSampleAlloc)
    if sample is None:
        return None
    if layer.read(device, FIELD, nvml.nvmlGpmSampleGet, device.handle, sample) is None:
        _free_sample(layer, sample)
        return None
    return sample


def _free_sample(layer, sample):
    try:
        layer.nvml.nvmlGpmSampleFree(sample)
    except layer.nvml.NVMLError:
        pass  # a sample NVML cannot free is leaked, not fatal to telemetry
