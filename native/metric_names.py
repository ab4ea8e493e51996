"""Every Prometheus metric loadgate exports: name, type, help and labels, in one table.

The agent's exporter (``loadgate.agent.metrics``), the controller's
(``loadgate.controller.metrics``), the generated alert rules and the Grafana dashboard
(``loadgate.controller.monitoring``) all take their names from here, so a rule can never
reference a metric nothing exports (tests/test_monitoring.py checks that against a scrape).

Names follow Prometheus conventions: base units (seconds, bytes, ratios 0..1), ``_total``
for counters.  GPU metrics have a second spelling, dcgm-exporter's (``DCGM_FI_DEV_*`` with
``gpu``, ``UUID``, ``device``, ``modelName`` and ``Hostname`` labels, in dcgm-exporter's
units), chosen with ``dcgm_names=True`` so dashboards built for dcgm-exporter work as they are.

Agent metrics describe one agent's share of the load; controller metrics (``loadgate_run_*``)
are the run merged over every agent, so summing both in one query never counts twice.

:class:`MetricStore` is the one collector both exporters use: it keeps the current value of
every series and renders them on scrape, and feeds decoded HDR histograms into Prometheus
buckets (the bucket counts of the HDR delta, never one observe() per request).
"""
import bisect
import enum
import socket
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)

from loadgate.native.outcomes import Outcome


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    help: str
    labels: tuple = ()

    def series(self):
        """The sample names a scrape shows for this metric."""
        if self.kind is Kind.HISTOGRAM:
            return (self.name + "_bucket", self.name + "_sum", self.name + "_count")
        return (self.name,)

    @property
    def bucket(self):
        """The ``_bucket`` series of a histogram (what histogram_quantile reads)."""
        return self.name + "_bucket"


def _counter(name, help_text, *labels):
    return Metric(name, Kind.COUNTER, help_text, labels)


def _gauge(name, help_text, *labels):
    return Metric(name, Kind.GAUGE, help_text, labels)


def _histogram(name, help_text, *labels):
    return Metric(name, Kind.HISTOGRAM, help_text, labels)


# Label names.
TARGET = "target"
OUTCOME = "outcome"
RUN_ID = "run_id"
AGENT = "agent"
STAGE = "stage"
STATE = "state"
GATE = "gate"
VERDICT = "verdict"
DEPLOYMENT = "deployment"

# The outcome label's values are Outcome.label: "2xx", "timeout", "not_sent" ...
# Requests that count as failed in an error rate, the same set the gates use: everything that
# ended without a 2xx or 3xx, except requests never sent (those are the generator's fault).
ERROR_OUTCOME_LABELS = tuple(outcome.label for outcome in Outcome
                             if outcome not in (Outcome.OK_2XX, Outcome.REDIRECT_3XX,
                                                Outcome.NOT_SENT))
NOT_SENT_LABEL = Outcome.NOT_SENT.label

# Latency bucket bounds in seconds: 100 µs to 60 s, about three per decade, so a
# histogram_quantile between two bounds is off by at most the bucket width.
LATENCY_BUCKETS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)

# --- one agent's load (the agent's /metrics) --------------------------------------------------
REQUEST_LATENCY = _histogram(
    "loadgate_request_latency_seconds",
    "Completion minus intended start (coordinated-omission free)", TARGET)
SERVICE_TIME = _histogram(
    "loadgate_service_time_seconds", "Completion minus actual send", TARGET)
SCHEDULE_LAG = _histogram(
    "loadgate_schedule_lag_seconds", "Actual send minus intended start", TARGET)
REQUESTS = _counter("loadgate_requests_total", "Requests that ended, by outcome class",
                    TARGET, OUTCOME)
REQUESTS_SENT = _counter("loadgate_requests_sent_total", "Requests written to a socket",
                         TARGET)
REQUESTS_LATE = _counter("loadgate_requests_late_total",
                         "Requests sent after their instant because every connection was busy",
                         TARGET)
RESPONSE_BYTES = _counter("loadgate_response_bytes_total", "Response bytes read", TARGET)
REQUESTS_INTENDED = _counter("loadgate_requests_intended_total",
                             "Arrivals the schedule asked for")
RATE_INTENDED = _gauge("loadgate_rate_intended",
                       "Requests per second the schedule asked for in the last interval")
RATE_ACHIEVED = _gauge("loadgate_rate_achieved",
                       "Requests per second completed in the last interval")
