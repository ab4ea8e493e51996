"""Taking over a run whose controller died: rebuild it from its run directory.

The journal holds every report the dead controller accepted, so replaying it through the
same ingest path gives back the exact merged state; the hlog and telemetry files are
rewritten from it.  The agents kept their reports (and stopped their load once the dead-man
time passed), so streaming from each agent's last journaled seq collects the rest, each
interval exactly once.

``journaled_intervals`` reads a dead controller's load journal without taking the run over:
a resumed readiness run counts what the step it resumes had already measured.
"""
import os

from loadgate.controller.merge import IntervalMerger
from loadgate.controller.runner_reports import (AgentStream, HistogramLayout, RejectReason,
                                                Rejection)
from loadgate.controller.run_journal import RecordKind, read_journal, report_payload
from loadgate.controller.rundir import JOURNAL, RunDir
from loadgate.controller.runner import DistributedRun
from loadgate.controller.runner_agents import ClockSample
from loadgate.controller.runner_session import AgentState, RunStatus
from loadgate.controller.runner_spec import RunDefinition
from loadgate.native.errors import InfrastructureError
from loadgate.proto.loadgate.v1 import common_pb2


def resume_run(path, credentials=None, metadata=()):
    """A DistributedRun in the state its journal records; call ``launch()`` then ``wait()``."""
    run_dir = RunDir(path, resume=True)
    description = run_dir.read_run()
    records = list(read_journal(run_dir.file(JOURNAL)))
    if any(kind is RecordKind.FINISHED for kind, _ in records):
        raise InfrastructureError(f"the run in {run_dir.path} has already finished")
    started = next((r for kind, r in records if kind is RecordKind.STARTED), None)
    if started is None:
        raise InfrastructureError(f"the run in {run_dir.path} never started; start a new one")
    definition = RunDefinition.from_dict(description["definition"])
    run = DistributedRun(definition, [a["address"] for a in description["agents"]], run_dir,
                         run_id=description["run_id"], credentials=credentials,
                         metadata=metadata)
    for session, agent in zip(run.sessions, description["agents"]):
        session.client.known_id = agent["agent_id"]
        session.client.clock = ClockSample(**agent["clock"])
        session.shard_requests = agent["shard_requests"]
        session.stream = AgentStream(run.run_id, agent["agent_id"], definition.target_names,
                                     run.layout)
    run.start_ns = started["start_ns"]
    run._setup()
    status = RunStatus.RUNNING
    by_id = {s.agent_id: s for s in run.sessions}
    for kind, record in records:
        session = by_id.get(record.get("agent_id"))
        if kind is RecordKind.REPORT:
            ready = run.ingest.replay(session.stream, report_payload(record))
            if isinstance(ready, Rejection):
                raise InfrastructureError(f"{run_dir.file(JOURNAL)}: journaled report "
                                          f"{record['agent_id']}#{record['seq']} does not "
                                          f"replay: {ready.message}")
            run._emit(ready)
        elif kind is RecordKind.REJECTED:
            run.ingest.rejections.append(Rejection(
                record["agent_id"], record["seq"], record["interval_index"],
                RejectReason(record["reason"]), record["message"]))
        elif kind is RecordKind.AGENT_LOST:
            session.state = AgentState.LOST
            session.times_lost += 1
            session.lost_at_ns = record["ts_ns"]
            session.lost_reason = record["reason"]
            run._emit(run.ingest.merger.agent_gone(session.agent_id))
        elif kind is RecordKind.AGENT_BACK:
            session.state = AgentState.RUNNING
            run.ingest.merger.agent_back(session.agent_id)
        elif kind is RecordKind.ADJUSTED:
            run.user_rate_scale = record["user_rate_scale"]
            for agent_id in record["agents"]:
                by_id[agent_id].rate_scale = record["rate_scale"]
            run.weights.update(record["weights"])
        elif kind is RecordKind.STOPPING:
            run._stopping = True
            if record["status"] in (RunStatus.ABORTED.value, RunStatus.STOPPED.value):
                status = RunStatus(record["status"])
                run.stop_reason = record["reason"]
    run._mark_finished()
    run.status = status
    run.run_dir.journal.append(RecordKind.RESUMED, controller_id=run.controller_id,
                               last_seq={s.agent_id: s.stream.last_seq for s in run.sessions})
    return run


def journaled_intervals(path):
    """(when the run began, ns, or None; the merged intervals its journal holds) for the run
    directory at path, leaving it untouched.

    The reports are merged as the live controller merged them (agents' clock offsets removed,
    lost agents no longer waited for); intervals it had not handed out yet when it died come
    out too, with what was journaled of them, so every journaled report counts once."""
    journal = os.path.join(path, JOURNAL)
    if not os.path.exists(journal):
        return None, []
    records = list(read_journal(journal))
    description = next((r for kind, r in records if kind is RecordKind.RUN), None)
    if description is None:
        return None, []
    layout = HistogramLayout()
    definition = RunDefinition.from_dict(description["definition"])
    streams = {a["agent_id"]: AgentStream(description["run_id"], a["agent_id"],
                                          definition.target_names, layout)
               for a in description["agents"]}
    merger = IntervalMerger(definition.target_names, list(streams), layout,
                            {a["agent_id"]: a["clock"]["offset_ns"]
                             for a in description["agents"]})
    ready = []
    for kind, record in records:
        if kind is RecordKind.REPORT:
            result = streams[record["agent_id"]].check(
                common_pb2.IntervalReport.FromString(report_payload(record)))
            if isinstance(result, Rejection):
                raise InfrastructureError(f"{journal}: journaled report {record['agent_id']}#"
                                          f"{record['seq']} does not replay: {result.message}")
            streams[record["agent_id"]].commit(result)
            ready.extend(merger.add(result))
        elif kind is RecordKind.AGENT_LOST:
            ready.extend(merger.agent_gone(record["agent_id"]))
        elif kind is RecordKind.AGENT_BACK:
            merger.agent_back(record["agent_id"])
    ready.extend(merger.finish())
    return description["ts_ns"], [m for m in ready if m.agents and m.end_ns]
