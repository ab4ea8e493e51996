"""The readiness orchestrator's MeasurementSource over real agents (readiness_protocol).

One DistributedRun carries every window: the first ``start_window`` prepares and starts it
with that window's rate and weights on a long schedule (``horizon_s``), later ones Adjust
the running agents.  Merged intervals that start inside a window are added to it (whole
intervals only, so a window never mixes in load from before its change).  The orchestrator
is synchronous; the run lives on an event loop in a thread of its own.
"""
import asyncio
import socket
import threading
import time
import urllib.parse
from dataclasses import replace

from loadgate.controller.gates import min_samples_for_percentile
from loadgate.controller.merge import Metric, TargetTotals
from loadgate.controller.readiness_protocol import (Capacity, Gpu, TargetWindow,
                                                    TelemetrySample, WindowMeasurement)
from loadgate.controller.runner import DistributedRun
from loadgate.controller.runner_agents import AgentClient
from loadgate.controller.runner_reports import HistogramLayout
from loadgate.controller.runner_session import RunStatus
from loadgate.controller.runner_spec import RunDefinition
from loadgate.native._hdr import Histogram
from loadgate.native.errors import InfrastructureError
from loadgate.native.schedule import ArrivalModel, ConstantRate, Poisson

# 99.9 % confidence needs 135 samples for a p95 bound; a loopback connect costs ~0.1 ms.
RTT_SAMPLES_MIN = 200
DEFAULT_CONFIDENCE = 95.0


