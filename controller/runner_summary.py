"""The summary of a distributed run: ``summary.json`` (schema in docs/summary-json.md) and
the table in ``summary.txt``.  Every figure comes from the merged totals; percentiles are
read from merged histograms, never averaged across agents."""
import enum

from loadgate.controller.merge import Metric
from loadgate.controller.rundir import HLOG_DIR, JOURNAL, RUN_FILE, TELEMETRY, hlog_name
from loadgate.controller.runner_session import AgentState
from loadgate.native.outcomes import Outcome

SCHEMA = "loadgate.run-summary/v1"
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99_9", 99.9))
# Above these the generator, not the target, may be what was measured.
LATE_RATIO = 0.01
LAG_WARNING_US = 10_000
SHORTFALL_RATIO = 0.01
CLOCK_RTT_WARNING_NS = 10_000_000


class WarningKind(enum.Enum):
    """Things that make a run a weaker measurement of its target."""

    GENERATOR_SATURATED = "generator_saturated"
    LATE_SENDS = "late_sends"
    SCHEDULE_LAG = "schedule_lag"
    LOAD_SHORTFALL = "load_shortfall"
    AGENT_LOST = "agent_lost"
    REPORTS_REJECTED = "reports_rejected"
    CLOCK_UNCERTAIN = "clock_uncertain"
    CLOSED_LOOP = "closed_loop"


def histogram_summary(histogram):
    """Count, extremes, mean and percentiles of one histogram (µs)."""
    figures = {"count": histogram.total_count}
    if not histogram.total_count:
        return figures
    figures.update(min=histogram.min, mean=round(histogram.mean, 3),
                   stddev=round(histogram.stddev, 3), max=histogram.max)
    values = histogram.percentiles([p for _, p in PERCENTILES])
    figures.update({name: value for (name, _), value in zip(PERCENTILES, values)})
    return figures


def _outcomes(counts):
    return {outcome.label: counts.get(outcome, 0) for outcome in Outcome}


def build_summary(run):
    """The summary dict of a DistributedRun (final once the run has finished)."""
    definition = run.definition
    totals = run.ingest.totals if run.ingest else None
    scheduled = definition.schedule.total_count()
    span_s = max(0.0, (run.span_end_ns - run.span_start_ns) / 1e9) if run.span_end_ns else 0.0
    sent = totals.sent if totals else 0
    completed = totals.completed if totals else 0
    outcomes = totals.outcomes() if totals else {}
    errors = sum(outcomes.get(o, 0) for o in Outcome
                 if o not in (Outcome.OK_2XX, Outcome.REDIRECT_3XX, Outcome.NOT_SENT))
    shortfall = max(0, scheduled - sent) if definition.schedule.is_open_loop else 0
    late = sum(t.late for t in totals.targets.values()) if totals else 0
    summary = {
        "schema": SCHEMA,
        "run_id": run.run_id,
        "status": run.status.value,
        "reason": run.stop_reason,
        "controller_id": run.controller_id,
        "labels": dict(definition.labels),
        "started_unix_ns": run.start_ns,
        "finished_unix_ns": run.finished_ns,
        "measured_s": round(span_s, 6),
        "interval_s": definition.interval_s,
        "schedule": {**definition.schedule.to_dict(),
                     "open_loop": definition.schedule.is_open_loop},
        "load": {
            "scheduled": scheduled,
            "intended": totals.intended if totals else 0,
            "sent": sent,
            "completed": completed,
            "late": late,
            "not_sent": outcomes.get(Outcome.NOT_SENT, 0),
            "shortfall": shortfall,
            "shortfall_ratio": round(shortfall / scheduled, 6) if scheduled else 0.0,
            "intended_rate": round(scheduled / definition.duration_s, 3),
            "sent_rate": round(sent / span_s, 3) if span_s else 0.0,
            "achieved_rate": round(completed / span_s, 3) if span_s else 0.0,
            "rate_scale": run.user_rate_scale,
        },
        "requests": {"by_outcome": _outcomes(outcomes), "errors": errors,
                     "error_rate": round(errors / completed, 6) if completed else 0.0},
        "targets": {name: _target_summary(run, name) for name in definition.target_names},
        "agent_loss_policy": definition.agent_loss.value,
        "agents": [_agent_summary(run, s) for s in run.sessions],
        "agents_lost": [_lost_summary(run, s) for s in run.sessions if s.times_lost],
        "rejected_reports": [r.to_dict() for r in run.ingest.rejections] if run.ingest else [],
        "generator": {
            "cpu_seconds": round(totals.cpu_seconds, 6) if totals else 0.0,
            "max_lag_us": totals.max_lag_us if totals else 0,
            "saturated_intervals": totals.saturated_intervals if totals else 0,
        },
        "files": {"run": RUN_FILE, "journal": JOURNAL, "telemetry": TELEMETRY,
                  "hlog_dir": HLOG_DIR},
    }
    summary["generator"]["warnings"] = [{"kind": kind.value, "message": message}
                                        for kind, message in _warnings(run, summary)]
    return summary


def _target_summary(run, name):
    target = next(t for t in run.definition.targets if t.name == name)
    totals = run.ingest.totals.targets[name] if run.ingest else None
    figures = {"url": target.url, "weight": run.weights.get(name, target.weight)}
    if totals is None:
        return figures
    figures.update(
        requests=_outcomes(totals.outcomes), sent=totals.sent, completed=totals.completed,
        late=totals.late, bytes_read=totals.bytes_read,
        error_rate=round(totals.errors / totals.completed, 6) if totals.completed else 0.0)
    for metric in Metric:
        figures[f"{metric.value}_us"] = histogram_summary(totals.histograms[metric])
    figures["hlog"] = {metric.value: f"{HLOG_DIR}/{hlog_name(name, metric)}" for metric in Metric}
    return figures


