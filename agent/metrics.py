"""The agent's Prometheus exporter: its own share of the load, its generator and its node.

API (names and labels come from ``loadgate.native.metric_names``)::

    metrics = AgentMetrics(registry=None, dcgm_names=False, hostname=None,
                           buckets=LATENCY_BUCKETS_SECONDS)
    metrics.observe_report(report)       # common_pb2.IntervalReport, once per interval
    metrics.observe_telemetry(sample)    # common_pb2.TelemetrySample (reports' samples are
                                         # observed by observe_report already)
    server = metrics.serve(port, addr="127.0.0.1")   # MetricsServer: .port, .url, .close()
    metrics.registry                     # the prometheus_client CollectorRegistry

    metrics.follow(service)              # catch up with an AgentService before each scrape
    server = serve_metrics(service, addr, port, dcgm_names=False)   # both of the above

``serve_metrics`` exports a running agent without touching its load path: on every scrape it
picks up the reports the service has published since the last scrape
(``service.runs[run_id].reports_after(seq)``) and its latest telemetry sample
(``service.telemetry.latest()``), so /metrics costs the agent nothing between scrapes.

``registry=None`` makes a registry of its own with the process and platform collectors, so
several exporters can live in one process (tests) without clashing.  Latency histograms are
fed from the decoded HDR deltas of each report, bucket by bucket: a Prometheus histogram of
every request in the interval, not a sample of them.  ``dcgm_names=True`` exports GPU figures
under dcgm-exporter's names, units and labels; everything else keeps loadgate's names.

observe_* never raise on a report's content: an undecodable histogram is counted in
``loadgate_report_decode_errors_total`` and the rest of the report is still exported.
"""
import socket
import threading

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from loadgate.native import metric_names as names
from loadgate.native._hdr import Histogram
from loadgate.native.errors import HistogramError
from loadgate.native.outcomes import Outcome
from loadgate.proto.loadgate.v1 import common_pb2

# proto Outcome number -> the ``outcome`` label value; OUTCOME_UNSPECIFIED has none.
OUTCOME_LABEL_OF_WIRE = {
    number: Outcome[common_pb2.Outcome.Name(number).removeprefix("OUTCOME_")].label
    for number in common_pb2.Outcome.values() if number != common_pb2.OUTCOME_UNSPECIFIED
}

_TARGET_HISTOGRAMS = (
    ("latency", names.REQUEST_LATENCY),
    ("service_time", names.SERVICE_TIME),
    ("schedule_lag", names.SCHEDULE_LAG),
)


