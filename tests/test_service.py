"""The Controller service on real parts: real gRPC on loopback, a real agent process and real
target processes; each run is a real readiness run whose journal the assertions read back."""
import os
import threading

import grpc
import pytest

from loadgate.controller.plan import parse_plan
from loadgate.controller.runner_source import AgentMeasurementSource
from loadgate.controller.service import ControllerService
from loadgate.controller.service_server import serve_run
from loadgate.controller.service_runs import AgentSources, ManagedRun
from loadgate.controller.states import TITLES, Node, State
from loadgate.native._hdr import Histogram
from loadgate.proto.loadgate.v1 import controller_pb2, controller_pb2_grpc
from test_service_support import (RUN_TIMEOUT_S, SYNTHETIC_URLS, Bench, Served,
                                  high_risk_plan_text, journal_records, journal_transitions,
                                  synthetic_sources)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench():
    bench = Bench()
    yield bench
    bench.close()


@pytest.fixture
def served(bench, tmp_path):
    served = Served(bench.service(tmp_path / "runs", queue_limit=4))
    yield served
    served.close()


def follow(stub, run_id, events, joined=None, options=None):
    """Reads WatchRun into ``events`` until the stream ends; sets ``joined`` after the
    snapshot."""
    for event in stub.WatchRun(controller_pb2.WatchRunRequest(run_id=run_id),
                               timeout=RUN_TIMEOUT_S):
        events.append(event)
        if joined is not None and len(events) == 1:
            joined.set()


def states_after(transitions):
    """{stage title: marker} after replaying journal transitions from OZHIDAET."""
    states = {}
    for _, record in transitions:
        states[Node.parse(record["node"]).title] = record["to"]
    return states


def check_watcher_saw_everything_after_joining(events, run_dir):
    snapshot = events[0].snapshot
    assert events[0].WhichOneof("event") == "snapshot"
    seen = [e.transition for e in events if e.WhichOneof("event") == "transition"]
    journaled = journal_transitions(run_dir)
    assert seen, "no transition reached the watcher"
    first = seen[0].seq
    after = [(seq, r) for seq, r in journaled if seq >= first]
    # Every transition after the join, in order, none twice, none missing.
    assert [t.seq for t in seen] == [seq for seq, _ in after]
    assert [(t.stage, t.from_state, t.to_state) for t in seen] == [
        (Node.parse(r["node"]).title, r["from"], r["to"]) for _, r in after]
    # The snapshot is exactly the state before the first transition it was followed by.
    before = states_after([(seq, r) for seq, r in journaled if seq < first])
    shown = {s.stage: s.state for s in snapshot.stages}
    assert {k: v for k, v in shown.items() if v != State.OZHIDAET.value} == {
        k: v for k, v in before.items() if v != State.OZHIDAET.value}
    assert events[-1].WhichOneof("event") == "finished"
    return seen


def test_two_watchers_joining_at_different_times_see_every_later_transition_in_order(
        bench, served):
    info = served.submit(bench.plan_text())
    early, late = [], []
    early_joined = threading.Event()
    first = threading.Thread(target=follow, args=(served.stub, info.run_id, early,
                                                  early_joined))
    first.start()
    assert early_joined.wait(30)
    # The second joins once the run is measuring: the infrastructure stage is behind it.
    while not any(e.WhichOneof("event") == "interval" for e in list(early)):
        assert first.is_alive()
        early_joined.wait(0.05)
    follow(served.new_stub(), info.run_id, late)
    first.join(RUN_TIMEOUT_S)
    seen_early = check_watcher_saw_everything_after_joining(early, info.run_dir)
    seen_late = check_watcher_saw_everything_after_joining(late, info.run_dir)
    assert seen_late[0].seq > seen_early[0].seq
    assert early[-1].finished.verdict == late[-1].finished.verdict == served.stub.GetRun(
        controller_pb2.GetRunRequest(run_id=info.run_id)).verdict != ""
    assert late[0].snapshot.stages[0].state == State.ZAVERSHENO.value
    intervals = [e.interval for e in early if e.WhichOneof("event") == "interval"]
    phases = {i.phase for i in intervals}
    assert {"deployment.staging, canary step 1/2 (50%)",
            "deployment.staging, canary step 2/2 (100%)"} <= phases
    # Percentiles and the histogram they come from travel together.
    loaded = [t for i in intervals for t in i.targets if t.count]
    assert loaded
    for target in loaded:
        histogram = Histogram.decode_binary(target.latency)
        assert histogram.total_count == target.count
        assert histogram.value_at_percentile(99) == target.p99_us
        assert 1_000 < target.p50_us < 100_000


