"""report.html: one self-contained page per run, with its pictures.

``render_report_html(run_dir, load_dir=None) -> str`` and ``write_report_html(run_dir,
load_dir=None) -> path`` (written atomically as ``run_dir/report.html``).  The page has no
script and fetches nothing: CSS is inline and every chart is inline SVG drawn in Python
(report_html_svg), so it opens the same from a CI artefact, a mail or an air-gapped laptop.

It shows the verdict and gate table (verdict.json), the stage states with the seed's
markers, the stage and canary-step timeline (the readiness journal), the latency percentile
spectrum of every target on HdrHistogram's axis (merged hlogs), latency percentiles,
throughput and errors by outcome class over time (hlogs and the run journal's reports), GPU
and node telemetry (telemetry.jsonl).  A partial run directory -- a plain load run, a run
still going, an aborted one -- draws what exists and lists what is missing.
"""
import os
from html import escape

from loadgate.controller.report_html_charts import ChartBuilder, format_utc, missing
from loadgate.controller.report_html_data import completed, load_run
from loadgate.controller.report_html_style import CSS
from loadgate.controller.states import State
from loadgate.native.outcomes import Outcome

REPORT_NAME = "report.html"
PERCENTILE_COLUMNS = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0),
                      ("p99_9", 99.9))


def render_report_html(run_dir, load_dir=None):
    """The report of the run in ``run_dir`` as one HTML document."""
    data = load_run(run_dir, load_dir)
    charts = ChartBuilder(data)
    verdict = data.verdict or {}
    name = (verdict.get("deployment") or {}).get("id") or \
        next((load.run_id for load in data.loads if load.run_id), None) or \
        os.path.basename(data.path)
    kind = "Deployment readiness report" if data.readiness else "Load run report"
    body = [_header(data, f"{kind}: {name}"), _missing(data)]
    if data.readiness:
        body += [_verdict(data), _gates(data), _stages(data),
                 _section("timeline", "Timeline", charts.stage_timeline())]
    body += [_section("latency", "Latency", charts.spectrum() + _latency_table(data)
                      + charts.latency_over_time()),
             _section("throughput", "Throughput and errors", charts.throughput()
                      + charts.errors() + _outcome_table(data)),
             _section("telemetry", "GPU and node telemetry", charts.gpu() + charts.host_cpu()),
             _generator(data)]
    body.insert(1, _contents(body))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(kind)}: {escape(name)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def write_report_html(run_dir, load_dir=None):
    """Writes ``run_dir/report.html`` atomically; returns its path."""
    text = render_report_html(run_dir, load_dir)
    path = os.path.join(os.fspath(run_dir), REPORT_NAME)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def _section(key, title, content):
    return f'<section id="{key}" aria-labelledby="{key}-h"><h2 id="{key}-h">{title}</h2>' \
           f'{content}</section>'


def _table(caption, headers, rows, css=""):
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    lines = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                    for row in rows)
    return f'<table class="{css}"><caption>{escape(caption)}</caption><thead><tr>{head}' \
           f'</tr></thead><tbody>{lines}</tbody></table>'


def _contents(parts):
    """In-page links to every section drawn (the page's only links)."""
    links = []
    for part in parts:
        if part.startswith("<section id="):
            key = part.split('"', 2)[1]
            title = part.split(f'<h2 id="{key}-h">', 1)[1].split("</h2>", 1)[0]
            links.append(f'<li><a href="#{key}">{title}</a></li>')
    return f'<nav aria-label="sections"><ul>{"".join(links)}</ul></nav>'


