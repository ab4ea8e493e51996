"""Translation between the wire (RunSpec, IntervalReport) and the engine's own types.

Validation failures raise ConfigError; the server turns them into INVALID_ARGUMENT.
"""
import math
import os

from loadgate.native.engine import EngineConfig, RequestTemplate, TargetSpec
from loadgate.native.errors import ConfigError
from loadgate.native.outcomes import Outcome
from loadgate.native.schedule import ArrivalModel, schedule_from_dict
from loadgate.proto.loadgate.v1 import common_pb2

# A generator is saturated when its workers use nearly all of their cores, when sends are
# delayed past what pacing jitter explains, or when more than a trickle of sends is late.
SATURATED_CPU_PERCENT = 90.0
SATURATED_LAG_US = 10_000
SATURATED_LATE_FRACTION = 0.01

_OUTCOME_TO_WIRE = {o: common_pb2.Outcome.Value("OUTCOME_" + o.name) for o in Outcome}


def schedule_of(spec):
    """The shard of the run's schedule this agent generates, from a ScheduleSpec."""
    try:
        model = ArrivalModel(spec.model or "constant")
    except ValueError:
        raise ConfigError(f"unknown arrival model {spec.model!r}") from None
    if model is ArrivalModel.CONSTANT:
        d = {"rate": spec.rate, "duration_s": spec.duration_s}
    elif model is ArrivalModel.POISSON:
        d = {"rate": spec.rate, "duration_s": spec.duration_s, "seed": spec.seed}
    elif model is ArrivalModel.RAMP:
        d = {"start_rate": spec.rate, "end_rate": spec.end_rate, "duration_s": spec.duration_s}
    elif model is ArrivalModel.STEPS:
        d = {"steps": [[s.rate, s.duration_s] for s in spec.steps]}
    else:
        d = {"concurrency": spec.concurrency, "duration_s": spec.duration_s,
             "think_time_s": spec.think_time_s}
    d["model"] = model.value
    schedule = schedule_from_dict(d)
    count = spec.shard_count or 1
    if spec.shard_index >= count:
        raise ConfigError(f"shard {spec.shard_index} of {count} does not exist")
    return schedule.shard(spec.shard_index, count) if count > 1 else schedule


def peak_rate(spec):
    """The highest rate (requests/s) this agent's shard of ``spec`` asks for; 0 for closed loop."""
    model = spec.model or "constant"
    if model in ("constant", "poisson"):
        rate = spec.rate
    elif model == "ramp":
        rate = max(spec.rate, spec.end_rate)
    elif model == "steps":
        rate = max((s.rate for s in spec.steps), default=0.0)
    else:
        return 0.0
    return rate / max(1, spec.shard_count)


def _rotate_file(target, directory):
    # The engine reads rotation items from a file (engine_config's format): one body per
    # line, or whole requests separated by "%%" lines.  Items that format cannot carry are
    # refused rather than silently split.
    items = list(target.request.rotate)
    raw = target.request.rotate_raw_requests
    for item in items:
        if raw and (b"\n%%\n" in b"\n" + item.replace(b"\r\n", b"\n") + b"\n"):
            raise ConfigError(f"target {target.name!r}: a rotated request contains a %% line")
        if not raw and (not item.strip() or b"\n" in item or b"\r" in item):
            raise ConfigError(f"target {target.name!r}: rotated bodies must be single lines "
                              "that are not blank")
    path = os.path.join(directory, f"rotate-{len(os.listdir(directory))}")
    with open(path, "wb") as handle:
        handle.write((b"\n%%\n" if raw else b"\n").join(items) + b"\n")
    return path, ("requests" if raw else "bodies")


def engine_config(spec, schedule, scratch_dir=None, addresses=None):
    """An EngineConfig for a RunSpec whose schedule is already built; rotation items are
    written under ``scratch_dir`` (needed only when a target has them; it must outlive the
    run).  ``addresses`` maps a target's name to the IP address its connections are pinned
    to (the one the allowlist checked); a target not in it resolves its host itself."""
    if not spec.targets:
        raise ConfigError("a run needs at least one target")
    names = [t.name for t in spec.targets]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"target names must be unique and non-empty, got {names}")
    # proto3 cannot tell an unset weight from 0: all zero means an even split, otherwise a 0
    # is a target deliberately given no traffic (a canary at 0 %).
    even = all(t.weight == 0 for t in spec.targets)
    targets = []
    for target in spec.targets:
        template = target.request
        rotate = {}
        if template.rotate:
            rotate["rotate_file"], rotate["rotate_mode"] = _rotate_file(target, scratch_dir)
        if not math.isfinite(target.weight) or target.weight < 0:
            raise ConfigError(f"target {target.name!r}: weight must be a non-negative number")
        request = RequestTemplate(
            method=template.method or "GET", path=template.path or None,
            headers=tuple((h.name, h.value) for h in template.headers), body=template.body,
            **rotate)
        targets.append(TargetSpec(name=target.name, url=target.url,
                                  weight=1.0 if even else target.weight, request=request,
                                  address=(addresses or {}).get(target.name)))
    kwargs = {"connections": spec.connections or 16, "max_connections": spec.max_connections or 1024,
              "timeout_s": spec.timeout_s or 10.0, "interval_s": spec.interval_s or 1.0}
    for name, value in kwargs.items():
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    return EngineConfig(targets=targets, schedule=schedule, **kwargs)


def interval_report(snapshot, run_id, agent_id, seq, workers, telemetry=()):
    """The IntervalReport of one engine IntervalSnapshot; histograms encoded here, so call it
    off the gRPC event loop."""
    duration_s = max((snapshot.end_ns - snapshot.start_ns) / 1e9, 1e-9)
    report = common_pb2.IntervalReport(
        run_id=run_id, agent_id=agent_id, seq=seq, interval_index=snapshot.index,
        start_unix_ns=snapshot.start_ns, end_unix_ns=snapshot.end_ns,
        intended=snapshot.intended, sent=snapshot.sent, final=snapshot.final,
        intended_rate=snapshot.intended / duration_s)
    completed = 0
    late = 0
    for name, target in snapshot.targets.items():
        message = report.targets.add(
            name=name, latency=target.latency.encode_binary(),
            service_time=target.service_time.encode_binary(),
            schedule_lag=target.schedule_lag.encode_binary(),
            sent=target.sent, late=target.late, bytes_read=target.bytes_read)
        for outcome, count in sorted(target.outcomes.items()):
            if count:
                message.outcomes.add(outcome=_OUTCOME_TO_WIRE[Outcome(outcome)], count=count)
                if outcome != Outcome.NOT_SENT:
                    completed += count
        late += target.late
    report.achieved_rate = completed / duration_s
    cpu_percent = 100.0 * snapshot.cpu_seconds / (duration_s * max(1, workers))
    report.health.CopyFrom(common_pb2.GeneratorHealth(
        cpu_seconds=snapshot.cpu_seconds, cpu_percent=cpu_percent,
        max_lag_us=int(snapshot.max_lag_us), open_connections=snapshot.open_connections,
        workers=workers,
        saturated=(cpu_percent >= SATURATED_CPU_PERCENT or snapshot.max_lag_us >= SATURATED_LAG_US
                   or late > SATURATED_LATE_FRACTION * max(1, snapshot.sent))))
    report.telemetry.extend(telemetry)
    return report
