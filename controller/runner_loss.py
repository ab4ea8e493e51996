"""What a DistributedRun does when an agent stops answering, comes back, or keeps sending
reports that are rejected; and the rate adjustments that follow.

Every interval received before a loss stays merged.  The plan's policy then decides:
``abort`` stops every agent (the summary says aborted), ``continue`` lets the others finish
(the lost shard's unsent arrivals are the shortfall), ``redistribute`` has the others take
over its rate for the rest of the run (an Adjust to N/M times the user's rate scale).
"""
import asyncio
import time

from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.run_journal import RecordKind
from loadgate.controller.runner_session import AgentState, RunStatus
from loadgate.native.errors import InfrastructureError

# A report that fails validation this many times in a row (after fresh resends) marks its
# agent faulty rather than looping forever on a broken stream.
MAX_REJECTIONS = 3


class AgentLossMixin:
    """Mixed into DistributedRun; uses its sessions, journal, merger and status."""

    async def _agent_lost(self, s, reason):
        s.state = AgentState.LOST
        s.lost_at_ns = time.time_ns()
        s.lost_reason = reason
        s.times_lost += 1
        self.run_dir.journal.append(RecordKind.AGENT_LOST, agent_id=s.agent_id, reason=reason,
                                    last_seq=s.stream.last_seq,
                                    policy=self.definition.agent_loss.value)
        self._emit(self.ingest.merger.agent_gone(s.agent_id))
        await self._apply_loss_policy(s)
        self._check_end()

    async def _agent_faulty(self, s, rejection):
        await self._agent_lost(s, f"{MAX_REJECTIONS} reports rejected in a row, last: "
                                  f"{rejection.reason.value}: {rejection.message}")
        s.state = AgentState.FAULTY
        await self._quietly(s.client.stop(self.run_id, "its reports are being rejected"))

    async def _agent_back(self, s):
        s.state = AgentState.RUNNING
        self.run_dir.journal.append(RecordKind.AGENT_BACK, agent_id=s.agent_id,
                                    last_seq=s.stream.last_seq)
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
        self.run_dir.journal.append(RecordKind.ADJUSTED, rate_scale=scale,
                                    user_rate_scale=self.user_rate_scale,
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
        self.run_dir.journal.append(RecordKind.STOPPING, reason=reason, status=self.status.value,
                                    agents=[s.agent_id for s in live])
        await asyncio.gather(*(self._quietly(s.client.stop(self.run_id, reason)) for s in live))

    @staticmethod
    async def _quietly(call):
        try:
            return await call
        except InfrastructureError:
            return None
