"""gRPC unary targets against a real KServe v2 server in its own process on 127.0.0.1.

Run as a script, this file is that server: a grpc.aio GRPCInferenceService whose ModelInfer
echoes its inputs as outputs (with TLS if given a ``loadgate certs`` directory).  The model
name steers it: "missing" is NOT_FOUND, "slow" answers after 0.5 s, anything else at once.
"""
import asyncio
import json
import subprocess
import sys

import grpc
import pytest
from google.protobuf import json_format

from loadgate.agent.inference.grpc_target import (
    KSERVE_INFER, GrpcConfig, GrpcOutcome, load_payload, request_class, run_grpc, split_method,
)
from loadgate.controller.certs import CertFiles, init_certs
from loadgate.native.errors import ConfigError, EngineError
from loadgate.native.hlog import read_hlog
from loadgate.native.schedule import ClosedLoop, ConstantRate
from loadgate.proto.loadgate.v1 import kserve_v2_pb2 as kserve
from loadgate.proto.loadgate.v1 import kserve_v2_pb2_grpc as kserve_grpc


class EchoInference(kserve_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):
        return kserve.ServerLiveResponse(live=True)

    async def ModelInfer(self, request, context):
        if request.model_name == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        if request.model_name == "slow":
            await asyncio.sleep(0.5)
        response = kserve.ModelInferResponse(model_name=request.model_name, id=request.id)
        for tensor in request.inputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape,
                                 contents=tensor.contents)
        response.raw_output_contents.extend(request.raw_input_contents)
        return response


async def _serve(cert_dir=None):
    server = grpc.aio.server()
    kserve_grpc.add_GRPCInferenceServiceServicer_to_server(EchoInference(), server)
    if cert_dir:
        files = CertFiles(cert_dir)
        with open(files.agent_key, "rb") as key, open(files.agent_cert, "rb") as cert:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    # Stops when the test closes our stdin (or dies), so no server outlives its test.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


def _start_server(*args):
    proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    assert port.isdigit(), "the KServe test server did not start"
    return proc, f"127.0.0.1:{port}"


def _stop_server(proc):
    proc.stdin.close()
    proc.wait(10)


@pytest.fixture(scope="module")
def server():
    proc, address = _start_server()
    yield address
    _stop_server(proc)


def _request(model="echo"):
    request = kserve.ModelInferRequest(model_name=model, id="r1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    request.raw_input_contents.append(b"\x00" * 16)
    return request


def _run(address, payload, rate=50, duration=0.4, **options):
    return run_grpc(GrpcConfig(address, KSERVE_INFER, payload, ConstantRate(rate, duration),
                               **options))


def test_model_infer_open_loop(server):
    payload = _request().SerializeToString()
    m = _run(server, payload, channels=2)
    assert m.outcomes == {GrpcOutcome.OK: 20}
    for name in ("latency_ms", "service_time_ms", "schedule_lag_ms"):
        assert m.histograms[name].total_count == 20
    echoed = kserve.ModelInferResponse(model_name="echo", id="r1")
    echoed.outputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
        [1.0, 2.0, 3.0, 4.0])
    echoed.raw_output_contents.append(b"\x00" * 16)
    assert m.figures["response_bytes"] == 20 * echoed.ByteSize()


def test_outcomes_are_grpc_status_codes(server):
    m = _run(server, _request("missing").SerializeToString(), duration=0.1)
    assert m.outcomes == {GrpcOutcome.NOT_FOUND: 5}
    m = _run(server, _request("slow").SerializeToString(), duration=0.1, timeout_s=0.1)
    assert m.outcomes == {GrpcOutcome.DEADLINE_EXCEEDED: 5}
    m = run_grpc(GrpcConfig(server, "/inference.GRPCInferenceService/RepositoryIndex", b"",
                            ConstantRate(50, 0.1)))
    assert m.outcomes == {GrpcOutcome.UNIMPLEMENTED: 5}


