"""A real agent behind a gRPC relay the test controls.

Damaged reports (a corrupt histogram, a repeated report, a foreign run id, bytes that are not
a report) are each rejected with a recorded reason, the controller re-requests the stream from
the last good seq, and the run's totals stay exact.  A cut relay makes the agent unreachable
for longer than the loss timeout: it is declared lost, comes back, and StreamReports from the
last seq gives every interval exactly once."""
import asyncio
import time

import os

import grpc
import pytest

from test_controller_run import (assert_seqs_contiguous, completed_in, definition,
                                 journal_reports, real_agents, real_target, sum_reports)
from loadgate.controller.merge import Metric
from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.run_journal import RecordKind, read_journal, report_payload
from loadgate.controller.rundir import JOURNAL
from loadgate.controller.runner import DistributedRun
from loadgate.proto.loadgate.v1 import common_pb2

SERVICE = "loadgate.v1.Agent"
DAMAGE_PAUSE_S = 0.3
UNARY = ("Describe", "Ping", "Prepare", "Start", "Adjust", "Stop")


class DamagingRelay:
    """Forwards every Agent call to ``upstream`` byte for byte, except that the n-th report
    streamed (counting every stream) is replaced by ``damage(report_bytes)``'s output."""

    def __init__(self, upstream, damages=()):
        self.channel = grpc.aio.insecure_channel(upstream)
        self.damages = dict(damages)  # n -> function(bytes) -> list of bytes to send instead
        self.streamed = 0
        self.cut_until = 0.0  # time.monotonic() before which the relay answers nothing
        self.upstream_streams = set()
        self.server = grpc.aio.server()
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._unary(name))
                    for name in UNARY}
        handlers["StreamReports"] = grpc.unary_stream_rpc_method_handler(self._stream)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _unary(self, name):
        call = self.channel.unary_unary(f"/{SERVICE}/{name}")

        async def forward(request, context):
            if time.monotonic() < self.cut_until:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "relay cut")
            try:
                return await call(request, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details())
        return forward

    async def _stream(self, request, context):
        if time.monotonic() < self.cut_until:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "relay cut")
        call = self.channel.unary_stream(f"/{SERVICE}/StreamReports")(request)
        self.upstream_streams.add(call)
        try:
            async for report in call:
                self.streamed += 1
                damage = self.damages.pop(self.streamed, None)
                for item in (damage(report) if damage else [report]):
                    yield item
                if damage:
                    # Give the controller time to refuse it and hang up before the next
                    # report goes out on this stream, so a later damage is not spent on a
                    # report nobody reads.
                    await asyncio.sleep(DAMAGE_PAUSE_S)
        except asyncio.CancelledError:
            if time.monotonic() >= self.cut_until:
                raise
        finally:
            self.upstream_streams.discard(call)
        if time.monotonic() < self.cut_until:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "relay cut")

    def cut(self, seconds):
        """Nothing passes for ``seconds``: calls fail UNAVAILABLE, open streams are broken."""
        self.cut_until = time.monotonic() + seconds
        for call in list(self.upstream_streams):
            call.cancel()

    async def start(self):
        await self.server.start()
        return f"127.0.0.1:{self.port}"

    async def close(self):
        await self.server.stop(None)
        await self.channel.close()


def edited(report_bytes, edit):
    report = common_pb2.IntervalReport.FromString(report_bytes)
    edit(report)
    return report.SerializeToString()


def corrupt_histogram(report):
    target = report.targets[0]
    target.latency = target.latency[:12] + b"\xff" * 16 + target.latency[28:]


# Keyed by the n-th report the relay forwards, counting the agent's resends after a refusal.
DAMAGES = {
    # The agent's first report with a damaged histogram: refused on arrival (the first report
    # of an agent is decoded whole to check its layout), then fetched again.
    1: lambda r: [edited(r, corrupt_histogram)],
    # Its second report, damaged: it passes the arrival checks, is journaled, and its
    # histograms fail in the merge: discarded whole, its seq consumed (the agent would send
    # the same bytes again).
    3: lambda r: [edited(r, corrupt_histogram)],
    # A report delivered twice: the repeat is refused, the stream goes on from the last seq.
    5: lambda r: [r, r],
    # A report of another run.
    7: lambda r: [edited(r, lambda m: setattr(m, "run_id", "someone-else"))],
    # Not a report at all.
    9: lambda r: [b"\x0a\xff\xff\xff\xff\x0f"],
}