class AgentMeasurementSource:
    """Windows of load from ``agents`` (host:port) for the targets and load of ``plan``."""

    def __init__(self, plan, agents, run_dir, *, horizon_s=3600.0, workers_per_agent=0,
                 credentials=None, metadata=(), call_timeout_s=60.0):
        self.plan = plan
        self.agents = list(agents)
        self.run_dir = run_dir
        self.horizon_s = horizon_s
        self.workers_per_agent = workers_per_agent
        self.credentials = credentials
        self.metadata = metadata
        self.call_timeout_s = call_timeout_s
        self.run = None
        self._first_rate = None
        self._window = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="loadgate-measurement")
        self._thread.start()

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.call_timeout_s)

    def describe(self):
        async def nodes():
            clients = [AgentClient(a, "readiness", self.credentials, self.metadata)
                       for a in self.agents]
            try:
                return await asyncio.gather(*(c.describe() for c in clients))
            finally:
                await asyncio.gather(*(c.close() for c in clients))
        infos = self._call(nodes())
        reasons = [n.gpu_unavailable_reason for n in infos if n.gpu_unavailable_reason]
        return Capacity(cpu_cores=sum(n.cpu_count for n in infos),
                        memory_bytes=sum(n.memory_total_bytes for n in infos),
                        gpus=tuple(Gpu(g.name, g.memory_total_bytes)
                                   for n in infos for g in n.gpus),
                        agents=len(infos), gpu_unavailable_reason=reasons[0] if reasons else None)

    def measure_rtt(self, samples=None, timeout_s=2.0):
        """TCP connect times (µs) to each target, from the controller's node: the agents have
        no call for it, and on loopback or one network the two are the same path.

        ``samples`` connects per target (default: enough for the plan's RTT p95 claim,
        rtt_samples)."""
        samples = samples or rtt_samples(self.plan)
        result = {}
        for target in self.plan.targets:
            url = urllib.parse.urlsplit(target.url)
            port = url.port or (443 if url.scheme == "https" else 80)
            histogram = Histogram()
            for _ in range(samples):
                began = time.perf_counter_ns()
                try:
                    socket.create_connection((url.hostname, port), timeout_s).close()
                except OSError:
                    continue
                histogram.record_clamped(max(1, (time.perf_counter_ns() - began) // 1000))
            result[target.name] = histogram
        return result

    def start_window(self, weights, rate):
        if self.run is None:
            self._first_rate = rate
            self._call(self._begin(weights, rate))
        else:
            self._call(self.run.adjust(rate_scale=rate / self._first_rate, weights=dict(weights)))
        # The window opens once every agent has taken the change, so no interval in it began
        # under the previous weights or rate.
        with self._lock:
            self._window = _Window(self.plan.targets, rate, weights)

    async def _begin(self, weights, rate):
        definition = RunDefinition.from_plan(self.plan, self.workers_per_agent)
        definition = replace(definition.with_weights(weights),
                             schedule=_long_schedule(self.plan.load, rate, self.horizon_s))
        self.run = DistributedRun(definition, self.agents, self.run_dir,
                                  credentials=self.credentials, metadata=self.metadata)
        self.run.add_listener(self._on_interval)
        await self.run.prepare()
        await self.run.start()

    def _on_interval(self, merged):
        with self._lock:
            window = self._window
            if window is None or merged.start_ns < window.start_ns or not merged.agents:
                return
            for name, totals in merged.targets.items():
                window.targets[name].add(totals)
            window.end_ns = max(window.end_ns, merged.end_ns)
            window.intended += merged.intended
            window.telemetry.extend(_sample(s) for _, s in merged.telemetry)

    def collect(self):
        with self._lock:
            window = self._window
            if window is None:
                raise InfrastructureError("collect() before the first start_window()")
            end_s = max(window.end_ns, window.start_ns) / 1e9
            seconds = max(1e-9, end_s - window.start_ns / 1e9)
            total_weight = sum(window.weights.values()) or 1.0
            targets = {}
            for name, totals in window.targets.items():
                share = window.weights.get(name, 0.0) / total_weight
                targets[name] = TargetWindow(
                    name=name, latency=totals.histograms[Metric.LATENCY].copy(),
                    requests=totals.completed, errors=totals.errors,
                    intended_rps=window.intended * share / seconds if window.end_ns else 0.0,
                    achieved_rps=totals.completed / seconds if window.end_ns else 0.0,
                    outcomes={o.label: n for o, n in totals.outcomes.items()})
            return WindowMeasurement(start=window.start_ns / 1e9, end=end_s, targets=targets,
                                     telemetry=tuple(window.telemetry))

    def stop(self):
        if self.run is not None:
            async def finish():
                if self.run.status is RunStatus.RUNNING:
                    await self.run.stop("readiness: load no longer needed")
                    await self.run.wait(self.call_timeout_s)
                await self.run.close()
            self._call(finish())
            self.run = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.call_timeout_s)


class _Window:
    def __init__(self, targets, rate, weights):
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.intended = 0
        self.rate = rate
        self.weights = dict(weights)
        self.targets = {t.name: TargetTotals.empty(HistogramLayout()) for t in targets}
        self.telemetry = []


def rtt_samples(plan):
    """Connects per target for an RTT p95 claim: twice the minimum-sample rule's need at the
    plan's confidence, so one slow connect does not decide the bound, and never fewer than
    RTT_SAMPLES_MIN (the classifier may raise the confidence for riskier deployments)."""
    confidence = (plan.gates.confidence or DEFAULT_CONFIDENCE) / 100.0
    return max(RTT_SAMPLES_MIN, 2 * min_samples_for_percentile(95.0, confidence))


def _long_schedule(load, rate, horizon_s):
    # Windows are cut by the orchestrator, so the schedule only has to outlast them.
    if load.schedule().model is ArrivalModel.POISSON:
        return Poisson(rate, horizon_s, load.seed)
    return ConstantRate(rate, horizon_s)


def _sample(sample):
    gpus = list(sample.gpus)

    def mean(values):
        return sum(values) / len(values) if values else None
    return TelemetrySample(
        time=sample.unix_ns / 1e9, cpu=sample.host.cpu_percent if sample.HasField("host") else None,
        gpu_utilization=mean([g.utilization_percent for g in gpus
                              if "utilization_percent" in g.available]),
        sm_activity=mean([g.sm_activity_percent for g in gpus
                          if "sm_activity_percent" in g.available]),
        gpu_memory=mean([100.0 * g.memory_used_bytes / g.memory_total_bytes for g in gpus
                         if g.memory_total_bytes]))
