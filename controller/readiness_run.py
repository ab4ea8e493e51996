"""A readiness run on this machine, from the plan to the verdict and every report.

``run_readiness(plan, run_dir, ...)`` is what ``loadgate run`` does with a readiness plan
(and what ``loadgate demo`` does with its own): it starts the plan's local agents when
neither ``agents`` nor the plan name any, measures through them (runner_source), ticks the
``Readiness`` orchestrator until the run ends, showing live progress, writes verdict.json,
report.md, junit.xml and report.html, prints a short summary and returns the ``Verdict``.

``resume=True`` takes over the run journaled in run_dir after its controller died: the
plan comes from the journal, local agents the dead controller left are stopped (they are
recorded in ``local-agents.json``) and fresh ones started, finished stages and canary steps
are not repeated, and the load of the new controller goes to a fresh ``load-N`` directory so
the dead one's measurements stay as they were; a canary step it was holding counts them
(readiness.JournaledLoad) and holds only for the rest of its hold.

``serve`` (``loadgate run --serve``) drives the run through a service_runs.ManagedRun instead,
whose thread ticks it and publishes every transition and merged interval; ``serve(managed)``
starts the server that exposes it (service_server.serve_run), stopped when the run ends.

A readiness plan is one that declares ``gates:``: there is something to judge.  A plan without
gates is a plain load run (``loadgate run`` without this module).
"""
import contextlib
import json
import os
import signal
import sys
import time

from loadgate.controller import gate_cli
from loadgate.controller import verdict as verdict_module
from loadgate.controller.gates import GateStatus
from loadgate.controller.journal import JournalError, RecordKind, StepPhase, read_journal
from loadgate.controller.local_agents import AdoptedAgents, LocalAgents
from loadgate.controller.plan import Plan, load_plan
from loadgate.controller.plan_types import GatesPlan
from loadgate.controller.readiness import JOURNAL_NAME, LOAD_DIR, Readiness
from loadgate.controller.readiness_progress import ReadinessProgress, TrackedSource
from loadgate.controller.report_html import write_report_html
from loadgate.controller.runner_source import AgentMeasurementSource
from loadgate.controller.service_runs import ManagedRun
from loadgate.controller.verdict import ErrorKind, RunStatus, VerdictStatus
from loadgate.native.errors import InfrastructureError, LoadgateError

LOCAL_AGENTS_FILE = "local-agents.json"
# Agents stop their load this long after losing the controller: short, because a killed
# controller's load must not run on into the next controller's windows.
LOCAL_DEAD_MAN = "3s"
RESUME_WARMUP_S = 2.0


def is_readiness_plan(plan):
    """Whether ``loadgate run`` judges plan through the readiness procedure."""
    return plan.gates != GatesPlan()


def is_readiness_run(run_dir):
    """Whether run_dir holds a readiness journal (rather than a plain load run's)."""
    try:
        with open(os.path.join(run_dir, JOURNAL_NAME), "rb") as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("kind") == RecordKind.PLAN.value


def journaled_plan(run_dir):
    """The plan the readiness run in run_dir executes."""
    records = read_journal(os.path.join(run_dir, JOURNAL_NAME))
    first = next(iter(records), None)
    if first is None or first.get("kind") != RecordKind.PLAN.value:
        raise JournalError(f"{run_dir} holds no readiness journal to resume")
    return Plan.from_dict(first["plan"], first["source"])


def wants_readiness(args):
    """Whether ``loadgate run`` args name a readiness plan or a readiness run to resume."""
    if args.resume:
        return is_readiness_run(args.resume)
    return is_readiness_plan(load_plan(args.plan))


def run_command(args, agents, credentials, metadata, serve=None):
    """``loadgate run`` of a readiness plan (or ``--resume`` of a readiness run); returns
    ``loadgate gate check``'s exit code for the run.  ``serve``: see the module docstring."""
    if args.resume:
        run_dir, plan = args.resume, None
    else:
        plan = load_plan(args.plan)
        run_id = f"readiness-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(4).hex()}"
        run_dir = args.run_dir or os.path.join("runs", run_id)
    with interrupted_by_sigterm():
        run_readiness(plan, run_dir, agents=agents, progress=not args.no_progress,
                      resume=bool(args.resume), workers=args.workers,
                      credentials=credentials, metadata=metadata, dead_man_s=args.dead_man,
                      serve=serve)
    return int(gate_cli.check(run_dir)[0])


