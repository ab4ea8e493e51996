"""The controller's Prometheus exporter: the run merged over every agent, and its stages.

API (names and labels come from ``loadgate.native.metric_names``; all ``loadgate_run_*``,
``loadgate_stage_state``, ``loadgate_canary_weight`` ...)::

    metrics = ControllerMetrics(registry=None, buckets=LATENCY_BUCKETS_SECONDS)
    metrics.follow_run(run, deployment_id="")          # a runner.DistributedRun, from now on
    metrics.set_run(run_id, deployment_id)
    metrics.observe_interval(merged, interval_s=None)  # merge.MergedInterval, as handed out
    metrics.set_agent_up(agent_id, up)                 # False once an agent is declared lost
    metrics.set_stage(stage, state)                    # enums or strings (label = .value)
    metrics.set_canary_weight(weight_percent)          # 0..100, exported as a 0..1 ratio
    metrics.set_gate(gate, outcome)                    # a gate's latest outcome
    metrics.set_verdict(verdict)
    server = metrics.serve(port=0, addr="127.0.0.1")   # MetricsServer: .port, .url, .close()

Counters and histograms add each merged interval's deltas, so a correction (late data for an
interval already handed out) adds exactly what was missing; the rate and agent gauges follow
the newest on-time interval only.  Histograms are fed from the merged HDR histograms bucket by
bucket, so the Prometheus buckets count every request of the run.
"""
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from loadgate.controller.merge import Metric as HdrMetric
from loadgate.controller.runner_session import AgentState
from loadgate.native import metric_names as names

_HISTOGRAMS = {
    HdrMetric.LATENCY: names.RUN_REQUEST_LATENCY,
    HdrMetric.SERVICE_TIME: names.RUN_SERVICE_TIME,
    HdrMetric.SCHEDULE_LAG: names.RUN_SCHEDULE_LAG,
}


def _label(value):
    return str(getattr(value, "value", value))


class ControllerMetrics:
    def __init__(self, registry=None, buckets=names.LATENCY_BUCKETS_SECONDS):
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.registry = registry
        self.store = names.MetricStore(names.CONTROLLER_METRICS, buckets)
        self.registry.register(self.store)
        self._stage_states = {}  # stage label -> state labels exported for it
        self._gate_outcomes = {}

    def follow_run(self, run, deployment_id=""):
        """Exports a DistributedRun as it goes: each merged interval it hands out, and, on
        every scrape, which of its agents the controller still hears."""
        self.set_run(run.run_id, deployment_id)
        run.add_listener(self.observe_interval)

        def agents_heard():
            for session in run.sessions:
                self.set_agent_up(session.agent_id,
                                  session.state not in (AgentState.LOST, AgentState.FAULTY))

        self.store.before_collect = agents_heard

    def set_run(self, run_id, deployment_id):
        self.store.clear(names.RUN_DEPLOYMENT)
        self.store.set(names.RUN_DEPLOYMENT, 1, run_id, deployment_id)

    def observe_interval(self, merged, interval_s=None):
        """Adds a merged interval; ``interval_s`` defaults to its span on the controller clock."""
        store = self.store
        for name, totals in merged.targets.items():
            for hdr_metric, metric in _HISTOGRAMS.items():
                store.observe_histogram(metric, totals.histograms[hdr_metric], name)
            for outcome, count in totals.outcomes.items():
                store.inc(names.RUN_REQUESTS, count, name, outcome.label)
            store.inc(names.RUN_REQUESTS_SENT, totals.sent, name)
            store.inc(names.RUN_REQUESTS_LATE, totals.late, name)
        store.inc(names.RUN_REQUESTS_INTENDED, merged.intended)
        if merged.correction:
            return
        store.inc(names.RUN_INTERVALS, 1)
        if interval_s is None and merged.end_ns > merged.start_ns:
            interval_s = (merged.end_ns - merged.start_ns) / 1e9
        if interval_s:
            store.set(names.RUN_RATE_INTENDED, merged.intended / interval_s)
            store.set(names.RUN_RATE_ACHIEVED, merged.completed / interval_s)
        store.set(names.RUN_AGENTS_REPORTING, len(merged.agents))
        store.set(names.RUN_AGENTS_MISSING, len(merged.missing))
        store.set(names.RUN_AGENTS_SATURATED, len(merged.saturated))
        store.set(names.RUN_MAX_LAG, merged.max_lag_us * 1e-6)

    def set_agent_up(self, agent_id, up):
        self.store.set(names.AGENT_UP, 1 if up else 0, agent_id)

    def set_stage(self, stage, state):
        """Marks ``state`` as the stage's current state (1) and its earlier states 0."""
        self._set_one_of(names.STAGE_STATE, self._stage_states, _label(stage), _label(state))

    def set_canary_weight(self, weight_percent):
        self.store.set(names.CANARY_WEIGHT, weight_percent / 100.0)

    def set_gate(self, gate, outcome):
        self._set_one_of(names.GATE_OUTCOME, self._gate_outcomes, _label(gate), _label(outcome))

    def set_verdict(self, verdict):
        self.store.clear(names.RUN_VERDICT)
        self.store.set(names.RUN_VERDICT, 1, _label(verdict))

    def _set_one_of(self, metric, seen, key, current):
        # Earlier values stay at 0 rather than vanishing, so a dashboard sees the change.
        known = seen.setdefault(key, set())
        known.add(current)
        for value in known:
            self.store.set(metric, 1 if value == current else 0, key, value)

    def serve(self, port=0, addr="127.0.0.1"):
        """Starts ``/metrics`` on addr:port (0 picks a free port); returns the MetricsServer."""
        return names.MetricsServer(self.registry, port, addr)
