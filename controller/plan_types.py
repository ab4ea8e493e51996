"""The plan as frozen dataclasses, built from (and turned back into) the canonical dict.

The canonical dict is what plan_spec.validate returns: the YAML key names, durations as
seconds, percents as numbers of percent, sizes as bytes.  ``Plan.to_dict()`` gives it back
exactly, so a plan shipped as JSON/YAML and rebuilt with ``Plan.from_dict`` is equal.
A field left out of the plan is None (or empty): the classification decides its default,
which is how a plan's own tightening is told apart from the defaults.
"""
from dataclasses import dataclass, field, fields, replace

from loadgate.controller.plan_model import (
    AgentLossPolicy, Arrival, DeploymentType, Environment, HttpMethod, RelativeTest, Risk,
    RotateMode, Strategy, TargetRole, TrafficShift)
from loadgate.controller.plan_units import parse_percentile_key, percentile_key
from loadgate.native.schedule import make_schedule


def _get(data, key, default=None):
    value = (data or {}).get(key)
    return default if value is None else value


def _enum(enum_type, value, default=None):
    return default if value is None else enum_type(value)


def _drop_none(mapping):
    return {key: value for key, value in mapping.items()
            if value is not None and value != [] and value != {}}


@dataclass(frozen=True)
class Deployment:
    id: str
    type: DeploymentType
    risk: Risk
    environment: Environment
    strategy: Strategy
    requested_by: str = ""
    description: str = ""


@dataclass(frozen=True)
class RequestPlan:
    method: str = "GET"
    path: str = "/"
    headers: tuple = ()
    body: bytes = b""
    rotate_file: str = None
    rotate_mode: RotateMode = RotateMode.BODY


@dataclass(frozen=True)
class TargetPlan:
    name: str
    url: str
    role: TargetRole = TargetRole.MAIN
    weight: float = 1.0
    request: RequestPlan = field(default_factory=RequestPlan)


@dataclass(frozen=True)
class RateStep:
    rate: float
    duration_s: float


@dataclass(frozen=True)
class LoadPlan:
    rate: float = None
    duration_s: float = 30.0
    arrival: Arrival = Arrival.CONSTANT
    seed: int = 0
    connections: int = 8
    max_connections: int = 256
    timeout_s: float = 5.0
    interval_s: float = 1.0
    warmup_s: float = 0.0
    concurrency: int = None
    think_time_s: float = 0.0
    ramp_to: float = None
    steps: tuple = ()

    def schedule(self):
        """The arrival schedule of this load (a loadgate.native.schedule object)."""
        return make_schedule(self.arrival.value, self.rate, self.duration_s, self.seed,
                             end_rate=self.ramp_to,
                             steps=tuple((s.rate, s.duration_s) for s in self.steps),
                             concurrency=self.concurrency, think_time_s=self.think_time_s)


@dataclass(frozen=True)
class KneePlan:
    start: float
    step: float
    max: float
    window_s: float = 10.0


@dataclass(frozen=True)
class Hook:
    command: tuple = ()
    webhook: str = None
    timeout_s: float = 30.0


@dataclass(frozen=True)
class ThroughputLimit:
    min_rps: float = None
    min_ratio: float = None


@dataclass(frozen=True)
class SaturationLimits:
    cpu: float = None
    gpu_utilization: float = None
    sm_activity: float = None
    gpu_memory: float = None


@dataclass(frozen=True)
class RelativeGates:
    test: RelativeTest = None
    alpha: float = None
    min_effect: float = None
    ratios: tuple = ()


@dataclass(frozen=True)
class GatesPlan:
    """Percents are numbers of percent; latency and ratios are ((percentile, limit), ...)."""

    confidence: float = None
    latency: tuple = ()
    error_rate: float = None
    throughput: ThroughputLimit = field(default_factory=ThroughputLimit)
    saturation: SaturationLimits = field(default_factory=SaturationLimits)
    relative: RelativeGates = None


@dataclass(frozen=True)
class CanaryPlan:
    steps: tuple = ()
    hold_s: float = None
    max_hold_s: float = None
    traffic: TrafficShift = TrafficShift.SPLIT


@dataclass(frozen=True)
class RollingPlan:
    instances: int = None
    batch_size: int = 1
    min_available: float = None


