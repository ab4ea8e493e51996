"""What a distributed run does, independent of where it runs: targets, schedule, engine
settings, the agent-loss policy; and the exact split of that work into agents' RunSpecs.

A ``RunDefinition`` comes from a Plan (``from_plan``) or is built directly by a caller that
drives load windows itself (the readiness orchestrator).  It round-trips through
``to_dict``/``from_dict`` so the run directory can describe the run to a resuming controller.
"""
import base64
import os
from dataclasses import dataclass, field, replace

from loadgate.controller.plan_model import AgentLossPolicy, RotateMode
from loadgate.native.engine_config import load_rotate_file
from loadgate.native.errors import ConfigError
from loadgate.native.schedule import ArrivalModel, schedule_from_dict
from loadgate.proto.loadgate.v1 import agent_pb2

DEFAULT_DEAD_MAN_S = 5.0


@dataclass(frozen=True)
class TargetDefinition:
    """One target and the request sent to it (rotate items already read from their file)."""

    name: str
    url: str
    weight: float = 1.0
    method: str = "GET"
    path: str = "/"
    headers: tuple = ()  # ((name, value), ...)
    body: bytes = b""
    rotate: tuple = ()  # bodies or raw requests used in turn
    rotate_raw_requests: bool = False

    def to_proto(self):
        request = agent_pb2.RequestTemplate(
            method=self.method, path=self.path,
            headers=[agent_pb2.Header(name=k, value=v) for k, v in self.headers],
            body=self.body, rotate=list(self.rotate),
            rotate_raw_requests=self.rotate_raw_requests)
        return agent_pb2.TargetSpec(name=self.name, url=self.url, weight=self.weight,
                                    request=request)

    def to_dict(self):
        return {"name": self.name, "url": self.url, "weight": self.weight,
                "method": self.method, "path": self.path,
                "headers": [list(h) for h in self.headers],
                "body": base64.b64encode(self.body).decode("ascii"),
                "rotate": [base64.b64encode(r).decode("ascii") for r in self.rotate],
                "rotate_raw_requests": self.rotate_raw_requests}

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"], d["url"], d["weight"], d["method"], d["path"],
                   tuple(tuple(h) for h in d["headers"]), base64.b64decode(d["body"]),
                   tuple(base64.b64decode(r) for r in d["rotate"]), d["rotate_raw_requests"])


