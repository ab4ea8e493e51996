"""Each agent's two tasks in a DistributedRun (heartbeat, report stream), and what the run
does when an agent stops answering, comes back, or keeps sending reports that are rejected;
and the rate adjustments that follow.

Every interval received before a loss stays merged.  The plan's policy then decides:
``abort`` stops every agent (the summary says aborted), ``continue`` lets the others finish
(the lost shard's unsent arrivals are the shortfall), ``redistribute`` has the others take
over its rate for the rest of the run (an Adjust to N/M times the user's rate scale).
"""
import asyncio
import time

import grpc

from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.run_journal import RecordKind
from loadgate.controller.runner_reports import Rejection
from loadgate.controller.runner_session import AgentState, RunStatus
from loadgate.native.errors import InfrastructureError

# A report that fails validation this many times in a row (after fresh resends) marks its
# agent faulty rather than looping forever on a broken stream.
MAX_REJECTIONS = 3


class AgentLossMixin:
    """Mixed into DistributedRun; uses its sessions, journal, merger and status."""

    async def _heartbeat(self, s):
        while not self._done.is_set() and s.state is not AgentState.FINISHED:
            began = time.monotonic()
            try:
                # The acknowledgement lets the agent drop what a resume will never ask for
                # again (a resumed controller streams from its journal's last seq).
                reply, sample = await s.client.ping(
                    timeout_s=self.heartbeat_s * 0.8, run_id=self.run_id,
                    journaled_seq=self.ingest.journaled_seq.get(s.agent_id, 0))
            except grpc.aio.AioRpcError as exc:
                s.last_error = f"Ping: {exc.code().name}: {exc.details()}"
            else:
                s.last_answer = time.monotonic()
                s.generating = reply.generating
                s.last_sample = sample
                if s.state is AgentState.LOST:
                    await self._agent_back(s)
            if (s.state is AgentState.RUNNING
                    and time.monotonic() - s.last_answer > self.lost_after_s):
                await self._agent_lost(s, f"no answer for {self.lost_after_s:g} s "
                                          f"({s.last_error or 'no error'})")
            await asyncio.sleep(max(0.0, self.heartbeat_s - (time.monotonic() - began)))

    async def _stream(self, s):
        while not self._done.is_set() and not s.stream.finished and s.state is not AgentState.FAULTY:
            call = s.client.stream_reports(self.run_id, s.stream.last_seq)
            pause = self.heartbeat_s
            try:
                async for report in call:
                    result = self.ingest.accept(s.stream, report)
                    self._wake_ingest.set()
                    if isinstance(result, Rejection):
                        await self._rejected(s, result)
                        call.cancel()
                        pause = 0.05  # ask again right away, from the last good seq
                        break
                    s.consecutive_rejections = 0
                    if s.state is AgentState.LOST:
                        await self._agent_back(s)  # its stream came back before a Ping did
                    if result.final:
                        break
            except grpc.aio.AioRpcError as exc:
                s.last_error = f"StreamReports: {exc.code().name}: {exc.details()}"
                s.stream_failures += 1
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE):
                    # The agent no longer holds the run as journaled (it restarted, or the
                    # reports were acknowledged by another controller and dropped): what it
                    # had is gone, asking again will not bring it back.
                    await self._agent_faulty(s, s.last_error)
            await asyncio.sleep(pause)

    async def _rejected(self, s, rejection):
        s.consecutive_rejections += 1
        s.last_error = f"report rejected: {rejection.reason.value}: {rejection.message}"
        if s.consecutive_rejections >= MAX_REJECTIONS:
            await self._agent_faulty(s, f"{MAX_REJECTIONS} reports rejected in a row, last: "
                                        f"{rejection.reason.value}: {rejection.message}")

    async def _agent_lost(self, s, reason, state=AgentState.LOST):
        s.state = state
        s.lost_at_ns = time.time_ns()
        s.lost_reason = reason
        s.times_lost += 1
        self._journal(RecordKind.AGENT_LOST, agent_id=s.agent_id, reason=reason,
                      last_seq=s.stream.last_seq, policy=self.definition.agent_loss.value)
        self._emit(self.ingest.merger.agent_gone(s.agent_id))
        await self._apply_loss_policy(s)
        self._check_end()

    async def _agent_faulty(self, s, reason):
        """An agent that answers but whose reports cannot be used: lost for good."""
        await self._agent_lost(s, reason, AgentState.FAULTY)
        await self._quietly(s.client.stop(self.run_id, reason))

    async def _agent_back(self, s):
        s.state = AgentState.RUNNING
        s.last_answer = time.monotonic()
        self._journal(RecordKind.AGENT_BACK, agent_id=s.agent_id, last_seq=s.stream.last_seq)
        self.ingest.merger.agent_back(s.agent_id)
        if self.definition.agent_loss is AgentLossPolicy.REDISTRIBUTE and not self._stopping:
            await self._push_adjustment()

    async def _apply_loss_policy(self, s):
        policy = self.definition.agent_loss
        if self._stopping:
            return
        if policy is AgentLossPolicy.ABORT:
            self.status = RunStatus.ABORTED
            self.stop_reason = f"agent {s.agent_id} lost ({s.lost_reason}); policy abort"
            await self._stop_agents(self.stop_reason)
        elif policy is AgentLossPolicy.REDISTRIBUTE:
            await self._push_adjustment()

    def agent_rate_scale(self):
        """The factor each live agent runs its shard at: the user's scale times the share
        of the lost agents' rate it takes over (redistribute)."""
        live = [s for s in self.sessions if s.state is AgentState.RUNNING]
        if self.definition.agent_loss is not AgentLossPolicy.REDISTRIBUTE or not live:
            return self.user_rate_scale
        return self.user_rate_scale * len(self.sessions) / len(live)

    async def _push_adjustment(self, weights=None):
        scale = self.agent_rate_scale()
        live = [s for s in self.sessions if s.state is AgentState.RUNNING]
        self._journal(RecordKind.ADJUSTED, rate_scale=scale, user_rate_scale=self.user_rate_scale,
                      weights=weights or {}, agents=[s.agent_id for s in live])
        results = await asyncio.gather(*(s.client.adjust(self.run_id, scale, weights)
                                         for s in live), return_exceptions=True)
        for s, result in zip(live, results):
            if isinstance(result, Exception):
                s.last_error = str(result)
            else:
                s.rate_scale = scale

    async def _stop_agents(self, reason):
        self._stopping = True
        live = [s for s in self.sessions if s.state in (AgentState.RUNNING, AgentState.PREPARED)]
        self._journal(RecordKind.STOPPING, reason=reason, status=self.status.value,
                      agents=[s.agent_id for s in live])
        await asyncio.gather(*(self._quietly(s.client.stop(self.run_id, reason)) for s in live))

    @staticmethod
    async def _quietly(call):
        try:
            return await call
        except InfrastructureError:
            return None