@dataclass(frozen=True)
class HooksPlan:
    traffic_shift: Hook = None
    rollback: Hook = None
    switch: Hook = None
    verify_switch: Hook = None
    instance_step: Hook = None


@dataclass(frozen=True)
class GpuRequirement:
    type: str = None
    count: int = None
    memory_bytes: int = None


@dataclass(frozen=True)
class CpuRequirement:
    cores: int = None
    memory_bytes: int = None


@dataclass(frozen=True)
class InfrastructurePlan:
    gpu: GpuRequirement = None
    cpu: CpuRequirement = None
    rtt_p95_s: float = None


@dataclass(frozen=True)
class MonitoringPlan:
    alert_rules: str = None
    dashboard: str = None
    metrics_url: str = None
    alert_interval_s: float = None
    post_deploy_window_s: float = None
    smoke: bool = None


@dataclass(frozen=True)
class RollbackPlan:
    strategy: str = None
    rto_s: float = None
    script: str = None
    procedure: str = None
    tested_in_staging: bool = None


@dataclass(frozen=True)
class ApprovalPlan:
    required: bool = None
    approvers: tuple = ()


@dataclass(frozen=True)
class Override:
    key: str
    reason: str


@dataclass(frozen=True)
class DowntimeWindow:
    start: str
    end: str


@dataclass(frozen=True)
class Plan:
    api_version: str
    deployment: Deployment
    targets: tuple
    load: LoadPlan
    knee: KneePlan = None
    agents: tuple = ()
    local_agents: int = 1
    agent_loss: AgentLossPolicy = AgentLossPolicy.ABORT
    gates: GatesPlan = field(default_factory=GatesPlan)
    canary: CanaryPlan = field(default_factory=CanaryPlan)
    rolling: RollingPlan = field(default_factory=RollingPlan)
    hooks: HooksPlan = field(default_factory=HooksPlan)
    infrastructure: InfrastructurePlan = field(default_factory=InfrastructurePlan)
    monitoring: MonitoringPlan = field(default_factory=MonitoringPlan)
    rollback: RollbackPlan = field(default_factory=RollbackPlan)
    approval: ApprovalPlan = field(default_factory=ApprovalPlan)
    overrides: tuple = ()
    downtime_window: DowntimeWindow = None
    staging_evidence: str = None
    source: str = field(default="<plan>", compare=False)

    def target(self, role):
        """The first target with this role, or None."""
        return next((t for t in self.targets if t.role is role), None)

    def replace(self, **changes):
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data, source="<dict>"):
        """A validated Plan from a plain dict (YAML/JSON shipped over gRPC); PlanError if bad."""
        from loadgate.controller.plan import plan_from_data
        return plan_from_data(data, source)

    def to_dict(self):
        """The canonical dict; Plan.from_dict(plan.to_dict()) == plan."""
        return to_canonical(self)


def _hook(data):
    if data is None:
        return None
    return Hook(tuple(_get(data, "command", ())), data.get("webhook"),
                _get(data, "timeout", 30.0))


def _hook_dict(hook):
    if hook is None:
        return None
    return _drop_none({"command": list(hook.command), "webhook": hook.webhook,
                       "timeout": hook.timeout_s})


