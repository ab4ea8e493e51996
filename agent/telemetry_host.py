"""Host figures of the node (CPU, memory, network, load) from psutil, which reads /proc."""
import os

import psutil


class HostSampler:
    """Samples the node; CPU use is measured between successive calls, so the first call
    primes the counter at construction.  Callers: the telemetry thread only."""

    def __init__(self):
        psutil.cpu_percent(interval=None)
        self.cpu_count = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        self.memory_total_bytes = psutil.virtual_memory().total

    def sample(self):
        """A dict with HostSample's field names."""
        memory = psutil.virtual_memory()
        network = psutil.net_io_counters(pernic=False)
        return {
            "cpu_percent": float(psutil.cpu_percent(interval=None)),
            "cpu_count": self.cpu_count,
            "memory_used_bytes": int(memory.total - memory.available),
            "memory_total_bytes": int(memory.total),
            "net_rx_bytes": int(network.bytes_recv) if network else 0,
            "net_tx_bytes": int(network.bytes_sent) if network else 0,
            "load1": float(os.getloadavg()[0]),
        }