@contextlib.contextmanager
def interrupted_by_sigterm():
    """Within it SIGTERM ends a run as Ctrl-C does (KeyboardInterrupt): load and agents
    stopped, the journal kept for ``--resume``.  For the main thread of a command."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_readiness(plan, run_dir, *, agents=None, progress=True, resume=False, workers=0,
                  credentials=None, metadata=(), tick_s=0.25, out=None, console=None,
                  dead_man_s=None, serve=None):
    """Runs (or with resume=True, continues) the readiness run of plan in run_dir until it
    ends; returns its Verdict.  ``agents`` (host:port list) overrides the plan's; with none
    at all the plan's ``local_agents`` are started here and stopped at the end.  Raises
    InfrastructureError (after writing an error verdict) when the agents cannot start.
    ``console`` (rich) is where the live progress goes (default: stderr); ``dead_man_s`` is
    how soon local agents stop their load without this controller (default 3 s); ``serve``
    exposes the run while it lasts (see the module docstring)."""
    out = out or sys.stdout
    run_dir = os.path.abspath(os.fspath(run_dir))
    if resume:
        plan = journaled_plan(run_dir)
        _stop_left_agents(run_dir)
        if _decided(run_dir):
            verdict = verdict_module.load(run_dir)
            print(render_summary(verdict, run_dir), end="", file=out)
            return verdict
    os.makedirs(run_dir, exist_ok=True)
    load_dir = _fresh(os.path.join(run_dir, LOAD_DIR))
    entries = list(agents or plan.agents)
    local = None
    if not entries:
        local = LocalAgents(plan.local_agents, lambda index: _agent_log(load_dir, index),
                            workers=workers or None,
                            dead_man=f"{dead_man_s:g}s" if dead_man_s else LOCAL_DEAD_MAN)
        try:
            entries = local.start()
        except InfrastructureError as exc:
            if not resume:
                verdict_module.write_error(run_dir, ErrorKind.INFRASTRUCTURE, str(exc),
                                           {"id": plan.deployment.id})
            raise
    try:
        if local is not None:
            local.record(os.path.join(run_dir, LOCAL_AGENTS_FILE))
        source = TrackedSource(AgentMeasurementSource(
            plan, entries, load_dir, workers_per_agent=workers, credentials=credentials,
            metadata=metadata))
        verdict = _drive(plan, run_dir, source, resume, {
            "enabled": progress, "console": console}, tick_s, serve)
    finally:
        if local is not None:
            local.stop()
            if os.path.exists(os.path.join(run_dir, LOCAL_AGENTS_FILE)):
                os.remove(os.path.join(run_dir, LOCAL_AGENTS_FILE))
    _write_html(run_dir, load_dir, out)
    print(render_summary(verdict, run_dir), end="", file=out)
    return verdict


def _drive(plan, run_dir, source, resume, view_options, tick_s, serve=None):
    managed = server = None
    try:
        if serve is None:
            readiness = Readiness.resume(run_dir, source) if resume else \
                Readiness(plan, run_dir, source)
        else:
            managed = ManagedRun(os.path.basename(run_dir), plan, run_dir, source,
                                 tick_s=tick_s, resume=resume)
            readiness = managed.readiness
    except BaseException:
        source.stop()
        raise
    try:
        if resume and not readiness.status.final:
            _warm_up(plan, source)
        if managed is not None:
            server = serve(managed)
            managed.start()
        with ReadinessProgress(readiness, source, **view_options) as view:
            if managed is None:
                while not readiness.tick().final:
                    view.update()
                    time.sleep(tick_s)
            else:
                # The ManagedRun's thread ticks the run; this one only draws.
                while not managed.finished:
                    managed.wait(tick_s)
                    view.update()
    finally:
        if server is not None:
            server.stop()
        if not readiness.status.final:
            # Interrupted: the load stops, the journal stays for ``--resume``.
            source.stop()
    if managed is not None and managed.error:
        raise InfrastructureError(f"the run failed: {managed.error}")
    return readiness.verdict or verdict_module.load(run_dir)


def _decided(run_dir):
    return any(r.get("kind") == RecordKind.VERDICT.value and RunStatus(r["run_status"]).final
               for r in read_journal(os.path.join(run_dir, JOURNAL_NAME)))


def _warm_up(plan, source):
    # A resumed run measures on fresh agents and connections, whose first second is slower
    # than the rest; the step it resumes must not be judged on that.  Every target gets its
    # share so none is cold when the step's window opens.
    share = 1.0 / len(plan.targets)
    source.start_window({t.name: share for t in plan.targets}, plan.load.rate)
    time.sleep(plan.load.warmup_s or RESUME_WARMUP_S)


def _write_html(run_dir, load_dir, out):
    try:
        write_report_html(run_dir, load_dir if os.path.isdir(load_dir) else None)
    except (LoadgateError, OSError, ValueError) as exc:
        # The verdict and report.md are written; a chart that cannot be drawn must not
        # hide them.
        print(f"loadgate: report.html not written: {exc}", file=out)


def render_summary(verdict, run_dir):
    """The few lines a person reads at the end: verdict, the deciding gate, next steps and
    where the reports are."""
    lines = ["", f"Deployment {verdict.deployment.get('id')}: {verdict.status.value} "
                 f"{verdict.marker}",
             f"Recommendation: {verdict.recommendation}"]
    failed = [g for g in verdict.gates if g.status is GateStatus.FAIL]
    unsure = [g for g in verdict.gates if g.status is GateStatus.INCONCLUSIVE]
    deciding = failed or unsure if verdict.status is not VerdictStatus.PASS else []
    for gate in deciding[:4]:
        lines.append(f"  {gate.status.value} {gate.name} in {gate.window}: "
                     f"measured {_figure(gate.measured, gate.unit)} against "
                     f"{_figure(gate.threshold, gate.unit)} ({gate.samples} samples)")
    if failed:
        beside = sorted((g for g in verdict.gates if g.window == failed[0].window and
                         g.status is not GateStatus.FAIL and g.measured == g.measured),
                        key=lambda g: not g.name.startswith("relative."))
        if beside:
            lines.append("  in the same window: " + ", ".join(
                f"{g.name} {_figure(g.measured, g.unit)} ({g.status.value})"
                for g in beside[:4]))
    rolled = [s for s in verdict.steps if s.get("phase") == StepPhase.CANARY.value]
    if rolled:
        last = rolled[-1]
        lines.append(f"Canary: {len(rolled)} step(s) judged, last {last['window']} "
                     f"{last['status']}" + (", rolled back" if any(
                         s.get("rolled_back") for s in verdict.stages) else ""))
    if verdict.status is VerdictStatus.PASS:
        lines.append(f"Every gate passed ({len(verdict.gates)} judged).")
        window = verdict.gates[-1].window if verdict.gates else None
        last = [g for g in verdict.gates if g.window == window and ".latency." in g.name]
        if last:
            lines.append(f"  {last[0].window}: " + ", ".join(
                f"{g.name} {_figure(g.measured, g.unit)} ({g.samples} samples)"
                for g in last))
    lines += [f"Reason: {reason}" for reason in verdict.reasons[:3]]
    if verdict.next_steps:
        lines.append("Next Steps:")
        lines += [f"  {n}. {step}" for n, step in enumerate(verdict.next_steps, 1)]
    lines.append("Reports:")
    for name in ("report.md", "report.html", "verdict.json", "junit.xml"):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            lines.append(f"  {path}")
    lines.append(f"Check it in CI: loadgate gate check {run_dir}")
    return "\n".join(lines) + "\n"


def _figure(value, unit):
    if value is None or value != value:
        return "n/a"
    return f"{value:.4g} {unit}".rstrip()


def _stop_left_agents(run_dir):
    recorded = os.path.join(run_dir, LOCAL_AGENTS_FILE)
    if os.path.exists(recorded):
        AdoptedAgents(recorded).stop()
        os.remove(recorded)


def _agent_log(load_dir, index):
    folder = os.path.join(load_dir, "agents")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"agent-{index}.log")


def _fresh(path):
    # A resumed run measures anew: the load of an earlier controller keeps its directory.
    candidate, number = path, 1
    while os.path.exists(candidate):
        number += 1
        candidate = f"{path}-{number}"
    return candidate
