"""Open-loop load on a unary gRPC method (KServe v2 / Triton ModelInfer, or any other).

The request is a serialized protobuf read once from a file (binary, or JSON converted through
the method's descriptor) and sent as raw bytes, so no message is built or parsed on the load
path.  Each arrival starts a call at its intended instant on grpc.aio (or, for a closed-loop
schedule, each of ``concurrency`` loops calls again when its last call ended); every call
ends with a gRPC status, which is its outcome.  A call that cannot start because
``max_in_flight`` calls are outstanding waits, and the wait is schedule lag, part of its
latency.
"""
import asyncio
import enum
import importlib
import time
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError

from loadgate.agent.inference.interval_log import roll_periodically
from loadgate.agent.inference.metrics import Measurement
from loadgate.agent.inference.pacing import LEAD_NS, SPIN_NS, instants, wait_until
from loadgate.native.errors import ConfigError, EngineError

METRICS = ("latency_ms", "service_time_ms", "schedule_lag_ms")
FIGURES = ("response_bytes",)
KSERVE_INFER = "/inference.GRPCInferenceService/ModelInfer"


class GrpcOutcome(enum.Enum):
    """A call's gRPC status code (the numbers are the wire's), or NOT_SENT."""
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16
    NOT_SENT = -1        # no call slot came free within the timeout

    @property
    def is_success(self):
        return self is GrpcOutcome.OK

    @classmethod
    def of(cls, code):
        return cls[code.name]


@dataclass(frozen=True)
class GrpcConfig:
    address: str                 # host:port
    method: str                  # /package.Service/Method
    payload: bytes               # the serialized request
    schedule: object
    timeout_s: float = 10.0      # per call deadline
    max_in_flight: int = 1024
    channels: int = 1            # HTTP/2 connections, used in turn
    metadata: tuple = ()         # (key, value) pairs sent with every call
    tls: bool = False
    ca_file: str = None          # root certificates for TLS (default: gRPC's bundled roots)
    spin_ns: int = SPIN_NS       # see pacing.wait_until: CPU spent for sub-ms send times

    def __post_init__(self):
        split_method(self.method)
        if not self.timeout_s > 0 or self.max_in_flight < 1 or self.channels < 1:
            raise ConfigError("timeout_s, max_in_flight and channels must be positive")


def split_method(method):
    """``/pkg.Service/Method`` -> ("pkg.Service", "Method")."""
    parts = method.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        raise ConfigError(f"not a gRPC method path: {method!r} (expected /package.Service/Method)")
    return parts[1], parts[2]


def request_class(method, modules=()):
    """The request message class of ``method``, found in the descriptors that the KServe
    stubs and ``modules`` (generated ``_pb2`` modules, imported here) register; None if the
    method is unknown."""
    importlib.import_module("loadgate.proto.loadgate.v1.kserve_v2_pb2")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import proto module {name!r}: {exc}") from None
    service, name = split_method(method)
    try:
        found = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
    except KeyError:
        return None
    if found is None:
        return None
    return message_factory.GetMessageClass(found.input_type)


def load_payload(path, method, payload_format="auto", modules=()):
    """The request bytes in ``path``: protobuf binary as is, or JSON (``.json`` or
    ``payload_format="json"``) converted with the method's request type.  Binary payloads of
    a known method are checked to parse."""
    if payload_format not in ("auto", "binary", "json"):
        raise ConfigError(f"payload format must be auto, binary or json, got {payload_format!r}")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read payload {path!r}: {exc.strerror}") from None
    as_json = payload_format == "json" or (payload_format == "auto" and path.endswith(".json"))
    cls = request_class(method, modules)
    if as_json:
        if cls is None:
            raise ConfigError(f"a JSON payload needs the request type of {method}: name the "
                              "generated _pb2 module that defines it")
        try:
            return json_format.Parse(data.decode("utf-8"), cls()).SerializeToString()
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a {cls.DESCRIPTOR.full_name} in JSON: {exc}") from None
    if cls is not None:
        try:
            cls.FromString(data)
        except DecodeError:
            raise ConfigError(f"{path}: not a binary {cls.DESCRIPTOR.full_name}") from None
    return data


