"""report.md: the seed's Deployment Status Report and Deployment Classification Report.

Rendered from a Verdict (verdict.py) alone, so a report can be regenerated from verdict.json.
"""
import datetime

from loadgate.controller.journal import StepPhase
from loadgate.controller.states import State

SEED_NAMES = {
    "FEATURE": "xin gong-neng", "HOTFIX": "jin-ji xiu-fu", "ROLLBACK": "hui-gun",
    "CONFIG": "pei-zhi", "MIGRATION": "qian-yi", "HIGH": "gao feng-xian",
    "MEDIUM": "zhong feng-xian", "LOW": "di feng-xian", "DEV": "kai-fa huan-jing",
    "STAGING": "yan-zheng huan-jing", "PRODUCTION": "sheng-chan huan-jing",
    "BLUE-GREEN": "lan-lv bu-shu", "CANARY": "jin-si-que bu-shu", "ROLLING": "gun-dong bu-shu",
    "BIG-BANG": "yi-ci-xing bu-shu",
}


def _time(epoch, seconds=False):
    if epoch is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _number(value, unit):
    if value is None or value != value:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit in ("%", "pts"):
        return f"{value:.2f}{'%' if unit == '%' else ' pts'}"
    if unit == "x":
        return f"{value:.3f}x"
    return f"{value:.1f} {unit}".strip()


def _status_lines(verdict):
    lines = [f"## Deployment Status Report - {_time(verdict.finished, True)}", ""]
    by_parent = {}
    for stage in verdict.stages:
        by_parent.setdefault(stage["parent"], []).append(stage)
    previous = None
    for stage in by_parent.get(None, []):
        state = State(stage["state"])
        lines.append(f"### {stage['title']} {state.marker}")
        children = by_parent.get(stage["node"], [])
        if state is State.OZHIDAET and previous is not None and \
                not State(previous["state"]).perfective:
            lines.append(f"- Blocked by: {previous['title']} [{previous['state']}]")
        elif state is State.OZHIDAET and all(State(c["state"]) is State.OZHIDAET
                                             for c in children):
            lines.append("- Waiting: prerequisites must be SV first")
        else:
            waiting_on = None
            for child in children:
                lines.append(f"- {child['title']}: {_child_state(child, waiting_on)}")
                if not State(child["state"]).perfective:
                    waiting_on = waiting_on or child
        lines.append("")
        previous = stage
    return lines


def _child_state(child, waiting_on):
    state = State(child["state"])
    since = _time(child["since"])
    if state.perfective and child.get("rolled_back"):
        return f"{state.marker} at {since} (rolled back: {State.AVARIYA.marker} → " \
               f"{State.OTKAT.marker} → previous {state.marker})"
    if state.perfective:
        return f"{state.marker} at {since}"
    if state.imperfective:
        return f"{state.marker} started {since}"
    if state is State.OZHIDAET and waiting_on is not None:
        return f"{state.marker} (blocked by {waiting_on['title'].lower()})"
    return state.marker + (f" at {since}" if child["since"] else "")


def _classification_lines(verdict):
    d = verdict.deployment
    values = {c["key"]: c["value"] for c in verdict.classification}
    steps = values.get("canary.steps")
    strategy_note = " - " + " → ".join(f"{s:g}%" for s in steps) if steps else ""
    lines = ["# Deployment Classification Report", "",
             f"**Deployment ID**: {d['id']}",
             f"**Timestamp**: {_time(verdict.started, True).replace(' ', 'T')}Z",
             f"**Requested By**: {d.get('requested_by') or '-'}", "",
             "## Classification", "",
             f"- **Type**: {d['type']} ({SEED_NAMES[d['type']]})"
             + (f" - {d['description']}" if d.get("description") else ""),
             f"- **Risk Level**: {d['risk']} ({SEED_NAMES[d['risk']]})",
             f"- **Strategy**: {d['strategy']} ({SEED_NAMES[d['strategy']]}){strategy_note}",
             f"- **Environment**: {d['environment']} ({SEED_NAMES[d['environment']]})", "",
             "### Requirements filled in by the classification", "",
             "| key | value | how | why |", "|---|---|---|---|"]
    for c in verdict.classification:
        how = c["disposition"].lower() + (f" (override: {c['override_reason']})"
                                          if c["override_reason"] else "")
        lines.append(f"| {c['key']} | {c['shown']} | {how} | {c['reason']} |")
    lines.append("")
    return lines