def new_registry():
    """A registry with the process and platform collectors (memory, descriptors, CPU)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class AgentMetrics:
    def __init__(self, registry=None, dcgm_names=False, hostname=None,
                 buckets=names.LATENCY_BUCKETS_SECONDS):
        self.registry = new_registry() if registry is None else registry
        self.dcgm_names = dcgm_names
        self.hostname = hostname or socket.gethostname()
        self._gpu_metrics = tuple(g.metric_for(dcgm_names) for g in names.GPU_METRICS)
        self.store = names.MetricStore(names.AGENT_METRICS + self._gpu_metrics, buckets)
        self.registry.register(self.store)
        self._run_id = None

    def observe_report(self, report):
        """Adds one interval report's deltas and sets the interval's gauges."""
        store = self.store
        if report.run_id != self._run_id:
            store.clear(names.RUN_INFO)
            store.set(names.RUN_INFO, 1, report.run_id)
            self._run_id = report.run_id
        for target in report.targets:
            self._observe_target(target)
        store.inc(names.REQUESTS_INTENDED, report.intended)
        store.inc(names.INTERVALS, 1)
        store.set(names.RATE_INTENDED, report.intended_rate)
        store.set(names.RATE_ACHIEVED, report.achieved_rate)
        health = report.health
        store.set(names.GENERATOR_SATURATED, 1 if health.saturated else 0)
        store.set(names.GENERATOR_CPU, health.cpu_percent / 100.0)
        store.inc(names.GENERATOR_CPU_SECONDS, health.cpu_seconds)
        store.set(names.GENERATOR_MAX_LAG, health.max_lag_us * 1e-6)
        store.set(names.GENERATOR_CONNECTIONS, health.open_connections)
        store.set(names.GENERATOR_WORKERS, health.workers)
        for sample in report.telemetry:
            self.observe_telemetry(sample)

    def _observe_target(self, target):
        store = self.store
        name = target.name
        for field_name, metric in _TARGET_HISTOGRAMS:
            encoded = getattr(target, field_name)
            if not encoded:
                continue
            try:
                histogram = Histogram.decode_binary(encoded)
            except HistogramError:
                store.inc(names.REPORT_DECODE_ERRORS, 1, name)
                continue
            store.observe_histogram(metric, histogram, name)
        for entry in target.outcomes:
            label = OUTCOME_LABEL_OF_WIRE.get(entry.outcome)
            if label is not None:
                store.inc(names.REQUESTS, entry.count, name, label)
        store.inc(names.REQUESTS_SENT, target.sent, name)
        store.inc(names.REQUESTS_LATE, target.late, name)
        store.inc(names.RESPONSE_BYTES, target.bytes_read, name)

    def observe_telemetry(self, sample):
        """Sets the node and GPU gauges to one telemetry sample's figures."""
        store = self.store
        if sample.HasField("host"):
            host = sample.host
            store.set(names.HOST_CPU, host.cpu_percent / 100.0)
            store.set(names.HOST_CPUS, host.cpu_count)
            store.set(names.HOST_MEMORY_USED, host.memory_used_bytes)
            store.set(names.HOST_MEMORY_TOTAL, host.memory_total_bytes)
            store.set(names.HOST_NETWORK_RECEIVE, host.net_rx_bytes)
            store.set(names.HOST_NETWORK_TRANSMIT, host.net_tx_bytes)
            store.set(names.HOST_LOAD1, host.load1)
        # A sample lists every device present, so devices absent from it are gone.
        for metric in self._gpu_metrics:
            store.clear(metric)
        for gpu in sample.gpus:
            available = set(gpu.available)
            for figure in names.GPU_METRICS:
                if not available.issuperset(figure.fields):
                    continue
                value = figure.value(gpu)
                metric = figure.metric_for(self.dcgm_names)
                if metric is figure.dcgm:
                    value *= figure.dcgm_scale
                    labels = (str(gpu.index), gpu.uuid, f"nvidia{gpu.index}", gpu.name,
                              self.hostname)
                else:
                    labels = (str(gpu.index), gpu.uuid, gpu.name)
                store.set(metric, value, *labels)

    def follow(self, service):
        """Observes, before every scrape and before the service drops reports a controller
        acknowledged, what ``service`` published since the last time."""
        follower = _ServiceFollower(self, service)
        self.store.before_collect = follower
        service.before_acknowledge = follower

    def serve(self, port=0, addr="127.0.0.1"):
        """Starts ``/metrics`` on addr:port (0 picks a free port); returns the MetricsServer."""
        return names.MetricsServer(self.registry, port, addr)


class _ServiceFollower:
    """Catches an exporter up with an AgentService; the store calls it before each scrape."""

    def __init__(self, metrics, service):
        self.metrics = metrics
        self.service = service
        self._seen = {}  # run id -> last seq observed
        self._lock = threading.Lock()  # scrapes and acknowledgements both catch up

    def __call__(self):
        with self._lock:
            self._catch_up()

    def _catch_up(self):
        for run_id, run in list(self.service.runs.items()):
            seq = self._seen.get(run_id, 0)
            for report in run.reports_after(seq):
                self.metrics.observe_report(report)
                seq = report.seq
            self._seen[run_id] = seq
        for run_id in set(self._seen) - set(self.service.runs):
            del self._seen[run_id]
        telemetry = getattr(self.service, "telemetry", None)
        sample = telemetry.latest() if telemetry is not None else None
        if sample is not None:
            self.metrics.observe_telemetry(sample)


def serve_metrics(service, addr, port, dcgm_names=False):
    """Serves /metrics for a running AgentService on addr:port; returns the MetricsServer."""
    metrics = AgentMetrics(dcgm_names=dcgm_names)
    metrics.follow(service)
    return metrics.serve(port, addr)