def test_a_watcher_that_stops_reading_is_skipped_ahead_and_does_not_slow_the_run(
        bench, served):
    info = served.submit(bench.plan_text())
    # A small receive window, so the stalled client's buffers fill after a few events.
    slow = served.new_stub([("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)])
    stalled = slow.WatchRun(controller_pb2.WatchRunRequest(run_id=info.run_id),
                            timeout=RUN_TIMEOUT_S)
    assert next(stalled).WhichOneof("event") == "snapshot"
    reader = []
    follow(served.stub, info.run_id, reader)
    # The run went on to its verdict while the stalled watcher read nothing.
    assert reader[-1].finished.verdict
    read_intervals = [e.interval for e in reader if e.WhichOneof("event") == "interval"]
    assert max(e.skipped for e in reader) == 0
    # The reader joined before the load began and got every merged interval, in order.
    assert [i.interval_index for i in read_intervals if not i.correction] == \
        list(range(len(read_intervals)))
    late = list(stalled)
    skipped = max(e.skipped for e in late)
    late_intervals = [e for e in late if e.WhichOneof("event") == "interval"]
    assert skipped > 0
    assert len(late_intervals) + skipped >= len(read_intervals) - 1
    assert len(late_intervals) <= len(read_intervals)
    # Transitions are never dropped: the stalled watcher still has every one, in order.
    stalled_transitions = [e.transition.seq for e in late
                           if e.WhichOneof("event") == "transition"]
    read_transitions = [e.transition.seq for e in reader
                        if e.WhichOneof("event") == "transition"]
    assert stalled_transitions[-len(read_transitions):] == read_transitions
    assert late[-1].WhichOneof("event") == "finished"


def test_submit_plan_with_a_bad_plan_is_invalid_argument_naming_line_and_key(bench, served):
    text = bench.plan_text().replace("rate: 400", "rate: -5").replace(
        "  connections: 8", "  connections: 8\n  burst: 3")
    with pytest.raises(grpc.RpcError) as caught:
        served.submit(text, "bad-plan.yaml")
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details()
    lines = text.splitlines()
    rate_line = next(n for n, line in enumerate(lines, 1) if "rate: -5" in line)
    burst_line = next(n for n, line in enumerate(lines, 1) if "burst:" in line)
    assert f"bad-plan.yaml:{rate_line}:" in details and "load.rate" in details
    assert f"bad-plan.yaml:{burst_line}:" in details and "load.burst" in details
    assert not served.stub.ListRuns(controller_pb2.ListRunsRequest()).runs


def test_a_plan_with_hooks_is_refused_unless_the_controller_allows_them(bench, served):
    text = bench.plan_text(extra="""\
        hooks:
          rollback: {command: [sh, -c, 'true']}
        """)
    with pytest.raises(grpc.RpcError) as caught:
        served.submit(text)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "hooks.rollback" in caught.value.details()


def test_approve_unblocks_a_high_risk_run_waiting_in_ozhidaet(tmp_path):
    served = Served(ControllerService(tmp_path / "runs", synthetic_sources))
    try:
        approve_unblocks(served, served.submit(high_risk_plan_text(*SYNTHETIC_URLS)))
    finally:
        served.close()


def approve_unblocks(served, info):
    request = controller_pb2.GetRunRequest(run_id=info.run_id)
    with pytest.raises(grpc.RpcError) as early:
        served.stub.Approve(controller_pb2.ApproveRequest(run_id=info.run_id, who="alice",
                                                          reason="too early"))
    assert early.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    events = []
    watching = threading.Thread(target=follow, args=(served.stub, info.run_id, events))
    watching.start()
    staging = TITLES[Node.parse("deployment.staging").sub]
    waiting = None
    for _ in range(RUN_TIMEOUT_S * 10):
        waiting = served.stub.GetRun(request)
        if waiting.waiting_for_approval or waiting.finished:
            break
        threading.Event().wait(0.1)
    assert waiting.waiting_for_approval, waiting
    assert {s.stage: s.state for s in waiting.stages}[staging] == State.OZHIDAET.value
    with pytest.raises(grpc.RpcError) as stranger:
        served.stub.Approve(controller_pb2.ApproveRequest(run_id=info.run_id, who="mallory",
                                                          reason="looks fine"))
    assert stranger.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert served.stub.GetRun(request).waiting_for_approval
    approved = served.stub.Approve(controller_pb2.ApproveRequest(
        run_id=info.run_id, who="alice", reason="CAB-42 approved"))
    assert approved.run_id == info.run_id
    watching.join(RUN_TIMEOUT_S)
    # Unblocked: the canary ramp ran and was judged (its gates, not the approval, decide).
    assert events[-1].finished.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
    assert not events[-1].finished.waiting_for_approval
    records = journal_records(info.run_dir)
    approval = next(n for n, r in enumerate(records) if r["kind"] == "approval")
    assert (records[approval]["who"], records[approval]["why"]) == ("alice", "CAB-42 approved")
    staging_moves = [n for n, r in enumerate(records)
                     if r["kind"] == "transition" and r["node"] == "deployment.staging"]
    assert staging_moves[0] > approval
    canary_steps = [n for n, r in enumerate(records)
                    if r["kind"] == "step" and r.get("phase") == "canary"]
    assert canary_steps and canary_steps[0] > approval
    assert served.stub.GetRun(request).verdict == events[-1].finished.verdict
    with pytest.raises(grpc.RpcError) as over:
        served.stub.Abort(controller_pb2.AbortRequest(run_id=info.run_id, who="alice",
                                                      reason="too late"))
    assert over.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_abort_stops_a_measuring_run_and_list_runs_shows_it(bench, served):
    info = served.submit(bench.plan_text())
    events = []
    follow_thread = threading.Thread(target=follow, args=(served.stub, info.run_id, events))
    follow_thread.start()
    while not any(e.WhichOneof("event") == "interval" for e in list(events)):
        assert follow_thread.is_alive()
        threading.Event().wait(0.05)
    served.stub.Abort(controller_pb2.AbortRequest(run_id=info.run_id, who="bob",
                                                  reason="change window closed"))
    follow_thread.join(RUN_TIMEOUT_S)
    assert events[-1].finished.verdict == "INCONCLUSIVE"
    blocked = [e.transition for e in events if e.WhichOneof("event") == "transition"
               and e.transition.to_state == State.ZABLOKIROVANO.value]
    assert blocked and all("aborted by bob: change window closed" in t.reason
                           for t in blocked)
    abort = [r for r in journal_records(info.run_dir) if r["kind"] == "abort"]
    assert [(r["who"], r["why"]) for r in abort] == [("bob", "change window closed")]
    runs = served.stub.ListRuns(controller_pb2.ListRunsRequest()).runs
    assert [r.run_id for r in runs] == [info.run_id] and runs[0].finished
    with pytest.raises(grpc.RpcError) as missing:
        served.stub.GetRun(controller_pb2.GetRunRequest(run_id="no-such-run"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


def test_serve_run_exposes_one_run_driven_by_its_caller(bench, tmp_path):
    """What `loadgate run` does to be watchable: its ManagedRun, served on its own."""
    plan = parse_plan(bench.plan_text(), "plan.yaml")
    run_dir = tmp_path / "runs" / "local-run"
    source = AgentMeasurementSource(plan, [bench.agent.address], str(run_dir / "load"))
    managed = ManagedRun("local-run", plan, run_dir, source)
    server = serve_run(managed, "127.0.0.1:0")
    channel = grpc.insecure_channel(server.address)
    try:
        stub = controller_pb2_grpc.ControllerStub(channel)
        watcher = stub.WatchRun(controller_pb2.WatchRunRequest(), timeout=RUN_TIMEOUT_S)
        assert next(watcher).snapshot.run_id == "local-run"
        managed.start()
        events = list(watcher)
        assert managed.wait(RUN_TIMEOUT_S).final
        assert events[-1].finished.verdict == stub.GetRun(
            controller_pb2.GetRunRequest(run_id="local-run")).verdict != ""
        assert [r.run_id for r in stub.ListRuns(controller_pb2.ListRunsRequest()).runs] == [
            "local-run"]
        with pytest.raises(grpc.RpcError) as refused:
            stub.SubmitPlan(controller_pb2.SubmitPlanRequest(plan_yaml=bench.plan_text()))
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        channel.close()
        server.stop()


def test_without_agents_a_run_starts_its_own_local_agent_and_stops_it(bench, tmp_path):
    served = Served(ControllerService(tmp_path / "runs", AgentSources(workers_per_agent=1)))
    try:
        info = served.submit(bench.plan_text())
        events = []
        follow(served.stub, info.run_id, events)
        assert events[-1].finished.verdict
        assert any(e.WhichOneof("event") == "interval" for e in events)
        log = os.path.join(info.run_dir, "agent-0.log")
        for _ in range(100):
            with open(log) as handle:
                text = handle.read()
            if "shutting down" in text:
                break
            threading.Event().wait(0.1)
        assert text.startswith("listening on 127.0.0.1:") and "shutting down" in text
    finally:
        served.close()