def build_plan(data, source):
    """The Plan of a canonical dict that validated cleanly."""
    dep = data["deployment"]
    deployment = Deployment(dep["id"], DeploymentType(dep["type"]), Risk(dep["risk"]),
                            Environment(dep["environment"]), Strategy(dep["strategy"]),
                            _get(dep, "requested_by", ""), _get(dep, "description", ""))
    targets = tuple(_target(t) for t in data["targets"])
    load = data["load"]
    load_plan = LoadPlan(
        load.get("rate"), _get(load, "duration", 30.0), _enum(Arrival, load.get("arrival"),
                                                               Arrival.CONSTANT),
        _get(load, "seed", 0), _get(load, "connections", 8), _get(load, "max_connections", 256),
        _get(load, "timeout", 5.0), _get(load, "interval", 1.0), _get(load, "warmup", 0.0),
        load.get("concurrency"), _get(load, "think_time", 0.0), load.get("ramp_to"),
        tuple(RateStep(s["rate"], s["duration"]) for s in _get(load, "steps", ())))
    gates = data.get("gates") or {}
    throughput = gates.get("throughput") or {}
    saturation = gates.get("saturation") or {}
    relative = gates.get("relative")
    canary = data.get("canary") or {}
    rolling = data.get("rolling") or {}
    hooks = data.get("hooks") or {}
    infra = data.get("infrastructure") or {}
    gpu, cpu = infra.get("gpu"), infra.get("cpu")
    monitoring = data.get("monitoring") or {}
    rollback = data.get("rollback") or {}
    approval = data.get("approval") or {}
    window = data.get("downtime_window")
    knee = data.get("knee")
    return Plan(
        api_version=data["apiVersion"], deployment=deployment, targets=targets, load=load_plan,
        knee=None if knee is None else KneePlan(knee["start"], knee["step"], knee["max"],
                                                _get(knee, "window", 10.0)),
        agents=tuple(_get(data, "agents", ())), local_agents=_get(data, "local_agents", 1),
        agent_loss=_enum(AgentLossPolicy, data.get("agent_loss"), AgentLossPolicy.ABORT),
        gates=GatesPlan(
            gates.get("confidence"), _percentile_pairs(gates.get("latency")),
            gates.get("error_rate"),
            ThroughputLimit(throughput.get("min_rps"), throughput.get("min_ratio")),
            SaturationLimits(saturation.get("cpu"), saturation.get("gpu_utilization"),
                             saturation.get("sm_activity"), saturation.get("gpu_memory")),
            None if relative is None else RelativeGates(
                _enum(RelativeTest, relative.get("test")), relative.get("alpha"),
                relative.get("min_effect"), _percentile_pairs(relative.get("ratios")))),
        canary=CanaryPlan(tuple(_get(canary, "steps", ())), canary.get("hold"),
                          canary.get("max_hold"),
                          _enum(TrafficShift, canary.get("traffic"), TrafficShift.SPLIT)),
        rolling=RollingPlan(rolling.get("instances"), _get(rolling, "batch_size", 1),
                            rolling.get("min_available")),
        hooks=HooksPlan(*(_hook(hooks.get(f.name)) for f in fields(HooksPlan))),
        infrastructure=InfrastructurePlan(
            None if gpu is None else GpuRequirement(gpu.get("type"), gpu.get("count"),
                                                    gpu.get("memory")),
            None if cpu is None else CpuRequirement(cpu.get("cores"), cpu.get("memory")),
            (infra.get("network") or {}).get("rtt_p95")),
        monitoring=MonitoringPlan(
            monitoring.get("alert_rules"), monitoring.get("dashboard"),
            monitoring.get("metrics_url"), monitoring.get("alert_interval"),
            monitoring.get("post_deploy_window"), monitoring.get("smoke")),
        rollback=RollbackPlan(rollback.get("strategy"), rollback.get("rto"),
                              rollback.get("script"), rollback.get("procedure"),
                              rollback.get("tested_in_staging")),
        approval=ApprovalPlan(approval.get("required"), tuple(_get(approval, "approvers", ()))),
        overrides=tuple(Override(o["key"], o["reason"]) for o in _get(data, "overrides", ())),
        downtime_window=None if window is None else DowntimeWindow(window["start"],
                                                                   window["end"]),
        staging_evidence=data.get("staging_evidence"),
        source=source)


def _percentile_pairs(mapping):
    return tuple(sorted((parse_percentile_key(key), value)
                        for key, value in (mapping or {}).items()))


def _pairs_dict(pairs):
    return {percentile_key(p): value for p, value in pairs}


def _target(data):
    request = data.get("request") or {}
    return TargetPlan(
        data["name"], data["url"], _enum(TargetRole, data.get("role"), TargetRole.MAIN),
        _get(data, "weight", 1.0),
        RequestPlan(_get(request, "method", HttpMethod.GET.value), _get(request, "path", "/"),
                    tuple(_get(request, "headers", {}).items()),
                    _get(request, "body", "").encode("utf-8"), request.get("rotate_file"),
                    _enum(RotateMode, request.get("rotate_mode"), RotateMode.BODY)))