def _header(data, title):
    verdict = data.verdict or {}
    status = verdict.get("status") or "NO VERDICT"
    facts = [("run directory", data.path)]
    deployment = verdict.get("deployment") or (data.plan or {}).get("deployment") or {}
    if deployment.get("type"):
        facts.append(("deployment", " · ".join(str(deployment.get(k, "-")) for k in
                                                ("type", "risk", "environment", "strategy"))))
    if verdict:
        facts += [("recommendation", f"{verdict.get('recommendation', '-')} "
                                     f"{verdict.get('marker', '')}"),
                  ("run status", verdict.get("run_status", "-")),
                  ("started", format_utc(verdict.get("started"))),
                  ("finished", format_utc(verdict.get("finished")))]
    elif data.transitions:
        facts.append(("run status", "in progress or interrupted: no verdict yet"))
    for load in data.loads:
        ended = (load.summary or {}).get("status") or load.status or "-"
        facts.append(("load run", f"{load.run_id or os.path.basename(load.path)} ({ended})"))
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in facts)
    badge = status.lower().replace(" ", "-")
    return f'<header><h1>{escape(title)}</h1><p class="badge {badge}" role="status">' \
           f'Verdict: <strong>{escape(status)}</strong></p><dl class="facts">{items}</dl>' \
           f'</header>'


def _missing(data):
    if not data.missing:
        return ""
    items = "".join(f"<li>{escape(m)}</li>" for m in data.missing)
    return f'<aside class="missing-list" aria-label="missing data"><h2>Not shown</h2>' \
           f'<ul>{items}</ul></aside>'


def _verdict(data):
    verdict = data.verdict
    if not verdict:
        return ""
    parts = []
    if verdict.get("error"):
        parts.append(f'<p class="error">{escape(verdict["error"]["kind"])} error: '
                     f'{escape(verdict["error"]["message"])}</p>')
    knee = verdict.get("knee")
    if knee:
        rate = f"{knee['rate']:g} req/s" if knee.get("rate") else "not found"
        parts.append(f"<p>Knee of the throughput curve: <strong>{rate}</strong> "
                     f"({escape(str(knee.get('reason', '')))}).</p>")
    if verdict.get("reasons"):
        parts.append("<h3>Reasons</h3><ul>" + "".join(
            f"<li>{escape(r)}</li>" for r in verdict["reasons"]) + "</ul>")
    if verdict.get("next_steps"):
        parts.append("<h3>Next steps</h3><ol>" + "".join(
            f"<li>{escape(s)}</li>" for s in verdict["next_steps"]) + "</ol>")
    return _section("verdict", "Verdict", "".join(parts) or "<p>No reasons recorded.</p>")


def _number(value, unit=""):
    if value is None or value != value:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{text} {escape(unit)}".strip()


def _gates(data):
    gates = (data.verdict or {}).get("gates")
    if not gates:
        return _section("gates", "Gates", missing(
            "no gate results: " + ("the verdict judged no gate" if data.verdict
                                   else "no verdict.json")))
    rows = [(f'<span class="status {g["status"].lower()}">{escape(g["status"])}</span>',
             escape(g["name"]), _number(g["measured"], g.get("unit", "")),
             _number(g["threshold"], g.get("unit", "")), escape(g["window"]),
             f'{g["samples"]:,}', escape(g.get("reason", ""))) for g in gates]
    return _section("gates", "Gates", _table(
        f"{len(gates)} gate results; verdict {data.verdict.get('status')}",
        ("status", "gate", "measured", "threshold", "window", "samples", "reason"), rows,
        "gates"))


def _stages(data):
    stages = (data.verdict or {}).get("stages") or _stages_from_journal(data.transitions)
    if not stages:
        return ""
    rows = []
    for stage in stages:
        state = State(stage["state"])
        indent = "child" if stage.get("parent") else "parent"
        note = " (rolled back)" if stage.get("rolled_back") else ""
        rows.append((f'<span class="{indent}">{escape(stage["title"])}</span>',
                     f'<code class="marker {_state_class(state)}">{escape(state.marker)}'
                     f'</code>{note}', format_utc(stage.get("since"))))
    source = "verdict.json" if data.verdict else "the journal so far"
    return _section("stages", "Stages", _table(f"Stage states with the seed's markers "
                                               f"(from {source})",
                                               ("stage", "state", "since"), rows, "stages"))