INTERVALS = _counter("loadgate_intervals_total", "Interval reports observed")
REPORT_DECODE_ERRORS = _counter("loadgate_report_decode_errors_total",
                                "Histograms in reports that could not be decoded", TARGET)
RUN_INFO = _gauge("loadgate_run_info", "The run being measured (always 1)", RUN_ID)
GENERATOR_SATURATED = _gauge("loadgate_generator_saturated",
                             "1 when the generator fell behind in the last interval")
GENERATOR_CPU = _gauge("loadgate_generator_cpu_ratio",
                       "CPU used by the generator's workers, of the cores they run on")
GENERATOR_CPU_SECONDS = _counter("loadgate_generator_cpu_seconds_total",
                                 "CPU time used by the generator's workers")
GENERATOR_MAX_LAG = _gauge("loadgate_generator_max_lag_seconds",
                           "Largest schedule lag seen in the last interval")
GENERATOR_CONNECTIONS = _gauge("loadgate_generator_open_connections",
                               "Connections open at the end of the last interval")
GENERATOR_WORKERS = _gauge("loadgate_generator_workers", "Worker processes generating load")

HOST_CPU = _gauge("loadgate_host_cpu_utilization_ratio", "Whole-node CPU use")
HOST_CPUS = _gauge("loadgate_host_cpus", "Logical CPUs of the node")
HOST_MEMORY_USED = _gauge("loadgate_host_memory_used_bytes", "Used memory (total - available)")
HOST_MEMORY_TOTAL = _gauge("loadgate_host_memory_total_bytes", "Installed memory")
HOST_NETWORK_RECEIVE = _counter("loadgate_host_network_receive_bytes_total",
                                "Bytes received on all interfaces")
HOST_NETWORK_TRANSMIT = _counter("loadgate_host_network_transmit_bytes_total",
                                 "Bytes sent on all interfaces")
HOST_LOAD1 = _gauge("loadgate_host_load1", "One-minute load average")

AGENT_METRICS = (
    REQUEST_LATENCY, SERVICE_TIME, SCHEDULE_LAG, REQUESTS, REQUESTS_SENT, REQUESTS_LATE,
    RESPONSE_BYTES, REQUESTS_INTENDED, RATE_INTENDED, RATE_ACHIEVED, INTERVALS,
    REPORT_DECODE_ERRORS, RUN_INFO,
    GENERATOR_SATURATED, GENERATOR_CPU, GENERATOR_CPU_SECONDS, GENERATOR_MAX_LAG,
    GENERATOR_CONNECTIONS, GENERATOR_WORKERS, HOST_CPU, HOST_CPUS, HOST_MEMORY_USED,
    HOST_MEMORY_TOTAL, HOST_NETWORK_RECEIVE, HOST_NETWORK_TRANSMIT, HOST_LOAD1)

# --- the run merged over agents (the controller's /metrics) -----------------------------------
RUN_REQUEST_LATENCY = _histogram(
    "loadgate_run_request_latency_seconds",
    "Completion minus intended start, every agent merged", TARGET)
RUN_SERVICE_TIME = _histogram("loadgate_run_service_time_seconds",
                              "Completion minus actual send, every agent merged", TARGET)
RUN_SCHEDULE_LAG = _histogram("loadgate_run_schedule_lag_seconds",
                              "Actual send minus intended start, every agent merged", TARGET)
RUN_REQUESTS = _counter("loadgate_run_requests_total",
                        "Requests that ended, by outcome class, every agent merged",
                        TARGET, OUTCOME)
RUN_REQUESTS_SENT = _counter("loadgate_run_requests_sent_total",
                             "Requests written to a socket, every agent merged", TARGET)
RUN_REQUESTS_LATE = _counter("loadgate_run_requests_late_total",
                             "Requests sent late because every connection was busy", TARGET)
RUN_REQUESTS_INTENDED = _counter("loadgate_run_requests_intended_total",
                                 "Arrivals the schedule asked for, every agent merged")
RUN_RATE_INTENDED = _gauge("loadgate_run_rate_intended",
                           "Requests per second asked for in the last merged interval")
RUN_RATE_ACHIEVED = _gauge("loadgate_run_rate_achieved",
                           "Requests per second completed in the last merged interval")
RUN_INTERVALS = _counter("loadgate_run_intervals_total", "Merged intervals observed")
RUN_AGENTS_REPORTING = _gauge("loadgate_run_agents_reporting",
                              "Agents that reported the last merged interval")
RUN_AGENTS_MISSING = _gauge("loadgate_run_agents_missing",
                            "Agents expected but absent from the last merged interval")
