"""The telemetry thread: samples host and GPUs at a fixed rate, apart from the gRPC loop and
the load workers, and keeps recent samples for the interval reports to pick up."""
import bisect
import threading
import time

from loadgate.agent.nvml import open_nvml
from loadgate.agent.telemetry_host import HostSampler
from loadgate.proto.loadgate.v1 import common_pb2

# Enough for the longest report interval anyone should use at the fastest sampling rate; it
# also bounds an idle agent, whose samples no run takes.
_KEPT_SAMPLES = 4096


def telemetry_message(unix_ns, host, gpus, gpu_unavailable_reason):
    """A TelemetrySample from the dicts HostSampler and Nvml return."""
    sample = common_pb2.TelemetrySample(unix_ns=unix_ns, host=common_pb2.HostSample(**host),
                                        gpu_unavailable_reason=gpu_unavailable_reason)
    for gpu in gpus:
        fields = dict(gpu)
        processes = fields.pop("processes", ())
        message = sample.gpus.add(**fields)
        for process in processes:
            message.processes.add(**process)
    return sample


class TelemetrySampler:
    """Owns the NVML session and the sampling thread.  ``between`` and ``latest`` may be
    called from any thread."""

    def __init__(self, interval_s=1.0, nvml=None):
        self.interval_s = interval_s
        self.nvml = nvml if nvml is not None else open_nvml()
        self.host = HostSampler()
        self._lock = threading.Lock()
        self._times = []
        self._samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loadgate-telemetry", daemon=True)

    @property
    def gpu_unavailable_reason(self):
        return "" if self.nvml.available else self.nvml.unavailable_reason

    def start(self):
        self._thread.start()
        return self

    def close(self):
        """Stops the thread and releases NVML."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.nvml.close()

    def sample_now(self):
        """Takes one sample, keeps it and returns it; the thread's own step."""
        unix_ns = time.time_ns()
        sample = telemetry_message(unix_ns, self.host.sample(), self.nvml.sample(),
                                   self.gpu_unavailable_reason)
        with self._lock:
            self._times.append(unix_ns)
            self._samples.append(sample)
            if len(self._samples) > _KEPT_SAMPLES:
                del self._times[:-_KEPT_SAMPLES // 2]
                del self._samples[:-_KEPT_SAMPLES // 2]
        return sample

    def between(self, start_ns, end_ns):
        """Samples taken in [start_ns, end_ns), oldest first."""
        with self._lock:
            lo = bisect.bisect_left(self._times, start_ns)
            hi = bisect.bisect_left(self._times, end_ns)
            return list(self._samples[lo:hi])

    def take(self, start_ns, end_ns):
        """Samples taken in [start_ns, end_ns), oldest first, and lets go of the samples
        taken before end_ns but the latest: the running run's reports read the samples once,
        in order, and only ``latest`` asks for an old one, so a run holds one interval's
        samples, not the last _KEPT_SAMPLES of them (about a kilobyte each, ~5 MiB at the
        1 s default)."""
        with self._lock:
            lo = bisect.bisect_left(self._times, start_ns)
            hi = bisect.bisect_left(self._times, end_ns)
            taken = self._samples[lo:hi]
            released = min(hi, len(self._samples) - 1)
            if released > 0:
                del self._times[:released]
                del self._samples[:released]
            return taken

    def latest(self):
        with self._lock:
            return self._samples[-1] if self._samples else None

    def _loop(self):
        # Deadlines, not sleeps, so the rate does not drift by the cost of sampling.
        deadline = time.monotonic()
        while not self._stop.is_set():
            self.sample_now()
            deadline += self.interval_s
            delay = deadline - time.monotonic()
            if delay < 0:
                deadline = time.monotonic()
                delay = 0
            self._stop.wait(delay)
