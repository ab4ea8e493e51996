"""The stages before deployment: Infrastructure, Performance and Monitoring.

Mixed into Readiness (readiness.py); each stage is a generator that returns True when the
stage reached its SV output, or False after ending the run (blocked, failed, inconclusive).
"""
import os

from loadgate.controller import verdict as verdict_module
from loadgate.controller.gates import GateStatus, combine, latency_gate
from loadgate.controller.journal import RecordKind, StepPhase
from loadgate.controller.plan_model import Environment, TargetRole
from loadgate.controller.plan_types import GatesPlan
from loadgate.controller.plan_units import format_duration
from loadgate.controller.readiness_checks import (
    check_alert_rules, check_capacity, check_dashboard, check_metrics)
from loadgate.controller.readiness_rollout import failed_reasons, inconclusive_reasons
from loadgate.controller.states import Node, Stage, State, SubStage
from loadgate.controller.verdict import RunStatus


class PreDeploymentStages:

    def _infrastructure(self, stage):
        self._to(stage, State.V_PROTSESSE, "validating capacity, environment and network")
        capacity_node = Node(Stage.INFRASTRUCTURE, SubStage.CAPACITY)
        if not self.machine.state(capacity_node).perfective:
            self._to(capacity_node, State.V_PROTSESSE, "reading the agents' capacity")
            capacity = self.source.describe()
            self.gpu_unavailable = capacity.gpu_unavailable_reason
            check = check_capacity(self.plan.infrastructure, capacity)
            if not check.ok:
                return self._block(capacity_node, check.reason, check.evidence,
                                   RunStatus.BLOCKED, verdict_module.ErrorKind.INFRASTRUCTURE)
            self._to(capacity_node, State.ZAVERSHENO, check.reason, check.evidence)
        yield from self._pause()
        rtt = self.source.measure_rtt()
        environment = Node(Stage.INFRASTRUCTURE, SubStage.ENVIRONMENT)
        if not self.machine.state(environment).perfective:
            self._to(environment, State.V_PROTSESSE, "checking every target answers")
            silent = [t.name for t in self.plan.targets
                      if rtt.get(t.name) is None or rtt[t.name].total_count == 0]
            if silent:
                return self._block(environment, f"no answer from {', '.join(silent)}",
                                   {"silent": silent}, RunStatus.BLOCKED,
                                   verdict_module.ErrorKind.INFRASTRUCTURE)
            self._to(environment, State.ZAVERSHENO,
                     f"all {len(self.plan.targets)} targets answer",
                     {name: hist.total_count for name, hist in rtt.items()})
        network = Node(Stage.INFRASTRUCTURE, SubStage.NETWORK)
        if not self.machine.state(network).perfective:
            if not self._network(network, rtt):
                return False
        self._to(stage, State.ZAVERSHENO, "capacity, environment and network validated")
        return True

    def _network(self, node, rtt):
        self._to(node, State.TESTIRUYETSYA, "judging round-trip times to the targets")
        evidence = {name: hist.value_at_percentile(95) / 1000.0 for name, hist in rtt.items()}
        limit = self.plan.infrastructure.rtt_p95_s
        if limit is None:
            self._to(node, State.ZAVERSHENO, "no RTT requirement in the plan; measured p95 "
                     + ", ".join(f"{n} {v:.3f} ms" for n, v in evidence.items()), evidence)
            return True
        confidence = self.plan.gates.confidence / 100.0
        results = [latency_gate(f"{t.name}.rtt.p95", rtt[t.name], 95.0, limit, confidence,
                                "network") for t in self.plan.targets]
        self._record_step(StepPhase.NETWORK, "network", results)
        status = combine(results)
        reason = "; ".join(f"{r.name}: {r.reason}" for r in results)
        if status is GateStatus.FAIL:
            return self._block(node, reason, evidence, RunStatus.BLOCKED,
                               verdict_module.ErrorKind.INFRASTRUCTURE)
        if status is GateStatus.INCONCLUSIVE:
            return self._inconclusive(f"{node.title}: {reason}")
        self._to(node, State.PROVERENO, reason, evidence)
        return True

    def static_weights(self):
        """{target: fraction} of the plan's own target weights (performance windows)."""
        total = sum(t.weight for t in self.plan.targets)
        return {t.name: t.weight / total for t in self.plan.targets} if total else \
            {t.name: 1.0 / len(self.plan.targets) for t in self.plan.targets}

    def pair(self, weights):
        """(baseline, canary) names when both carry traffic, else (None, None)."""
        baseline = self.plan.target(TargetRole.BASELINE)
        canary = self.plan.target(TargetRole.CANARY)
        if baseline and canary and weights.get(baseline.name) and weights.get(canary.name):
            return baseline.name, canary.name
        return None, None

    def _performance(self, stage):
        self._to(stage, State.TESTIRUYETSYA, "benchmarking latency, throughput, utilisation")
        latency = Node(Stage.PERFORMANCE, SubStage.LATENCY)
        load = self.plan.load
        if "performance" not in self.windows or not self.machine.state(latency).perfective:
            weights = self.static_weights()
            judged = [name for name, share in weights.items() if share > 0]
            if self.plan.monitoring.smoke:
                self._to(latency, State.V_PROTSESSE, "smoke test at 10% of the rate")
                smoke_s = max(load.interval_s, 5.0)
                errors_only = GatesPlan(confidence=self.plan.gates.confidence,
                                        error_rate=self.plan.gates.error_rate)
                status, results, _ = yield from self.judge_window(
                    "smoke", weights, load.rate * 0.1, smoke_s, smoke_s, judged, (None, None),
                    errors_only)
                if status is GateStatus.FAIL:
                    return self._block(latency, "smoke test failed: " + failed_reasons(results))
            self._to(latency, State.VYPOLNYAETSYA,
                     f"load at {load.rate:g} req/s for {format_duration(load.duration_s)}")
            if load.warmup_s:
                self.source.start_window(weights, load.rate)
                yield from self._hold(load.warmup_s)
            self._to(latency, State.TESTIRUYETSYA, "measuring the performance window"
                     + (" after warm-up" if load.warmup_s else ""))
            status, results, measurement = yield from self.judge_window(
                "performance", weights, load.rate, load.duration_s, load.duration_s, judged,
                self.pair(weights))
            self._record_step(StepPhase.PERFORMANCE, "performance", results, measurement)
        results = self.windows["performance"]
        groups = ((latency, ".latency.", State.PROVERENO),
                  (Node(Stage.PERFORMANCE, SubStage.THROUGHPUT), ("throughput.", ".error_rate"),
                   State.PROVERENO),
                  (Node(Stage.PERFORMANCE, SubStage.RESOURCES), ("saturation.", "relative."),
                   State.PROVERENO))
        for node, marks, done in groups:
            if self.machine.state(node).perfective:
                continue
            marks = (marks,) if isinstance(marks, str) else marks
            group = [r for r in results if any(m in r.name or r.name.startswith(m)
                                               for m in marks)]
            self._to(node, State.TESTIRUYETSYA, f"judging {len(group)} gates of the "
                                                "performance window")
            status = combine(group)
            if status is GateStatus.FAIL:
                return self._block(node, failed_reasons(group), {"gates": [r.name for r in group]})
            if status is GateStatus.INCONCLUSIVE:
                return self._inconclusive(f"{node.title}: " + inconclusive_reasons(group))
            if node.sub is SubStage.THROUGHPUT and self.plan.knee is not None:
                yield from self._knee(node)
            self._to(node, done, f"{len(group)} gates passed" if group else
                     "no gates of this kind in the plan", {"gates": [r.name for r in group]})
        self._to(stage, State.PROVERENO, "performance gates passed")
        return True

    def _path(self, path):
        return path if not path or os.path.isabs(path) else os.path.join(self.base_dir, path)

    def _monitoring(self, stage):
        self._to(stage, State.V_PROTSESSE, "checking monitoring evidence")
        mon = self.plan.monitoring
        production = self.plan.deployment.environment is Environment.PRODUCTION
        checks = (
            (SubStage.METRICS, mon.metrics_url, lambda: check_metrics(mon.metrics_url)),
            (SubStage.ALERTING, mon.alert_rules or production, lambda: check_alert_rules(
                self._path(mon.alert_rules), self.plan.gates, mon.alert_interval_s)),
            (SubStage.DASHBOARDS, mon.dashboard or production,
             lambda: check_dashboard(self._path(mon.dashboard))))
        for sub, wanted, run_check in checks:
            node = Node(Stage.MONITORING, sub)
            if self.machine.state(node).perfective:
                continue
            self._to(node, State.V_PROTSESSE, f"checking {node.title.lower()}")
            if not wanted:
                self._to(node, State.ZAVERSHENO, "nothing named in the plan; not required for "
                         f"{self.plan.deployment.environment.value}")
                continue
            check = run_check()
            if not check.ok:
                return self._block(node, check.reason, check.evidence)
            self._to(node, State.PROVERENO, check.reason, check.evidence)
            yield from self._pause()
        self._to(stage, State.ODOBRENO, "monitoring evidence verified")
        return True

    def _knee(self, node):
        """Generator: raises the rate by the plan's knee steps while the latency and error-rate
        gates pass; the knee is the highest rate that passed.  Informational: its windows are
        journaled as KNEE steps, not verdict gates."""
        knee = self.plan.knee
        weights = self.static_weights()
        judged = [name for name, share in weights.items() if share > 0]
        slo = GatesPlan(confidence=self.plan.gates.confidence, latency=self.plan.gates.latency,
                        error_rate=self.plan.gates.error_rate)
        self.knee = {"rate": None, "stopped_at": None, "reason": "no step passed"}
        index, rate = 0, knee.start
        while rate <= knee.max * (1 + 1e-9):
            label = f"knee {rate:g} req/s"
            self._to(node, State.VYPOLNYAETSYA, f"knee search: {rate:g} req/s", {"rate": rate})
            status, results, measurement = yield from self.judge_window(
                label, weights, rate, knee.window_s, knee.window_s, judged, (None, None), slo)
            self._journal_step({
                "kind": RecordKind.STEP.value, "time": self.clock(),
                "phase": StepPhase.KNEE.value, "window": label, "index": index, "rate": rate,
                "status": status.value, "results": [r.to_dict() for r in results]})
            if status is not GateStatus.PASS:
                reasons = failed_reasons(results) or inconclusive_reasons(results)
                self.knee.update(stopped_at=rate, reason=f"{status.value} at {rate:g} req/s: "
                                                         f"{reasons}")
                break
            self.knee.update(rate=rate, reason=f"every step up to {rate:g} req/s passed")
            index, rate = index + 1, knee.start + (index + 1) * knee.step
        self._journal_step({"kind": RecordKind.STEP.value, "time": self.clock(),
                            "phase": StepPhase.KNEE.value, "window": "knee",
                            "status": GateStatus.PASS.value if self.knee["rate"] else
                            GateStatus.INCONCLUSIVE.value, "summary": dict(self.knee)})
        self._to(node, State.TESTIRUYETSYA, f"knee: {self.knee['reason']}", dict(self.knee))