def _stages_from_journal(transitions):
    latest = {}
    for record in transitions:
        node = record["node"]
        latest[node] = {"node": node, "title": record.get("title", node),
                        "state": record["to"], "since": record["time"],
                        "parent": node.rsplit(".", 1)[0] if "." in node else None}
    return list(latest.values())


def _state_class(state):
    if state.perfective:
        return "sv"
    if state.imperfective:
        return "nsv"
    return state.name.lower()


def _latency_table(data):
    rows = []
    summary_targets = (data.summary or {}).get("targets", {})
    for name, intervals in data.targets.items():
        figures = summary_targets.get(name, {}).get("latency_us")
        hist = intervals.total
        if figures is None and hist is not None and hist.total_count:
            figures = {"count": hist.total_count, "max": hist.max, **{
                key: hist.value_at_percentile(p) for key, p in PERCENTILE_COLUMNS}}
        if not figures or not figures.get("count"):
            rows.append((escape(name), "0") + ("-",) * (len(PERCENTILE_COLUMNS) + 1))
            continue
        rows.append((escape(name), f'{figures["count"]:,}')
                    + tuple(f'<span data-us="{figures[key]}">{figures[key] / 1000:.3f}</span>'
                            for key, _ in PERCENTILE_COLUMNS)
                    + (f'<span data-us="{figures["max"]}">{figures["max"] / 1000:.3f}</span>',))
    if not rows:
        return ""
    if summary_targets:
        source = "summary.json"
    elif len(data.loads) > 1:
        source = f"the hlogs of {len(data.loads)} load runs merged"
    else:
        source = "the merged hlogs (no summary.json yet)"
    return _table(f"Latency (ms) per target, from {source}",
                  ("target", "requests") + tuple(k.replace("_", ".") for k, _ in
                                                 PERCENTILE_COLUMNS) + ("max",), rows,
                  "numbers latency-table")


def _outcome_table(data):
    totals = {}
    for counts in data.counts:
        for name, outcomes in counts.by_target.items():
            into = totals.setdefault(name, {})
            for outcome, n in outcomes.items():
                into[outcome] = into.get(outcome, 0) + n
    if not totals:
        return ""
    rows = []
    for name, outcomes in totals.items():
        done = completed(outcomes)
        errors = sum(outcomes.get(o, 0) for o in Outcome
                     if o not in (Outcome.OK_2XX, Outcome.REDIRECT_3XX, Outcome.NOT_SENT))
        rows.append((escape(name),) + tuple(f"{outcomes.get(o, 0):,}" for o in Outcome)
                    + (f"{100.0 * errors / done:.3f} %" if done else "-",))
    return _table("Requests by outcome class per target (every accepted report)",
                  ("target",) + tuple(o.label for o in Outcome) + ("error rate",), rows,
                  "numbers outcomes")


def _generator(data):
    parts = []
    for load in data.loads:
        generator = (load.summary or {}).get("generator")
        if not generator:
            continue
        warnings = generator.get("warnings") or []
        items = "".join(f"<li><strong>{escape(w.get('kind', ''))}</strong>: "
                        f"{escape(w.get('message', ''))}</li>" for w in warnings)
        heading = f"<h3>{escape(load.run_id or load.path)}</h3>" if len(data.loads) > 1 \
            else ""
        parts.append(f"{heading}<p>CPU {generator.get('cpu_seconds', 0):.1f} s; largest "
                     f"schedule lag {generator.get('max_lag_us', 0) / 1000:.2f} ms; saturated "
                     f"intervals {generator.get('saturated_intervals', 0)}.</p>"
                     + (f"<ul>{items}</ul>" if items else "<p>No generator warnings: the "
                        "load generator kept its schedule.</p>"))
    return _section("generator", "Load generator health", "".join(parts)) if parts else ""