RUN_AGENTS_SATURATED = _gauge("loadgate_run_agents_saturated",
                              "Agents whose generator fell behind in the last merged interval")
RUN_MAX_LAG = _gauge("loadgate_run_max_lag_seconds",
                     "Largest schedule lag of any agent in the last merged interval")
AGENT_UP = _gauge("loadgate_agent_up", "1 while the controller hears the agent, 0 once lost",
                  AGENT)
RUN_DEPLOYMENT = _gauge("loadgate_run_deployment_info",
                        "The run and the deployment it judges (always 1)", RUN_ID, DEPLOYMENT)
STAGE_STATE = _gauge("loadgate_stage_state",
                     "1 for the state each stage is in, 0 for the others it has been in",
                     STAGE, STATE)
CANARY_WEIGHT = _gauge("loadgate_canary_weight", "Share of the traffic sent to the canary, 0..1")
GATE_OUTCOME = _gauge("loadgate_gate_outcome",
                      "1 for each gate's latest outcome, 0 for its earlier ones", GATE, OUTCOME)
RUN_VERDICT = _gauge("loadgate_verdict", "1 for the run's verdict once it is given", VERDICT)

CONTROLLER_METRICS = (
    RUN_REQUEST_LATENCY, RUN_SERVICE_TIME, RUN_SCHEDULE_LAG, RUN_REQUESTS, RUN_REQUESTS_SENT,
    RUN_REQUESTS_LATE, RUN_REQUESTS_INTENDED, RUN_RATE_INTENDED, RUN_RATE_ACHIEVED,
    RUN_INTERVALS, RUN_AGENTS_REPORTING, RUN_AGENTS_MISSING, RUN_AGENTS_SATURATED, RUN_MAX_LAG,
    AGENT_UP, RUN_DEPLOYMENT, STAGE_STATE, CANARY_WEIGHT, GATE_OUTCOME, RUN_VERDICT)


# --- GPUs, in two spellings -------------------------------------------------------------------
GPU_LABELS = ("gpu", "uuid", "model_name")
DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname")
MIB = 1 << 20


@dataclass(frozen=True)
class GpuMetric:
    """One GPU figure: the GpuSample fields it needs (all must be in ``available``), how to
    compute it in loadgate's units, and its dcgm-exporter spelling (None where dcgm-exporter
    has no field of the same meaning)."""

    fields: tuple
    value: object  # GpuSample -> float, in the Prometheus-style metric's unit
    metric: Metric
    dcgm: Metric = None
    dcgm_scale: float = 1.0  # dcgm value = value * dcgm_scale

    def metric_for(self, dcgm_names):
        return self.dcgm if dcgm_names and self.dcgm else self.metric


def _gpu(fields, value, name, help_text, dcgm_name=None, dcgm_scale=1.0, kind=Kind.GAUGE):
    # dcgm-exporter series are gauges even for running totals: prometheus-client would add a
    # _total suffix to a counter, and dcgm-exporter's names have none.
    dcgm = None
    if dcgm_name:
        dcgm = Metric(dcgm_name, Kind.GAUGE, f"{help_text} (dcgm-exporter field)", DCGM_LABELS)
    return GpuMetric(fields, value, Metric(name, kind, help_text, GPU_LABELS), dcgm, dcgm_scale)


def _free_bytes(gpu):
    return max(0, gpu.memory_total_bytes - gpu.memory_used_bytes - gpu.memory_reserved_bytes)


# dcgm-exporter's units: percent, MiB, W, mJ, MHz; SM activity is a ratio there too.
GPU_UTILIZATION = _gpu(("utilization_percent",), lambda g: g.utilization_percent / 100.0,
                       "loadgate_gpu_utilization_ratio", "GPU busy time",
                       "DCGM_FI_DEV_GPU_UTIL", 100.0)
GPU_MEMORY_UTILIZATION = _gpu(
    ("memory_utilization_percent",), lambda g: g.memory_utilization_percent / 100.0,
    "loadgate_gpu_memory_utilization_ratio", "Memory controller busy time",
    "DCGM_FI_DEV_MEM_COPY_UTIL", 100.0)
GPU_MEMORY_USED = _gpu(("memory_used_bytes",), lambda g: float(g.memory_used_bytes),
                       "loadgate_gpu_memory_used_bytes", "Framebuffer memory used",
                       "DCGM_FI_DEV_FB_USED", 1.0 / MIB)
