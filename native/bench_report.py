"""The result of ``loadgate bench`` as a versioned JSON document and as the text table.

Schema (``schema_version`` 1; docs/bench-json.md has every field).  Times are integers in
microseconds unless a name says otherwise; rates are per second.

    {"schema_version": 1, "tool": "loadgate bench", "url": str, "open_loop": bool,
     "mode": "open-loop" | "closed-loop", "arrival": str, "duration_s": float,
     "elapsed_s": float,
     "requests": {"scheduled", "sent", "completed", "errors": {"4xx", "5xx", "connect_error",
                  "reset", "parse_error"}, "timeouts", "not_sent", "late",
                  "status": {"2xx", "3xx", "4xx", "5xx"}},
     "rate": {"intended", "achieved", "throughput"},
     "latency" | "service_time" | "schedule_lag": {"count", "min", "mean", "p50", "p75",
                  "p90", "p99", "p99.9", "p99.99", "max"},
     "generator": {"cpu_seconds", "cpu_utilisation", "workers", "max_lag_us", "late",
                   "warning": bool, "warnings": [str]},
     "intervals": [{"index", "start_s", "end_s", "intended", "sent", "completed", "errors",
                    "timeouts", "latency_p50", "latency_p99", "latency_max", "max_lag_us",
                    "cpu_seconds"}]}

A field is only ever added in a version; a change of meaning or a removal bumps
``schema_version``.
"""
from loadgate.native.outcomes import ERRORS, Outcome

SCHEMA_VERSION = 1
PERCENTILES = (("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9),
               ("p99.99", 99.99))

# The generator is behind when any of these holds; such a run does not measure the target.
CPU_SATURATED = 0.90        # fraction of the workers' CPU time used
LATE_FRACTION = 0.01        # sends that found every connection busy
SEND_SHORTFALL = 0.95       # sent / intended below this
LAG_P99_LIMIT_US = 1000     # pacing that misses by more than a millisecond at p99
LAG_GROWTH = 2.0            # last third of the run's interval lag vs the first third


def summarize(hist):
    """Percentiles, min, mean and max of a microsecond histogram (zeros when empty)."""
    summary = {"count": hist.total_count, "min": hist.min, "mean": round(hist.mean, 1)}
    values = hist.percentiles([p for _, p in PERCENTILES])
    summary.update({name: value for (name, _), value in zip(PERCENTILES, values)})
    summary["max"] = hist.max
    return summary


def _lag_growing(intervals):
    lags = [row["max_lag_us"] for row in intervals if row["sent"]]
    if len(lags) < 3:
        return False
    third = len(lags) // 3
    first, last = max(lags[:third]), max(lags[-third:])
    return last > LAG_P99_LIMIT_US and last > LAG_GROWTH * max(first, 1)


def generator_warnings(result, workers, intervals=()):
    """Why the generator, not the target, may have set the pace (empty when it kept up);
    ``intervals`` are the run's interval rows (``interval_row``), oldest first."""
    totals = result.totals
    combined = totals.combined()
    warnings = []
    busy = totals.cpu_seconds / max(totals.duration_s * workers, 1e-9)
    if busy > CPU_SATURATED:
        warnings.append(f"generator CPU saturated ({busy:.0%} of {workers} worker(s))")
    if combined.sent and combined.late > LATE_FRACTION * combined.sent:
        warnings.append(f"{combined.late} sends ({combined.late / combined.sent:.1%}) found "
                        "every connection busy and went out late (raise -c or the cap)")
    if result.open_loop and totals.intended:
        shortfall = combined.sent / totals.intended
        if shortfall < SEND_SHORTFALL:
            warnings.append(f"only {shortfall:.1%} of the intended requests were sent")
    lag_p99 = combined.schedule_lag.value_at_percentile(99.0)
    if result.open_loop and lag_p99 > LAG_P99_LIMIT_US:
        warnings.append(f"schedule lag p99 {lag_p99} us: sends missed their instants")
    if result.open_loop and _lag_growing(intervals):
        warnings.append("schedule lag grew during the run")
    warnings.extend(result.worker_errors)
    return warnings


def interval_row(snapshot):
    """The few numbers the report keeps of one merged interval (its histograms are let go);
    ``start_ns``/``end_ns`` become ``start_s``/``end_s`` in ``build_report``."""
    combined = snapshot.combined()
    p50, p99 = combined.latency.percentiles([50.0, 99.0])
    return {"index": snapshot.index, "start_ns": snapshot.start_ns, "end_ns": snapshot.end_ns,
            "intended": snapshot.intended, "sent": snapshot.sent,
            "completed": combined.completed, "errors": combined.errors,
            "timeouts": combined.timeouts, "latency_p50": p50, "latency_p99": p99,
            "latency_max": combined.latency.max, "max_lag_us": snapshot.max_lag_us,
            "cpu_seconds": round(snapshot.cpu_seconds, 6)}


def _interval(row, origin_ns):
    times = {"start_s": round((row["start_ns"] - origin_ns) / 1e9, 6),
             "end_s": round((row["end_ns"] - origin_ns) / 1e9, 6)}
    rest = {k: v for k, v in row.items() if k not in ("start_ns", "end_ns", "index")}
    return {"index": row["index"], **times, **rest}


def build_report(result, config, url, workers, intervals=()):
    """The schema-1 document for a RunResult of ``config`` run on ``workers`` workers, with
    ``intervals`` its interval rows (``interval_row``) in order."""
    totals = result.totals
    combined = totals.combined()
    schedule = config.schedule
    duration = schedule.duration_s
    outcomes = combined.outcomes
    warnings = generator_warnings(result, workers, intervals)
    origin = intervals[0]["start_ns"] if intervals else totals.start_ns
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "loadgate bench",
        "url": url,
        "open_loop": result.open_loop,
        "mode": "open-loop" if result.open_loop else "closed-loop",
        "arrival": schedule.model.value,
        "duration_s": duration,
        "elapsed_s": round(totals.duration_s, 6),
        "requests": {
            "scheduled": result.scheduled,
            "sent": combined.sent,
            "completed": combined.completed,
            "errors": {o.label: outcomes[o] for o in ERRORS},
            "timeouts": combined.timeouts,
            "not_sent": combined.not_sent,
            "late": combined.late,
            "status": {o.label: outcomes[o] for o in Outcome if o.is_response},
        },
        "rate": {
            "intended": round(schedule.total_count() / duration, 3) if result.open_loop else None,
            "achieved": round(combined.sent / duration, 3),
            "throughput": round(sum(outcomes[o] for o in Outcome if o.is_response)
                                / max(totals.duration_s, 1e-9), 3),
        },
        "latency": summarize(combined.latency),
        "service_time": summarize(combined.service_time),
        "schedule_lag": summarize(combined.schedule_lag),
        "generator": {
            "cpu_seconds": round(totals.cpu_seconds, 6),
            "cpu_utilisation": round(totals.cpu_seconds / max(totals.duration_s * workers, 1e-9), 4),
            "workers": workers,
            "max_lag_us": totals.max_lag_us,
            "late": combined.late,
            "warning": bool(warnings),
            "warnings": warnings,
        },
        "intervals": [_interval(row, origin) for row in intervals],
    }


