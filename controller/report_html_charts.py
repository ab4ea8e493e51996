"""The charts of report.html, built from a RunData (report_html_data) with report_html_svg.

Each builder returns rendered HTML: the chart, or a paragraph saying why it is absent.  Time
axes count seconds from ``RunData.origin`` and share one range, so the readiness timeline,
latency, throughput, errors and telemetry line up when read top to bottom.
"""
import datetime
from html import escape

from loadgate.controller.report_html_data import (
    TIME_PERCENTILES, IntervalCounts, completed, group_size)
from loadgate.controller.report_html_svg import (
    BAND_COLOURS, PALETTE, Band, Chart, Marker, Series, Span, XAxis, percentile_x, render,
    timeline)
from loadgate.controller.states import State
from loadgate.native.outcomes import ERRORS, Outcome

TIME_LABEL = "time since the run began (s)"
SPECTRUM_DECADES_MAX = 6  # 99.9999 %: beyond it no run here has the samples to say more
SPECTRUM_STEPS_PER_DECADE = 20
TARGET_DASHES = ("", "7 4", "2 3", "10 3 2 3")  # line style per target where colour is taken
LINE_STYLES = (("2 3", 1.5), ("6 3", 1.8), ("", 2.2))  # dash and width per TIME_PERCENTILES
ERROR_OUTCOMES = ERRORS + (Outcome.TIMEOUT,)
OUTCOME_COLOURS = {Outcome.CLIENT_4XX: "#ff7f0e", Outcome.SERVER_5XX: "#c2185b",
                   Outcome.CONNECT_ERROR: "#8c564b", Outcome.TIMEOUT: "#9467bd",
                   Outcome.RESET: "#17becf", Outcome.PARSE_ERROR: "#7f7f7f"}
STATE_COLOURS = {"SV": "#3a9d4f", "NSV": "#4f86c6", State.ZABLOKIROVANO: "#c0392b",
                 State.OZHIDAET: "#b0b0b0", State.OTKAT: "#ff7f0e", State.AVARIYA: "#7b0000"}
TIMELINE_LEGEND = (
    (STATE_COLOURS["SV"], "SV: completed, verified, approved, deployed"),
    (STATE_COLOURS["NSV"], "NSV: in progress, executing, testing, monitoring"),
    (STATE_COLOURS[State.OZHIDAET], "OZHIDAET: waiting"),
    (STATE_COLOURS[State.ZABLOKIROVANO], "ZABLOKIROVANO: blocked"),
    (STATE_COLOURS[State.OTKAT], "OTKAT: rolled back"),
    (STATE_COLOURS[State.AVARIYA], "AVARIYA: emergency"),
    (BAND_COLOURS["PASS"], "window PASS"), (BAND_COLOURS["FAIL"], "window FAIL"),
    (BAND_COLOURS["INCONCLUSIVE"], "window INCONCLUSIVE"))
GPU_FIGURES = (("utilization_percent", "GPU utilisation", "utilisation (%)", 1.0),
               ("memory_used_bytes", "GPU memory used", "memory used (GiB)", 2.0 ** -30),
               ("power_milliwatts", "GPU power draw", "power (W)", 1e-3))


def missing(text):
    return f'<p class="missing" role="note">{escape(text)}</p>'


def target_colours(names):
    """One colour per target, the same in every chart (baseline blue, canary red)."""
    ordered = sorted(names, key=lambda n: (n != "baseline", n != "canary", n))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(ordered)}