def _agent_summary(run, s):
    own = run.ingest.totals.per_agent.get(s.agent_id) if run.ingest else None
    clock = s.client.clock
    return {
        "agent_id": s.agent_id, "address": s.address, "shard_index": s.index,
        "state": s.state.value, "workers": s.workers,
        "clock_offset_ns": clock.offset_ns if clock else None,
        "rtt_ns": clock.rtt_ns if clock else None,
        "shard_requests": s.shard_requests,
        "reports": own.reports if own else 0, "intended": own.intended if own else 0,
        "sent": own.sent if own else 0, "completed": own.completed if own else 0,
        "last_seq": s.stream.last_seq if s.stream else 0,
        "rate_scale": s.rate_scale,
        "rejections": sum(r.agent_id == s.agent_id for r in run.ingest.rejections)
        if run.ingest else 0,
        "saturated_intervals": own.saturated_intervals if own else 0,
        "max_lag_us": own.max_lag_us if own else 0,
        "last_error": s.last_error,
    }


def _lost_summary(run, s):
    own = run.ingest.totals.per_agent.get(s.agent_id) if run.ingest else None
    sent = own.sent if own else 0
    return {"agent_id": s.agent_id, "lost_at_unix_ns": s.lost_at_ns, "reason": s.lost_reason,
            "times_lost": s.times_lost, "final_state": s.state.value,
            "last_seq": s.stream.last_seq if s.stream else 0,
            "intervals_received": own.reports if own else 0,
            "unsent": max(0, s.shard_requests - sent)
            if s.state is not AgentState.FINISHED else 0}


def _warnings(run, summary):
    load, generator = summary["load"], summary["generator"]
    if not run.definition.schedule.is_open_loop:
        yield WarningKind.CLOSED_LOOP, ("closed-loop run: latency excludes queueing the target "
                                        "caused (coordinated omission)")
    if generator["saturated_intervals"]:
        yield WarningKind.GENERATOR_SATURATED, (
            f"the generator fell behind in {generator['saturated_intervals']} agent-interval(s)")
    if load["sent"] and load["late"] > LATE_RATIO * load["sent"]:
        yield WarningKind.LATE_SENDS, (f"{load['late']} of {load['sent']} requests were sent late "
                                       "because every connection was busy")
    if generator["max_lag_us"] > LAG_WARNING_US:
        yield WarningKind.SCHEDULE_LAG, f"schedule lag reached {generator['max_lag_us']} µs"
    if load["scheduled"] and load["shortfall_ratio"] > SHORTFALL_RATIO:
        yield WarningKind.LOAD_SHORTFALL, (f"{load['shortfall']} of {load['scheduled']} scheduled "
                                           "requests were never sent")
    for lost in summary["agents_lost"]:
        yield WarningKind.AGENT_LOST, f"agent {lost['agent_id']} lost: {lost['reason']}"
    if summary["rejected_reports"]:
        yield WarningKind.REPORTS_REJECTED, (f"{len(summary['rejected_reports'])} report(s) "
                                             "rejected (see rejected_reports)")
    for agent in summary["agents"]:
        if agent["rtt_ns"] and agent["rtt_ns"] > CLOCK_RTT_WARNING_NS:
            yield WarningKind.CLOCK_UNCERTAIN, (
                f"agent {agent['agent_id']} clock offset is uncertain by up to "
                f"{agent['rtt_ns'] / 2e6:.1f} ms")


def render_summary(summary):
    """summary.txt: the run at a glance."""
    load, requests = summary["load"], summary["requests"]
    lines = [f"run {summary['run_id']}: {summary['status']}"
             + (f" ({summary['reason']})" if summary["reason"] else ""),
             f"load: {load['sent']} sent of {load['scheduled']} scheduled, "
             f"{load['completed']} completed; intended {load['intended_rate']:g}/s, "
             f"achieved {load['achieved_rate']:g}/s; shortfall {load['shortfall']}",
             "outcomes: " + ", ".join(f"{k} {v}" for k, v in requests["by_outcome"].items() if v),
             "",
             f"{'target':<16}{'metric':<14}{'count':>9}{'p50':>10}{'p90':>10}{'p99':>10}"
             f"{'p99.9':>10}{'max':>10}  (µs)"]
    for name, target in summary["targets"].items():
        for metric in Metric:
            figures = target.get(f"{metric.value}_us", {})
            cells = "".join(f"{figures.get(key, '-'):>10}"
                            for key in ("p50", "p90", "p99", "p99_9", "max"))
            lines.append(f"{name:<16}{metric.value:<14}{figures.get('count', 0):>9}{cells}")
    lines += ["", f"{'agent':<24}{'state':<12}{'sent':>9}{'offset µs':>12}{'rtt µs':>10}"]
    for agent in summary["agents"]:
        offset = agent["clock_offset_ns"] or 0
        rtt = agent["rtt_ns"] or 0
        lines.append(f"{agent['agent_id']:<24}{agent['state']:<12}{agent['sent']:>9}"
                     f"{offset / 1000:>12.1f}{rtt / 1000:>10.1f}")
    warnings = summary["generator"]["warnings"]
    if warnings:
        lines += [""] + [f"warning: {w['kind']}: {w['message']}" for w in warnings]
    return "\n".join(lines) + "\n"