@pytest.mark.slow
def test_damaged_reports_are_rejected_and_the_run_stays_exact(tmp_path):
    run_dir = str(tmp_path / "run")
    with real_target() as (url, requests_seen), real_agents(2) as agents:
        async def main():
            relay = DamagingRelay(agents[0].address, DAMAGES)
            relayed = await relay.start()
            run = DistributedRun(definition(url, rate=200, duration_s=4.0),
                                 [relayed, agents[1].address], run_dir)
            try:
                await run.prepare()
                await run.start(lead_s=0.3)
                return run, await run.wait(60)
            finally:
                await run.close()
                await relay.close()
        run, summary = asyncio.run(main())
        seen = requests_seen()
    reasons = [r["reason"] for r in summary["rejected_reports"]]
    assert sorted(reasons) == sorted(["bad_histogram", "bad_histogram", "seq_repeat",
                                      "wrong_run", "malformed"])
    assert all(r["message"] for r in summary["rejected_reports"])
    assert summary["status"] == "completed"
    assert [a["state"] for a in summary["agents"]] == ["finished", "finished"]
    assert summary["agents"][0]["rejections"] == 5
    assert "reports_rejected" in {w["kind"] for w in summary["generator"]["warnings"]}
    # Nothing refused was merged, and everything else was, once.
    reports = journal_reports(run_dir)
    assert_seqs_contiguous([r for r in reports if r.agent_id != summary["agents"][0]["agent_id"]])
    discarded = discarded_reports(run_dir)
    assert [r.seq for r in discarded] == [2]
    lost = completed_in(discarded)
    assert lost > 0 and completed_in(reports) == summary["load"]["completed"] == 800 - lost
    assert summary["load"]["completed"] + lost == seen
    for metric in Metric:
        assert sum_reports(reports, "main", metric) == \
            run.ingest.totals.targets["main"].histograms[metric]


def discarded_reports(run_dir):
    records = list(read_journal(os.path.join(run_dir, JOURNAL)))
    gone = {(r["agent_id"], r["seq"]) for kind, r in records if kind is RecordKind.DISCARDED}
    return [common_pb2.IntervalReport.FromString(report_payload(r)) for kind, r in records
            if kind is RecordKind.REPORT and (r["agent_id"], r["seq"]) in gone]

@pytest.mark.slow
def test_agent_cut_off_then_back_loses_and_doubles_nothing(tmp_path):
    run_dir = str(tmp_path / "run")
    with real_target() as (url, requests_seen), real_agents(2) as agents:
        async def main():
            relay = DamagingRelay(agents[0].address)
            relayed = await relay.start()
            run = DistributedRun(definition(url, rate=200, duration_s=4.0,
                                            policy=AgentLossPolicy.CONTINUE),
                                 [relayed, agents[1].address], run_dir)

            def cut_once(merged):
                if merged.index == 1 and not relay.cut_until:
                    relay.cut(2.8)
            run.add_listener(cut_once)
            try:
                await run.prepare()
                await run.start(lead_s=0.3)
                return run, await run.wait(60)
            finally:
                await run.close()
                await relay.close()
        run, summary = asyncio.run(main())
        seen = requests_seen()
    assert summary["status"] == "completed"
    lost = summary["agents_lost"]
    assert len(lost) == 1 and lost[0]["times_lost"] == 1 and lost[0]["final_state"] == "finished"
    assert lost[0]["unsent"] == 0
    kinds = [kind for kind, _ in read_journal(os.path.join(run_dir, JOURNAL))]
    assert kinds.index(RecordKind.AGENT_LOST) < kinds.index(RecordKind.AGENT_BACK)
    reports = journal_reports(run_dir)
    assert_seqs_contiguous(reports)
    # The agent kept generating through the cut (its dead-man time is longer): every request
    # it sent is in the merge exactly once.
    assert summary["load"]["sent"] == 800 and completed_in(reports) == 800 == seen
    assert all(a["state"] == "finished" for a in summary["agents"])
    for metric in Metric:
        assert sum_reports(reports, "main", metric) == \
            run.ingest.totals.targets["main"].histograms[metric]