class ChartBuilder:
    def __init__(self, data):
        self.data = data
        self.origin = data.origin
        self.colours = target_colours(data.targets)
        self.bands = [Band(w.start - self.origin, w.end - self.origin, w.label,
                           BAND_COLOURS.get(w.status, "#888"), f"judged window: {w.status}")
                      for w in data.windows] if self.origin is not None else []
        self.markers = [Marker(r["time"] - self.origin, f"{r.get('title', r['node'])}: "
                               f"{r['from']} → {r['to']} ({r.get('reason', '')})")
                        for r in data.transitions if _notable(r)] \
            if self.origin is not None else []
        self.x_range = self._x_range()
        self.time_label = TIME_LABEL if self.origin is None else \
            f"{TIME_LABEL}; 0 = {format_utc(self.origin)}"

    def _x_range(self):
        if self.origin is None:
            return None
        ends = [t.points[-1].end for t in self.data.targets.values() if t.points]
        ends += [c.end for c in self.data.counts[-1:]]
        ends += [r["time"] for r in self.data.transitions[-1:]]
        ends += [w.end for w in self.data.windows]
        return 0.0, max(ends) - self.origin if ends else 1.0

    def _timed(self, key, title, y_label, series, description):
        return render(Chart(key, title, self.time_label, y_label, series, bands=self.bands,
                            markers=self.markers, description=description,
                            x_range=self.x_range))

    def stage_timeline(self):
        if not self.data.transitions:
            return missing("no stage timeline: the run has no readiness journal")
        end = self.x_range[1]
        rows = []
        for node in dict.fromkeys(r["node"] for r in self.data.transitions if "." not in
                                  r["node"]):
            records = [r for r in self.data.transitions if r["node"] == node]
            spans = []
            for here, after in zip(records, records[1:] + [None]):
                state = State(here["to"])
                stop = after["time"] - self.origin if after else end
                spans.append(Span(here["time"] - self.origin, stop,
                                  f"{state.marker} {here.get('reason', '')}",
                                  _state_colour(state)))
            rows.append((records[0].get("title", node), spans))
        rows.append(("judged windows", [Span(b.start, b.end, f"{b.label}: {b.legend}",
                                             b.colour, b.label) for b in self.bands]))
        return timeline("timeline", "Stage and canary-step timeline", rows, self.x_range,
                        self.time_label, TIMELINE_LEGEND)

    def spectrum(self):
        targets = {n: t for n, t in self.data.targets.items()
                   if t.total is not None and t.total.total_count}
        if not targets:
            return missing("no latency percentile spectrum: no merged latency histogram "
                           "holds a sample")
        series = []
        for name, intervals in targets.items():
            hist = intervals.total
            decades = min(SPECTRUM_DECADES_MAX, max(1, len(str(hist.total_count)) - 1))
            steps = decades * SPECTRUM_STEPS_PER_DECADE
            percents = [100.0 - 100.0 / 10 ** (k / SPECTRUM_STEPS_PER_DECADE)
                        for k in range(steps + 1)]
            values = hist.percentiles(percents)
            points = [(percentile_x(p), v / 1000.0) for p, v in zip(percents, values)]
            points.append((decades, hist.max / 1000.0))
            series.append(Series(f"{name} ({hist.total_count:,} requests)", points,
                                 self.colours[name], "6 3" if name == "canary" else ""))
        return render(Chart("spectrum", "Latency by percentile (merged over the whole run)",
                            "percentile (HdrHistogram log axis: 1/(1-p))", "latency (ms)",
                            series, XAxis.PERCENTILE,
                            description="Latency at each percentile from each target's "
                                        "histogram merged across agents and intervals; the "
                                        "last point of each line is the maximum."))

    def latency_over_time(self):
        series = []
        for name, intervals in self.data.targets.items():
            for number, (percent, (dash, width)) in enumerate(zip(TIME_PERCENTILES,
                                                                  LINE_STYLES)):
                points = [((p.start + p.end) / 2 - self.origin,
                           p.values[number] / 1000.0 if p.count else None)
                          for p in intervals.points]
                series.append(Series(f"{name} p{percent:g}", points, self.colours[name],
                                     dash, width))
        if not any(p[1] is not None for s in series for p in s.points):
            return missing("no latency over time: the hlogs hold no interval with a sample")
        return self._timed("latency", "Latency percentiles per interval", "latency (ms)",
                           series, "p50, p90 and p99 of each target's merged interval "
                                   "histogram; shaded bands are the judged windows.")

    def throughput(self):
        counts = grouped_counts(self.data.counts)
        if not counts:
            return missing("no throughput over time: the run journal holds no report")
        series = []
        for name in self.data.targets:
            points = [((c.start + c.end) / 2 - self.origin,
                       completed(c.by_target.get(name, {})) / (c.end - c.start))
                      for c in counts]
            series.append(Series(f"{name} completed/s", points, self.colours[name]))
        series.append(Series("intended/s (all targets)",
                             [((c.start + c.end) / 2 - self.origin,
                               c.intended / (c.end - c.start)) for c in counts],
                             "#444", "4 4", 1.5))
        return self._timed("throughput", "Throughput per interval", "requests per second",
                           series, "Requests completed per second by target, against the "
                                   "rate the schedule intended.")

    def errors(self):
        counts = grouped_counts(self.data.counts)
        if not counts:
            return missing("no errors over time: the run journal holds no report")
        names = list(dict.fromkeys(n for c in counts for n in c.by_target))
        seen = [(name, outcome) for name in names for outcome in ERROR_OUTCOMES
                if any(c.by_target.get(name, {}).get(outcome) for c in counts)]
        series = []
        for name, outcome in seen or [(names[0] if names else "all", Outcome.SERVER_5XX)]:
            points = [((c.start + c.end) / 2 - self.origin,
                       c.by_target.get(name, {}).get(outcome, 0) / (c.end - c.start))
                      for c in counts]
            series.append(Series(f"{name} {outcome.label}/s", points, OUTCOME_COLOURS[outcome],
                                 TARGET_DASHES[names.index(name) % len(TARGET_DASHES)]
                                 if name in names else ""))
        total = sum(completed(t) for c in counts for t in c.by_target.values())
        note = "" if seen else \
            f"<p class=\"note\">No errors: all {total:,} completed requests were 2xx/3xx.</p>"
        return note + self._timed("errors", "Errors by outcome class per interval",
                                  "errors per second", series,
                                  "Requests per second ending in each error class (4xx, "
                                  "5xx, connect errors, timeouts, resets, parse errors) per "
                                  "target: colour is the class, line style the target.")

    def gpu(self):
        samples = [(r, g) for r in self.data.telemetry for g in r.get("gpus", ())]
        if not samples:
            reasons = sorted({r.get("gpu_unavailable_reason") for r in self.data.telemetry
                              if r.get("gpu_unavailable_reason")})
            reason = "; ".join(reasons) or ("the agents sent no telemetry"
                                            if self.data.loads else "no load run")
            return missing(f"no GPU telemetry: {reason}")
        html = []
        for field, title, y_label, scale in GPU_FIGURES:
            lines = {}
            for record, gpu in samples:
                value = _gpu_value(gpu, field)
                key = f"{record.get('agent_id', '?')} GPU {gpu.get('index', 0)} " \
                      f"{gpu.get('name', '')}".strip()
                lines.setdefault(key, []).append(
                    (int(record["unix_ns"]) / 1e9 - self.origin,
                     None if value is None else value * scale))
            series = [Series(key, thinned(points),
                             PALETTE[i % len(PALETTE)]) for i, (key, points) in
                      enumerate(lines.items())]
            if field == "memory_used_bytes":
                series += self._memory_totals(samples, scale)
            html.append(self._timed(f"gpu-{field}", title, y_label, series,
                                    f"{title} per GPU from the agents' NVML samples."))
        return "".join(html)

    def _memory_totals(self, samples, scale):
        """Each GPU's framebuffer size as a dashed line, so the headroom is visible."""
        lines = {}
        for record, gpu in samples:
            total = _gpu_value(gpu, "memory_total_bytes")
            if total:
                key = f"{record.get('agent_id', '?')} GPU {gpu.get('index', 0)} total"
                lines.setdefault(key, []).append(
                    (int(record["unix_ns"]) / 1e9 - self.origin, total * scale))
        return [Series(key, thinned(points), PALETTE[i % len(PALETTE)],
                       "6 4", 1.2) for i, (key, points) in enumerate(lines.items())]

    def host_cpu(self):
        lines = {}
        for record in self.data.telemetry:
            host = record.get("host")
            if host is not None:
                lines.setdefault(record.get("agent_id", "?"), []).append(
                    (int(record["unix_ns"]) / 1e9 - self.origin, host.get("cpu_percent", 0.0)))
        if not lines:
            return missing("no host telemetry")
        series = [Series(f"{agent} node CPU", thinned(points),
                         PALETTE[(i + 3) % len(PALETTE)])
                  for i, (agent, points) in enumerate(lines.items())]
        return self._timed("host-cpu", "Load generator nodes: CPU use", "CPU (%)", series,
                           "Whole-node CPU of each agent's node: a saturated generator "
                           "measures itself as much as the target.")