def _micros(value):
    if value >= 1_000_000:
        return f"{value / 1e6:.2f}s"
    if value >= 1_000:
        return f"{value / 1e3:.2f}ms"
    return f"{value}us"


def format_report(report):
    """The human-readable summary of a schema-1 document."""
    requests, rate, generator = report["requests"], report["rate"], report["generator"]
    lines = [f"{report['mode']} run against {report['url']} "
             f"({report['arrival']}, {report['duration_s']:g}s, {generator['workers']} worker(s))"]
    intended = "-" if rate["intended"] is None else f"{rate['intended']:.1f}/s"
    lines.append(f"  rate: intended {intended}, achieved {rate['achieved']:.1f}/s sent, "
                 f"{rate['throughput']:.1f}/s answered")
    errors = ", ".join(f"{k} {v}" for k, v in requests["errors"].items() if v) or "none"
    lines.append(f"  requests: scheduled {requests['scheduled']}, sent {requests['sent']}, "
                 f"completed {requests['completed']}, timeouts {requests['timeouts']}, "
                 f"not sent {requests['not_sent']}, late {requests['late']}")
    lines.append("  status: " + ", ".join(f"{k} {v}" for k, v in requests["status"].items()))
    lines.append(f"  errors: {errors}")
    names = [name for name, _ in PERCENTILES] + ["max"]
    lines.append("")
    lines.append(f"  {'':<14}" + "".join(f"{n:>10}" for n in names))
    for key, title in (("latency", "latency"), ("service_time", "service time"),
                       ("schedule_lag", "schedule lag")):
        lines.append(f"  {title:<14}" + "".join(f"{_micros(report[key][n]):>10}" for n in names))
    lines.append("")
    lines.append(f"  generator: {generator['cpu_seconds']:.2f} CPU s "
                 f"({generator['cpu_utilisation']:.0%} of its workers), max lag "
                 f"{_micros(generator['max_lag_us'])}")
    if not report["open_loop"]:
        lines.append("  NOTE: closed loop (fixed concurrency): latency here hides queueing a "
                     "real open arrival process would see.")
    if generator["warning"]:
        lines.append("  WARNING: the load generator fell behind; this run does NOT measure "
                     "the target:")
        lines.extend(f"    - {w}" for w in generator["warnings"])
    return "\n".join(lines)
