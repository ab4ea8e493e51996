"""An in-process PyTorch model as a load target, driven by the same schedules as HTTP.

Each arrival of the schedule is one batch: the model runs on the caller's thread, one batch
at a time, so when it is slower than the schedule the queue grows and shows up as latency
(completion - intended start) and schedule lag (actual start - intended start), exactly as an
overloaded server would.  On CUDA every batch ends with ``torch.cuda.synchronize`` so the
time measured is the time the work took, not the time it took to queue kernels.  Warm-up
batches (compilation, allocator growth, cuDNN autotuning) run before the clock starts.

torch is an optional dependency (the ``torch`` extra) and is imported only here.
"""
import enum
import importlib
import os
import time
import warnings
from dataclasses import dataclass

from loadgate.agent.inference.metrics import Measurement
from loadgate.agent.inference.pacing import LEAD_NS, instants, sleep_until
from loadgate.native.errors import ConfigError, EngineError

METRICS = ("latency_ms", "service_time_ms", "schedule_lag_ms")
FIGURES = ("samples_per_s", "peak_gpu_memory_bytes")
_INTEGER_DTYPES = {"int8", "int16", "int32", "int64", "uint8"}


class CallOutcome(enum.Enum):
    OK = "ok"            # the model returned
    ERROR = "error"      # the model raised
    NOT_RUN = "not_run"  # still queued when the run's grace time ran out

    @property
    def is_success(self):
        return self is CallOutcome.OK


def import_torch():
    """torch, or a ConfigError naming the extra that provides it."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise ConfigError("this target needs PyTorch: pip install 'loadgate[torch]' "
                          "(torch==2.13.0)") from None


@dataclass(frozen=True)
class TorchConfig:
    model: str                        # .pt (TorchScript), .pt2 (torch.export) or module:function
    schedule: object
    input_shapes: tuple = ((1, 3, 224, 224),)  # one shape per model input
    batch: int = 1                    # replaces each input's first dimension
    dtype: str = "float32"
    device: str = "cpu"
    warmup: int = 5
    threads: int = None               # torch intra-op threads; None leaves torch's default
    grace_s: float = 10.0             # how long past the schedule's end queued batches may run
    seed: int = 0

    def __post_init__(self):
        if not self.schedule.is_open_loop and self.schedule.concurrency != 1:
            raise ConfigError("an in-process model runs one batch at a time: a closed loop "
                              "needs a concurrency of 1")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"batch must be a positive integer, got {self.batch!r}")
        if self.warmup < 0:
            raise ConfigError("warmup must not be negative")
        if not self.input_shapes or any(not s or min(s) < 1 for s in self.input_shapes):
            raise ConfigError(f"input shapes must have positive dimensions: {self.input_shapes!r}")


def parse_shape(text):
    """``1,3,224,224`` -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"not a shape: {text!r} (expected e.g. 1,3,224,224)") from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"not a shape: {text!r}")
    return shape


def select_device(torch, name):
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"not a torch device: {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r}: only cpu and cuda are supported")
    return device


def load_model(torch, spec, device):
    """The callable ``spec`` names, on ``device``: a TorchScript file, a torch.export .pt2
    file, or ``module:attribute`` (anything callable on the input tensors)."""
    if os.path.isfile(spec):
        if spec.endswith(".pt2"):
            # An exported program is already specialised (eval mode, no autograd); its module
            # refuses eval().
            return torch.export.load(spec).module().to(device)
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated upstream, but it is the format asked for here.
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(spec, map_location=device)
        except RuntimeError as exc:
            raise ConfigError(f"{spec}: not a TorchScript file ({str(exc).splitlines()[0]})") \
                from None
        return model.eval()
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"no model file {spec!r}, and not a module:function reference")
    try:
        target = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load {spec!r}: {exc}") from None
    if not callable(target):
        raise ConfigError(f"{spec!r} is not callable")
    if isinstance(target, torch.nn.Module):
        target = target.to(device).eval()
    return target


def make_inputs(torch, config, device):
    generator = torch.Generator().manual_seed(config.seed)
    try:
        dtype = getattr(torch, config.dtype)
        if not isinstance(dtype, torch.dtype):
            raise AttributeError(config.dtype)
    except AttributeError:
        raise ConfigError(f"not a torch dtype: {config.dtype!r}") from None
    inputs = []
    for shape in config.input_shapes:
        shape = (config.batch,) + tuple(shape[1:])
        if config.dtype in _INTEGER_DTYPES:
            tensor = torch.randint(0, 100, shape, generator=generator, dtype=dtype)
        else:
            tensor = torch.randn(shape, generator=generator).to(dtype)
        inputs.append(tensor.to(device))
    return inputs


def closed_loop_offsets(schedule, start_ns):
    """Offsets for a one-loop closed schedule: each is taken when the generator is resumed,
    that is when the previous batch has completed, plus the think time."""
    end = int(schedule.duration_s * 1e9)
    think = int(schedule.think_time_s * 1e9)
    offset = 0
    while offset < end:
        yield offset
        offset = time.monotonic_ns() - start_ns + think


def run_torch(config, log=None):
    """Runs the model through the schedule, writing intervals to ``log`` (an IntervalLog) if
    given; returns the Measurement."""
    torch = import_torch()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = select_device(torch, config.device)
    model = load_model(torch, config.model, device)
    inputs = make_inputs(torch, config, device)
    on_cuda = device.type == "cuda"

    def synchronize():
        if on_cuda:
            torch.cuda.synchronize(device)

    measurement = Measurement("torch", config.model, config.schedule, METRICS, CallOutcome, log)
    first_error = None
    with torch.inference_mode():
        try:
            for _ in range(config.warmup):
                model(*inputs)
            synchronize()
        except Exception as exc:  # any failure of foreign code; the run cannot start
            raise EngineError(f"{config.model} failed during warm-up: "
                              f"{type(exc).__name__}: {exc}") from None
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.monotonic_ns() + LEAD_NS
        deadline = start + int((config.schedule.duration_s + config.grace_s) * 1e9)
        measurement.begin(start)
        last_done = start
        schedule = config.schedule
        offsets = instants(schedule) if schedule.is_open_loop else \
            closed_loop_offsets(schedule, start)
        for offset in offsets:
            intended = start + offset
            if time.monotonic_ns() > deadline:
                measurement.count(CallOutcome.NOT_RUN)
                continue
            sleep_until(intended)
            began = time.monotonic_ns()
            try:
                model(*inputs)
                synchronize()
                outcome = CallOutcome.OK
            except Exception as exc:  # the model's own failure is a measured outcome
                outcome = CallOutcome.ERROR
                first_error = first_error or f"{type(exc).__name__}: {exc}"
            done = time.monotonic_ns()
            if log is not None and done >= log.due_ns:
                log.roll(done)
            measurement.count(outcome)
            if outcome is CallOutcome.OK:
                last_done = done
                measurement.record("latency_ms", (done - intended) // 1000)
                measurement.record("service_time_ms", (done - began) // 1000)
                measurement.record("schedule_lag_ms", (began - intended) // 1000)
    measurement.end(last_done)
    figures = measurement.figures
    figures.update(device=str(device), batch=config.batch, warmup=config.warmup,
                   torch_version=torch.__version__, threads=torch.get_num_threads(),
                   samples_per_s=measurement.completed * config.batch / measurement.elapsed_s)
    if first_error:
        figures["first_error"] = first_error
    if on_cuda:
        figures["gpu_name"] = torch.cuda.get_device_name(device)
        figures["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return measurement