def grouped_counts(counts):
    """IntervalCounts summed over consecutive intervals, at most report_html_data.MAX_POINTS of them."""
    size = group_size(len(counts))
    if size == 1:
        return counts
    grouped = []
    for first in range(0, len(counts), size):
        part = counts[first:first + size]
        total = IntervalCounts(part[0].start, part[-1].end)
        for counted in part:
            total.intended += counted.intended
            for name, outcomes in counted.by_target.items():
                into = total.by_target.setdefault(name, {})
                for outcome, n in outcomes.items():
                    into[outcome] = into.get(outcome, 0) + n
        grouped.append(total)
    return grouped


def format_utc(epoch):
    """An epoch instant as the report shows times ("-" for none)."""
    if epoch is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def thinned(points):
    """Telemetry points in time order, averaged over runs of consecutive samples when there
    are more than report_html_data.MAX_POINTS (a gauge's mean is meaningful, unlike a percentile's)."""
    points = sorted(points, key=lambda p: p[0])
    size = group_size(len(points))
    if size == 1:
        return points
    result = []
    for first in range(0, len(points), size):
        part = points[first:first + size]
        values = [y for _, y in part if y is not None]
        result.append((sum(x for x, _ in part) / len(part),
                       sum(values) / len(values) if values else None))
    return result


def _notable(record):
    return "." not in record["node"] or record["to"] in (
        State.AVARIYA.value, State.OTKAT.value, State.ZABLOKIROVANO.value)


def _state_colour(state):
    if state.perfective:
        return STATE_COLOURS["SV"]
    if state.imperfective:
        return STATE_COLOURS["NSV"]
    return STATE_COLOURS[state]


def _gpu_value(gpu, field):
    """A GPU figure; zero when NVML gave it (protobuf JSON omits zeros), None when not."""
    if field in gpu:
        return float(gpu[field])
    available = gpu.get("available")
    return 0.0 if available is None or field in available else None