def _gate_lines(verdict):
    lines = ["## Deployment Gates", "",
             "| gate | window | measured | threshold | confidence bounds | samples | status |",
             "|---|---|---|---|---|---|---|"]
    for g in verdict.gates:
        bounds = "-" if g.lower is None and g.upper is None else \
            f"{_number(g.lower, g.unit)} .. {_number(g.upper, g.unit)}"
        lines.append(f"| {g.name} | {g.window} | {_number(g.measured, g.unit)} | "
                     f"{_number(g.threshold, g.unit)} | {bounds} | {g.samples} | "
                     f"{g.status.value} |")
    if not verdict.gates:
        lines.append("| (no window was judged) | | | | | | |")
    lines.append("")
    rollout = {StepPhase.CANARY.value, StepPhase.ROLLING.value, StepPhase.SWITCH.value}
    steps = [s for s in verdict.steps if s.get("phase") in rollout]
    if steps:
        lines += ["## Rollout Steps", "", "| step | status | at | requests |", "|---|---|---|---|"]
        for s in steps:
            requests = sum(t["requests"] for t in s.get("measured", {}).values())
            lines.append(f"| {s['window']} | {s['status']} | {_time(s['time'], True)} | "
                         f"{requests} |")
        lines.append("")
    return lines


def _rollback_lines(verdict):
    plan = verdict.plan or {}
    rollback = plan.get("rollback", {})
    hook = (plan.get("hooks") or {}).get("rollback")
    lines = ["## Rollback Plan", "",
             f"- **Strategy**: {rollback.get('strategy', '-')}",
             f"- **RTO**: {rollback.get('rto', '-')} s" if rollback.get("rto") else
             "- **RTO**: -"]
    if rollback.get("procedure"):
        lines.append(f"- **Procedure**: `{rollback['procedure']}`")
    if hook:
        lines.append(f"- **Hook**: `{' '.join(hook.get('command', [])) or hook.get('webhook')}`")
    if rollback.get("tested_in_staging") is not None:
        lines.append(f"- **Validation**: tested in staging: "
                     f"{'yes' if rollback['tested_in_staging'] else 'no'}")
    lines.append("")
    return lines


def render(verdict):
    """The Markdown report of a Verdict."""
    lines = _status_lines(verdict)
    if "type" in verdict.deployment:
        lines += _classification_lines(verdict)
    lines += _gate_lines(verdict)
    if verdict.knee:
        knee = verdict.knee
        found = f"{knee['rate']:g} req/s" if knee["rate"] is not None else "none"
        lines += ["## Throughput Knee", "",
                  f"- **Highest rate meeting the latency and error-rate gates**: {found}",
                  f"- **Search stopped**: {knee['reason']}", ""]
    lines += _rollback_lines(verdict)
    if verdict.overrides:
        lines += [f"## Overrides of {verdict.deployment['risk']}-risk defaults", ""]
        lines += [f"- {o['key']}: {o['shown_default']} → {o['shown']} "
                  f"({o['override_reason'] or 'no reason given'})" for o in verdict.overrides]
        lines.append("")
    if verdict.decisions:
        lines += ["## Decisions", ""]
        lines += [f"- {r['kind']} by {r.get('who')} at {_time(r.get('time'), True)}: "
                  f"{r.get('why')}" for r in verdict.decisions]
        lines.append("")
    lines += ["## Recommendation", "",
              f"**Verdict**: {verdict.status.value}",
              f"**Status**: {verdict.marker} - {verdict.recommendation}",
              f"**Reason**: {'; '.join(verdict.reasons) or 'every stage passed its gates'}",
              "**Next Steps**:"]
    lines += [f"{i}. {step}" for i, step in enumerate(verdict.next_steps, 1)]
    lines += ["", "## State Transitions", ""]
    lines += [f"- {_time(t['time'], True)} {t['title']}: [{t['from']}] → [{t['to']}] "
              f"({t['reason']})" for t in verdict.transitions]
    return "\n".join(lines) + "\n"
