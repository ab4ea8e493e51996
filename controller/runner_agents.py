"""The controller's side of one agent: gRPC calls, the clock probe and the start agreement.

Heartbeats (Ping) travel on a channel of their own, so a long report stream or a busy
connection never delays them and a saturated agent is not declared dead for it.
"""
import time
from dataclasses import dataclass
from typing import NamedTuple

import grpc

from loadgate.native.errors import InfrastructureError
from loadgate.proto.loadgate.v1 import agent_pb2, agent_pb2_grpc

# A private subchannel pool keeps the heartbeat channel off the report stream's connection.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class _Channels(NamedTuple):
    channel: object  # calls and the report stream
    beat_channel: object  # heartbeats only
    stub: object
    beat: object
    stream_raw: object


@dataclass(frozen=True)
class ClockSample:
    """One Ping: the agent's clock minus the controller's, and the round trip it was read in."""

    offset_ns: int
    rtt_ns: int

    def to_dict(self):
        return {"offset_ns": self.offset_ns, "rtt_ns": self.rtt_ns}


def clock_sample(sent_ns, agent_ns, received_ns):
    """The offset assuming the agent read its clock half-way through the round trip; the
    error is at most rtt/2, which is why the sample with the smallest rtt is kept."""
    return ClockSample(agent_ns - (sent_ns + received_ns) // 2, received_ns - sent_ns)


def best_sample(samples):
    return min(samples, key=lambda s: s.rtt_ns)


class AgentClient:
    """One agent reached at ``address`` (host:port)."""

    def __init__(self, address, controller_id, credentials=None, metadata=()):
        self.address = address
        self.controller_id = controller_id
        self.metadata = tuple(metadata)
        self.credentials = credentials
        self._channels = None  # made on first use: grpc.aio binds a channel to the running loop
        self.known_id = None  # the id a resumed run recorded, until Describe answers
        self.node = None  # NodeInfo once described
        self.clock = None  # ClockSample once measured

    def _open(self, options):
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        return grpc.aio.secure_channel(self.address, self.credentials, options=options)

    @property
    def _calls(self):
        if self._channels is None:
            channel = self._open(_CHANNEL_OPTIONS)
            beat_channel = self._open(_CHANNEL_OPTIONS + _OWN_CONNECTION)
            # Reports arrive as bytes: the controller journals exactly what the agent sent and
            # parses it once, itself.
            stream_raw = channel.unary_stream(
                "/loadgate.v1.Agent/StreamReports",
                request_serializer=agent_pb2.StreamReportsRequest.SerializeToString)
            self._channels = _Channels(channel, beat_channel, agent_pb2_grpc.AgentStub(channel),
                                       agent_pb2_grpc.AgentStub(beat_channel), stream_raw)
        return self._channels

    @property
    def agent_id(self):
        if self.node:
            return self.node.agent_id
        return self.known_id or self.address

    async def describe(self, timeout_s=5.0):
        try:
            self.node = await self._calls.stub.Describe(agent_pb2.DescribeRequest(), timeout=timeout_s,
                                                  metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise InfrastructureError(
                f"agent {self.address} did not answer Describe: {_status(exc)}") from None
        return self.node

    async def ping(self, timeout_s, run_id="", journaled_seq=0):
        """One heartbeat, acknowledging run_id's reports up to ``journaled_seq`` as
        journaled; returns (PingReply, ClockSample)."""
        sent = time.time_ns()
        reply = await self._calls.beat.Ping(
            agent_pb2.PingRequest(controller_unix_ns=sent, controller_id=self.controller_id,
                                  run_id=run_id, journaled_seq=journaled_seq),
            timeout=timeout_s, metadata=self.metadata)
        return reply, clock_sample(sent, reply.agent_unix_ns, time.time_ns())

    async def measure_clock(self, samples=7, timeout_s=2.0):
        """The min-RTT sample of several Pings (kept as ``self.clock``)."""
        taken = []
        for _ in range(samples):
            try:
                _, sample = await self.ping(timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise InfrastructureError(
                    f"agent {self.address} did not answer Ping: {_status(exc)}") from None
            taken.append(sample)
        self.clock = best_sample(taken)
        return self.clock

    async def prepare(self, run_id, spec, timeout_s=30.0):
        return await self._call("Prepare", agent_pb2.PrepareRequest(run_id=run_id,
                                                                             spec=spec), timeout_s)

    async def start(self, run_id, start_unix_ns, timeout_s=5.0):
        return await self._call("Start", agent_pb2.StartRequest(
            run_id=run_id, start_unix_ns=start_unix_ns), timeout_s)

    async def adjust(self, run_id, rate_scale=0.0, weights=None, timeout_s=5.0):
        return await self._call("Adjust", agent_pb2.AdjustRequest(
            run_id=run_id, rate_scale=rate_scale, weights=weights or {}), timeout_s)

    async def stop(self, run_id, reason, timeout_s=5.0):
        return await self._call("Stop", agent_pb2.StopRequest(run_id=run_id,
                                                                       reason=reason), timeout_s)

    def stream_reports(self, run_id, after_seq):
        """The StreamReports call: an async iterator of serialized IntervalReports (bytes);
        cancel() ends it."""
        return self._calls.stream_raw(
            agent_pb2.StreamReportsRequest(run_id=run_id, after_seq=after_seq),
            metadata=self.metadata)

    async def close(self):
        if self._channels is not None:
            await self._channels.channel.close()
            await self._channels.beat_channel.close()
            self._channels = None

    async def _call(self, name, request, timeout_s):
        try:
            return await getattr(self._calls.stub, name)(request, timeout=timeout_s,
                                                   metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise AgentCallError(self.address, name, exc.code(), exc.details()) from None


class AgentCallError(InfrastructureError):
    """An agent refused or failed a call; ``code`` is the gRPC status code."""

    def __init__(self, address, call, code, details):
        super().__init__(f"agent {address}: {call} failed: {code.name}: {details}")
        self.address = address
        self.call = call
        self.code = code
        self.details = details


def _status(exc):
    return f"{exc.code().name}: {exc.details()}"