def to_canonical(plan):
    """The canonical dict of a Plan (the inverse of build_plan)."""
    d, load, gates = plan.deployment, plan.load, plan.gates
    relative = gates.relative
    infra = plan.infrastructure
    return _drop_none({
        "apiVersion": plan.api_version,
        "deployment": _drop_none({
            "id": d.id, "type": d.type.value, "risk": d.risk.value,
            "environment": d.environment.value, "strategy": d.strategy.value,
            "requested_by": d.requested_by or None, "description": d.description or None}),
        "targets": [_drop_none({
            "name": t.name, "url": t.url, "role": t.role.value, "weight": t.weight,
            "request": _drop_none({
                "method": t.request.method, "path": t.request.path,
                "headers": dict(t.request.headers), "body": t.request.body.decode("utf-8") or None,
                "rotate_file": t.request.rotate_file,
                "rotate_mode": t.request.rotate_mode.value})}) for t in plan.targets],
        "load": _drop_none({
            "rate": load.rate, "duration": load.duration_s, "arrival": load.arrival.value,
            "seed": load.seed, "connections": load.connections,
            "max_connections": load.max_connections, "timeout": load.timeout_s,
            "interval": load.interval_s, "warmup": load.warmup_s,
            "concurrency": load.concurrency, "think_time": load.think_time_s,
            "ramp_to": load.ramp_to,
            "steps": [{"rate": s.rate, "duration": s.duration_s} for s in load.steps]}),
        "knee": None if plan.knee is None else {
            "start": plan.knee.start, "step": plan.knee.step, "max": plan.knee.max,
            "window": plan.knee.window_s},
        "agents": list(plan.agents),
        "local_agents": None if plan.agents else plan.local_agents,
        "agent_loss": plan.agent_loss.value,
        "gates": _drop_none({
            "confidence": gates.confidence, "latency": _pairs_dict(gates.latency),
            "error_rate": gates.error_rate,
            "throughput": _drop_none({"min_rps": gates.throughput.min_rps,
                                      "min_ratio": gates.throughput.min_ratio}),
            "saturation": _drop_none({f.name: getattr(gates.saturation, f.name)
                                      for f in fields(SaturationLimits)}),
            "relative": None if relative is None else _drop_none({
                "test": relative.test.value if relative.test else None,
                "alpha": relative.alpha, "min_effect": relative.min_effect,
                "ratios": _pairs_dict(relative.ratios)})}),
        "canary": _drop_none({"steps": list(plan.canary.steps), "hold": plan.canary.hold_s,
                              "max_hold": plan.canary.max_hold_s,
                              "traffic": plan.canary.traffic.value}),
        "rolling": _drop_none({"instances": plan.rolling.instances,
                               "batch_size": plan.rolling.batch_size,
                               "min_available": plan.rolling.min_available}),
        "hooks": _drop_none({f.name: _hook_dict(getattr(plan.hooks, f.name))
                             for f in fields(HooksPlan)}),
        "infrastructure": _drop_none({
            "gpu": None if infra.gpu is None else _drop_none({
                "type": infra.gpu.type, "count": infra.gpu.count,
                "memory": infra.gpu.memory_bytes}),
            "cpu": None if infra.cpu is None else _drop_none({
                "cores": infra.cpu.cores, "memory": infra.cpu.memory_bytes}),
            "network": _drop_none({"rtt_p95": infra.rtt_p95_s})}),
        "monitoring": _drop_none({
            "alert_rules": plan.monitoring.alert_rules, "dashboard": plan.monitoring.dashboard,
            "metrics_url": plan.monitoring.metrics_url,
            "alert_interval": plan.monitoring.alert_interval_s,
            "post_deploy_window": plan.monitoring.post_deploy_window_s,
            "smoke": plan.monitoring.smoke}),
        "rollback": _drop_none({
            "strategy": plan.rollback.strategy, "rto": plan.rollback.rto_s,
            "script": plan.rollback.script, "procedure": plan.rollback.procedure,
            "tested_in_staging": plan.rollback.tested_in_staging}),
        "approval": _drop_none({"required": plan.approval.required,
                                "approvers": list(plan.approval.approvers)}),
        "overrides": [{"key": o.key, "reason": o.reason} for o in plan.overrides],
        "downtime_window": None if plan.downtime_window is None else {
            "start": plan.downtime_window.start, "end": plan.downtime_window.end},
        "staging_evidence": plan.staging_evidence,
    })