def test_calls_beyond_the_in_flight_cap_wait_and_are_given_up(server):
    # One call at a time on a 0.5 s model with a 0.3 s deadline: the first call runs out its
    # deadline; the others wait for the slot longer than the timeout and are never sent.
    m = _run(server, _request("slow").SerializeToString(), rate=20, duration=0.2,
             timeout_s=0.3, max_in_flight=1)
    assert m.outcomes[GrpcOutcome.DEADLINE_EXCEEDED] >= 1
    assert m.outcomes[GrpcOutcome.NOT_SENT] >= 1
    assert sum(m.outcomes.values()) == 4


def test_closed_loop_calls_again_when_the_last_call_ended(server):
    # Two loops on a 0.5 s model for 0.9 s: each issues a call at 0 and when it returns at
    # about 0.5 s; that one returns after 0.9 s, so the loop stops.
    m = run_grpc(GrpcConfig(server, KSERVE_INFER, _request("slow").SerializeToString(),
                            ClosedLoop(2, 0.9)))
    assert m.outcomes == {GrpcOutcome.OK: 4}


def test_tls_with_a_private_ca(tmp_path):
    files = init_certs(str(tmp_path / "certs"))
    proc, address = _start_server(files.directory)
    try:
        m = _run(address, _request().SerializeToString(), duration=0.1, tls=True,
                 ca_file=files.ca)
        assert m.outcomes == {GrpcOutcome.OK: 5}
    finally:
        _stop_server(proc)


def test_unreachable_address_is_an_engine_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EngineError):
        _run(f"127.0.0.1:{port}", b"", duration=0.1, timeout_s=0.5)


def test_payload_files(tmp_path):
    request = _request()
    binary = tmp_path / "infer.bin"
    binary.write_bytes(request.SerializeToString())
    assert load_payload(str(binary), KSERVE_INFER) == request.SerializeToString()
    as_json = tmp_path / "infer.json"
    as_json.write_text(json_format.MessageToJson(request))
    assert kserve.ModelInferRequest.FromString(load_payload(str(as_json), KSERVE_INFER)) == request
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ConfigError):
        load_payload(str(junk), KSERVE_INFER)
    with pytest.raises(ConfigError):
        load_payload(str(as_json), "/unknown.Service/Method")
    assert load_payload(str(junk), "/unknown.Service/Method") == b"\xff\xff\xff"
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"model_name": 5, "nope": true}')
    with pytest.raises(ConfigError):
        load_payload(str(bad_json), KSERVE_INFER)
    with pytest.raises(ConfigError):
        load_payload(str(tmp_path / "absent.bin"), KSERVE_INFER)
    with pytest.raises(ConfigError):
        load_payload(str(binary), KSERVE_INFER, "yaml")
    assert request_class(KSERVE_INFER) is not None
    assert request_class("/inference.GRPCInferenceService/NoSuchMethod") is None
    for bad in ("ModelInfer", "/a/b/c", "//x"):
        with pytest.raises(ConfigError):
            split_method(bad)


def test_cli_with_a_json_payload(server, tmp_path):
    payload = tmp_path / "infer.json"
    payload.write_text(json_format.MessageToJson(_request()))
    out = tmp_path / "grpc.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadgate.controller.cli", "infer", "grpc", server,
         "--payload", str(payload), "--rate", "40", "--duration", "0.5",
         "--metadata", "x-test:1", "--gate", "error_rate<=0", "--json", str(out),
         "--hlog", str(tmp_path / "grpc.hlog"), "--interval", "0.2s"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["kind"] == "grpc" and result["verdict"] == "PASS"
    assert result["requests"]["outcomes"]["ok"] == 20
    assert result["metrics"]["latency_ms"]["count"] == 20
    logged = [hist for tag, _, _, hist in read_hlog(str(tmp_path / "grpc.hlog"))
              if tag == "latency_ms"]
    assert sum(hist.total_count for hist in logged) == 20


if __name__ == "__main__":
    asyncio.run(_serve(*sys.argv[1:]))