class GrpcClient:
    """Runs one schedule against one method; ``run`` returns the Measurement."""

    def __init__(self, config, log=None):
        self.config = config
        self.measurement = Measurement("grpc", f"{config.address}{config.method}",
                                       config.schedule, METRICS, GrpcOutcome, log)
        self.response_bytes = 0
        self.last_completion = None

    def _channel(self):
        # Separate subchannel pools, so --channels N really opens N connections.
        options = [("grpc.use_local_subchannel_pool", 1)]
        if self.config.tls:
            return grpc.aio.secure_channel(self.config.address, self._credentials(),
                                           options=options)
        return grpc.aio.insecure_channel(self.config.address, options=options)

    def _credentials(self):
        roots = None
        if self.config.ca_file:
            try:
                with open(self.config.ca_file, "rb") as handle:
                    roots = handle.read()
            except OSError as exc:
                raise ConfigError(f"cannot read CA file {self.config.ca_file!r}: "
                                  f"{exc.strerror}") from None
        return grpc.ssl_channel_credentials(root_certificates=roots)

    async def run(self):
        config = self.config
        channels = [self._channel() for _ in range(config.channels)]
        try:
            for channel in channels:
                try:
                    await asyncio.wait_for(channel.channel_ready(), config.timeout_s)
                except asyncio.TimeoutError:
                    raise EngineError(f"{config.address} did not accept a gRPC connection "
                                      f"within {config.timeout_s:g} s") from None
            calls = [ch.unary_unary(config.method) for ch in channels]
            await self._drive(calls)
        finally:
            for channel in channels:
                await channel.close()
        m = self.measurement
        m.end(self.last_completion or time.monotonic_ns())
        m.figures["response_bytes"] = self.response_bytes
        return m

    async def _drive(self, calls):
        config = self.config
        slots = asyncio.Semaphore(config.max_in_flight)
        tasks = set()
        start = time.monotonic_ns() + LEAD_NS
        self.measurement.begin(start)
        log = self.measurement.log
        roller = asyncio.get_running_loop().create_task(roll_periodically(log)) if log else None
        try:
            if not config.schedule.is_open_loop:
                await self._closed_loops(calls, slots, start)
                return
            for k, offset in enumerate(instants(config.schedule)):
                intended = start + offset
                await wait_until(intended, config.spin_ns)
                task = asyncio.get_running_loop().create_task(
                    self._call(calls[k % len(calls)], intended, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            if roller is not None:
                roller.cancel()

    async def _closed_loops(self, calls, slots, start):
        # Each loop calls again when its previous call has ended and the think time passed;
        # "intended" is then the moment the call was issued.
        schedule = self.config.schedule
        end = start + int(schedule.duration_s * 1e9)
        await wait_until(start, self.config.spin_ns)

        async def one_loop(k):
            while time.monotonic_ns() < end:
                await self._call(calls[k % len(calls)], time.monotonic_ns(), slots)
                k += schedule.concurrency
                await asyncio.sleep(schedule.think_time_s)

        await asyncio.gather(*(one_loop(k) for k in range(schedule.concurrency)))

    async def _call(self, call, intended, slots):
        config = self.config
        try:
            # asyncio.timeout cancels the acquire itself, which gives a permit granted at the
            # last moment back; wait_for in 3.11 could leak it.
            async with asyncio.timeout(config.timeout_s):
                await slots.acquire()
        except TimeoutError:
            self.measurement.count(GrpcOutcome.NOT_SENT)
            return
        try:
            sent = time.monotonic_ns()
            try:
                response = await call(config.payload, timeout=config.timeout_s,
                                      metadata=config.metadata or None)
                outcome = GrpcOutcome.OK
            except grpc.aio.AioRpcError as exc:
                outcome = GrpcOutcome.of(exc.code())
            done = time.monotonic_ns()
        finally:
            slots.release()
        m = self.measurement
        m.count(outcome)
        if outcome is GrpcOutcome.OK:
            self.response_bytes += len(response)
            self.last_completion = max(self.last_completion or done, done)
            m.record("latency_ms", (done - intended) // 1000)
            m.record("service_time_ms", (done - sent) // 1000)
            m.record("schedule_lag_ms", (sent - intended) // 1000)


def run_grpc(config, log=None):
    """Runs ``config`` on a fresh asyncio event loop, writing intervals to ``log`` (an
    IntervalLog) if given; returns the Measurement."""
    return asyncio.run(GrpcClient(config, log).run())