@dataclass(frozen=True)
class RunDefinition:
    """Everything the agents need to know about a run, before it is split among them."""

    targets: tuple  # TargetDefinition
    schedule: object  # a loadgate.native.schedule schedule (unsharded)
    connections: int = 8
    max_connections: int = 256
    timeout_s: float = 5.0
    interval_s: float = 1.0
    workers_per_agent: int = 0  # 0: the agent's own default (one per core)
    dead_man_s: float = DEFAULT_DEAD_MAN_S
    agent_loss: AgentLossPolicy = AgentLossPolicy.ABORT
    labels: dict = field(default_factory=dict)  # free-form, copied into the summary

    def __post_init__(self):
        names = [t.name for t in self.targets]
        if not names:
            raise ConfigError("a run needs at least one target")
        if len(set(names)) != len(names):
            raise ConfigError(f"target names must be unique, got {names}")
        if not self.interval_s > 0:
            raise ConfigError(f"interval_s must be positive, got {self.interval_s!r}")

    @property
    def target_names(self):
        return tuple(t.name for t in self.targets)

    @property
    def duration_s(self):
        return self.schedule.duration_s

    def with_weights(self, weights):
        """The same run with some targets' weights replaced."""
        unknown = set(weights) - set(self.target_names)
        if unknown:
            raise ConfigError(f"no such target(s): {', '.join(sorted(unknown))}")
        return replace(self, targets=tuple(replace(t, weight=weights.get(t.name, t.weight))
                                           for t in self.targets))

    @classmethod
    def from_plan(cls, plan, workers_per_agent=0):
        """The run a plan's ``targets`` and ``load`` describe."""
        plan_dir = os.path.dirname(os.path.abspath(plan.source)) \
            if os.path.exists(plan.source) else os.getcwd()
        targets = tuple(_target_from_plan(t, plan_dir) for t in plan.targets)
        load = plan.load
        return cls(targets=targets, schedule=load.schedule(), connections=load.connections,
                   max_connections=load.max_connections, timeout_s=load.timeout_s,
                   interval_s=load.interval_s, workers_per_agent=workers_per_agent,
                   agent_loss=plan.agent_loss,
                   labels={"deployment_id": plan.deployment.id, "plan": plan.source})

    def shard_requests(self, index, count):
        """Arrivals shard ``index`` of ``count`` generates (0 for a closed loop)."""
        return self.schedule.shard(index, count).total_count()

    def run_spec(self, index, count):
        """The RunSpec of the agent generating shard ``index`` of ``count``."""
        return agent_pb2.RunSpec(
            targets=[t.to_proto() for t in self.targets],
            schedule=schedule_spec(self.schedule, index, count),
            connections=self.connections, max_connections=self.max_connections,
            timeout_s=self.timeout_s, interval_s=self.interval_s,
            workers=self.workers_per_agent, dead_man_s=self.dead_man_s)

    def to_dict(self):
        return {"targets": [t.to_dict() for t in self.targets],
                "schedule": self.schedule.to_dict(), "connections": self.connections,
                "max_connections": self.max_connections, "timeout_s": self.timeout_s,
                "interval_s": self.interval_s, "workers_per_agent": self.workers_per_agent,
                "dead_man_s": self.dead_man_s, "agent_loss": self.agent_loss.value,
                "labels": dict(self.labels)}

    @classmethod
    def from_dict(cls, d):
        return cls(targets=tuple(TargetDefinition.from_dict(t) for t in d["targets"]),
                   schedule=schedule_from_dict(d["schedule"]), connections=d["connections"],
                   max_connections=d["max_connections"], timeout_s=d["timeout_s"],
                   interval_s=d["interval_s"], workers_per_agent=d["workers_per_agent"],
                   dead_man_s=d["dead_man_s"], agent_loss=AgentLossPolicy(d["agent_loss"]),
                   labels=dict(d["labels"]))


def schedule_spec(schedule, index, count):
    """The wire form of ``schedule`` with this agent's shard; the agent calls ``.shard``."""
    fields = schedule.to_dict()
    model = ArrivalModel(fields["model"])
    spec = agent_pb2.ScheduleSpec(model=model.value, duration_s=schedule.duration_s,
                                  shard_index=index, shard_count=count)
    if model is ArrivalModel.RAMP:
        spec.rate, spec.end_rate = fields["start_rate"], fields["end_rate"]
    elif model is ArrivalModel.STEPS:
        spec.steps.extend(agent_pb2.Step(rate=r, duration_s=d) for r, d in fields["steps"])
    elif model is ArrivalModel.CLOSED:
        spec.concurrency, spec.think_time_s = fields["concurrency"], fields["think_time_s"]
    else:
        spec.rate = fields["rate"]
        if model is ArrivalModel.POISSON:
            spec.seed = fields["seed"]
    if fields.get("shard_count", 1) != 1:
        raise ConfigError("a distributed run splits the whole schedule, not a shard of it")
    return spec


def _target_from_plan(target, plan_dir):
    request = target.request
    rotate, raw = (), False
    if request.rotate_file:
        rotate, raw = _read_rotate(os.path.join(plan_dir, request.rotate_file),
                                   request.rotate_mode)
    return TargetDefinition(
        name=target.name, url=target.url, weight=target.weight, method=request.method,
        path=request.path, headers=tuple((str(k), str(v)) for k, v in request.headers),
        body=request.body, rotate=rotate, rotate_raw_requests=raw)


def _read_rotate(path, mode):
    # The engine owns the rotation-file format; the controller reads the file (the agents
    # may be on other nodes) and ships the items.
    raw = mode is RotateMode.REQUEST
    return tuple(load_rotate_file(path, "requests" if raw else "bodies")), raw