GPU_MEMORY_FREE = _gpu(("memory_used_bytes", "memory_total_bytes"),
                       lambda g: float(_free_bytes(g)),
                       "loadgate_gpu_memory_free_bytes", "Framebuffer memory free",
                       "DCGM_FI_DEV_FB_FREE", 1.0 / MIB)
GPU_MEMORY_TOTAL = _gpu(("memory_total_bytes",), lambda g: float(g.memory_total_bytes),
                        "loadgate_gpu_memory_total_bytes", "Framebuffer memory total",
                        "DCGM_FI_DEV_FB_TOTAL", 1.0 / MIB)
GPU_MEMORY_RESERVED = _gpu(("memory_reserved_bytes",), lambda g: float(g.memory_reserved_bytes),
                           "loadgate_gpu_memory_reserved_bytes",
                           "Framebuffer memory reserved by the driver",
                           "DCGM_FI_DEV_FB_RESERVED", 1.0 / MIB)
GPU_POWER = _gpu(("power_milliwatts",), lambda g: g.power_milliwatts / 1000.0,
                 "loadgate_gpu_power_watts", "Power draw", "DCGM_FI_DEV_POWER_USAGE")
GPU_ENERGY = _gpu(("energy_millijoules",), lambda g: g.energy_millijoules / 1000.0,
                  "loadgate_gpu_energy_joules_total", "Energy since the driver loaded",
                  "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 1000.0, Kind.COUNTER)
GPU_TEMPERATURE = _gpu(("temperature_celsius",), lambda g: float(g.temperature_celsius),
                       "loadgate_gpu_temperature_celsius", "GPU core temperature",
                       "DCGM_FI_DEV_GPU_TEMP")
GPU_SM_CLOCK = _gpu(("sm_clock_mhz",), lambda g: g.sm_clock_mhz * 1e6,
                    "loadgate_gpu_sm_clock_hertz", "SM clock", "DCGM_FI_DEV_SM_CLOCK", 1e-6)
GPU_MEMORY_CLOCK = _gpu(("memory_clock_mhz",), lambda g: g.memory_clock_mhz * 1e6,
                        "loadgate_gpu_memory_clock_hertz", "Memory clock",
                        "DCGM_FI_DEV_MEM_CLOCK", 1e-6)
GPU_CLOCK_EVENT_REASONS = _gpu(
    ("clock_event_reasons",), lambda g: float(g.clock_event_reasons),
    "loadgate_gpu_clock_event_reasons", "NVML clock-event (throttle) reason bitmask",
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")
GPU_ECC_CORRECTED = _gpu(("ecc_corrected",), lambda g: float(g.ecc_corrected),
                         "loadgate_gpu_ecc_corrected_errors", "Volatile corrected ECC errors",
                         "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL")
GPU_ECC_UNCORRECTED = _gpu(("ecc_uncorrected",), lambda g: float(g.ecc_uncorrected),
                           "loadgate_gpu_ecc_uncorrected_errors",
                           "Volatile uncorrected ECC errors", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL")
GPU_SM_ACTIVITY = _gpu(("sm_activity_percent",), lambda g: g.sm_activity_percent / 100.0,
                       "loadgate_gpu_sm_activity_ratio", "SM activity (GPM)",
                       "DCGM_FI_PROF_SM_ACTIVE")
# dcgm-exporter's XID field holds the last XID code, not a count: no dcgm spelling.
GPU_XID_ERRORS = _gpu(("xid_errors",), lambda g: float(g.xid_errors),
                      "loadgate_gpu_xid_errors_total",
                      "XID critical errors since the agent started", kind=Kind.COUNTER)

GPU_METRICS = (
    GPU_UTILIZATION, GPU_MEMORY_UTILIZATION, GPU_MEMORY_USED, GPU_MEMORY_FREE, GPU_MEMORY_TOTAL,
    GPU_MEMORY_RESERVED, GPU_POWER, GPU_ENERGY, GPU_TEMPERATURE, GPU_SM_CLOCK,
    GPU_MEMORY_CLOCK, GPU_CLOCK_EVENT_REASONS, GPU_ECC_CORRECTED, GPU_ECC_UNCORRECTED,
    GPU_SM_ACTIVITY, GPU_XID_ERRORS)


def all_metrics(dcgm_names=False):
    """Every metric an agent or controller of this spelling may export."""
    gpu = tuple(g.metric_for(dcgm_names) for g in GPU_METRICS)
    return AGENT_METRICS + CONTROLLER_METRICS + gpu


def exported_series(dcgm_names=False):
    """Every sample name a scrape may show, for checking references in rules and dashboards."""
    return frozenset(name for metric in all_metrics(dcgm_names) for name in metric.series())


class _HistogramState:
    __slots__ = ("bucket_counts", "total_count", "total_sum")

    def __init__(self, bucket_count):
        self.bucket_counts = [0] * (bucket_count + 1)  # the last one is +Inf
        self.total_count = 0
        self.total_sum = 0.0


class MetricStore:
    """A prometheus-client collector holding the current value of every series it was given.

    ``set``/``inc``/``observe_histogram`` may be called from any thread; a scrape renders a
    consistent copy taken under one lock.  Histograms use ``buckets`` (upper bounds, seconds).
    ``before_collect``, when set, is called at the start of every scrape (to pull new data).
    """

    def __init__(self, metrics, buckets=LATENCY_BUCKETS_SECONDS):
        self.metrics = tuple(metrics)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._values = {metric: {} for metric in self.metrics}
        self._lock = threading.Lock()
        self.before_collect = None

    def set(self, metric, value, *labels):
        with self._lock:
            self._values[metric][labels] = float(value)

    def inc(self, metric, amount, *labels):
        with self._lock:
            series = self._values[metric]
            series[labels] = series.get(labels, 0.0) + amount

    def clear(self, metric):
        """Forgets every series of a metric (e.g. GPUs that disappeared)."""
        with self._lock:
            self._values[metric].clear()

    def observe_histogram(self, metric, histogram, *labels, scale=1e-6):
        """Adds every recorded value of an HDR histogram (values times ``scale`` = seconds).

        Each HDR bucket goes to the first Prometheus bucket at or above its lowest value, so
        a value equal to a bound counts as below it, as Prometheus's ``le`` means.
        """
        bounds = self.buckets
        additions = [0] * (len(bounds) + 1)
        count = 0
        total = 0.0
        for value_from, value_to, n in histogram.recorded():
            additions[bisect.bisect_left(bounds, value_from * scale)] += n
            total += (value_from + value_to) * 0.5 * scale * n
            count += n
        with self._lock:
            series = self._values[metric]
            state = series.get(labels)
            if state is None:
                state = series[labels] = _HistogramState(len(bounds))
            for index, n in enumerate(additions):
                state.bucket_counts[index] += n
            state.total_count += count
            state.total_sum += total

    def describe(self):
        return [self._family(metric) for metric in self.metrics]

    def collect(self):
        if self.before_collect is not None:
            self.before_collect()
        with self._lock:
            snapshot = {metric: {labels: (_copy(value)) for labels, value in series.items()}
                        for metric, series in self._values.items()}
        for metric in self.metrics:
            family = self._family(metric)
            for labels, value in sorted(snapshot[metric].items()):
                if metric.kind is Kind.HISTOGRAM:
                    family.add_metric(list(labels), self._cumulative(value), value.total_sum)
                else:
                    family.add_metric(list(labels), value)
            yield family

    def _family(self, metric):
        if metric.kind is Kind.COUNTER:
            return CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
        if metric.kind is Kind.GAUGE:
            return GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
        return HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)

    def _cumulative(self, state):
        running = 0
        buckets = []
        for bound, n in zip(self.buckets + (float("inf"),), state.bucket_counts):
            running += n
            buckets.append((_bound_text(bound), running))
        return buckets


def _copy(value):
    if isinstance(value, _HistogramState):
        copy = _HistogramState(len(value.bucket_counts) - 1)
        copy.bucket_counts = list(value.bucket_counts)
        copy.total_count = value.total_count
        copy.total_sum = value.total_sum
        return copy
    return value


def _bound_text(bound):
    return "+Inf" if bound == float("inf") else repr(bound)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        """Scrapes are not worth a log line each."""


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint on a daemon thread."""

    # How often the serving thread checks for close(): bounds how long close() takes.
    POLL_INTERVAL_S = 0.05

    def __init__(self, registry, port=0, addr="127.0.0.1"):
        server_class = type("MetricsHTTPServer", (ThreadingWSGIServer,), {
            "address_family": socket.AF_INET6 if ":" in addr else socket.AF_INET})
        self._httpd = make_server(addr, port, make_wsgi_app(registry), server_class,
                                  handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        args=(self.POLL_INTERVAL_S,), daemon=True,
                                        name="loadgate-metrics")
        self._thread.start()
        self.addr = addr
        self.port = self._httpd.server_port

    @property
    def url(self):
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
