"""`loadgate controller serve` as a real process: token authentication with open health
probes, reflection, /metrics, a run followed by `loadgate watch`, and a run taken over by the
next controller after SIGTERM (the journal in --runs-dir is the hand-over)."""
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from loadgate.controller import cli
from loadgate.controller.certs import init_certs
from loadgate.controller.service import SERVICE_NAME, ControllerService
from loadgate.controller.service_client import ControllerClient
from loadgate.controller.service_server import start_server
from loadgate.proto.loadgate.v1 import controller_pb2, controller_pb2_grpc
from test_service_support import RUN_TIMEOUT_S, Bench, journal_transitions

TOKEN = "s3cret-token-for-tests"


class ControllerProcess:
    def __init__(self, tmp_path, agent, *extra):
        command = [sys.executable, "-m", "loadgate.controller.cli", "controller", "serve",
                   "--listen", "127.0.0.1:0", "--runs-dir", str(tmp_path / "runs"),
                   "--token-file", str(tmp_path / "token"), "--agents", agent, *extra]
        log_path = tmp_path / f"controller-{len(list(tmp_path.glob('controller-*.log')))}.log"
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.line()
        assert first.startswith("listening on "), first
        self.address = first.split()[-1]
        self.channel = grpc.insecure_channel(self.address)
        self.stub = controller_pb2_grpc.ControllerStub(self.channel)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout=30):
        return self.lines.get(timeout=timeout)

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.mark.slow
def test_serve_authenticates_resumes_after_sigterm_and_feeds_watch(tmp_path, capsys):
    (tmp_path / "token").write_text(TOKEN + "\n")
    bench = Bench()
    first = second = None
    try:
        first = ControllerProcess(tmp_path, bench.agent.address, "--metrics-port", "0")
        metrics_url = first.line().split()[-1]
        health = health_pb2_grpc.HealthStub(first.channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused:
            first.stub.ListRuns(controller_pb2.ListRunsRequest())
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        reflection = reflection_pb2_grpc.ServerReflectionStub(first.channel)
        answer = next(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=AUTH))
        assert SERVICE_NAME in [s.name for s in answer.list_services_response.service]

        info = first.stub.SubmitPlan(controller_pb2.SubmitPlanRequest(
            plan_yaml=bench.plan_text(), plan_name="plan.yaml"), metadata=AUTH)
        for event in first.stub.WatchRun(controller_pb2.WatchRunRequest(run_id=info.run_id),
                                         metadata=AUTH, timeout=RUN_TIMEOUT_S):
            if event.WhichOneof("event") == "interval":
                break
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            exported = response.read().decode()
        assert 'loadgate_stage_state{' in exported
        # The controller goes away mid-measurement: load stops, the journal stays.
        assert first.stop() == 0
        before = journal_transitions(info.run_dir)
        assert not os.path.exists(os.path.join(info.run_dir, "verdict.json"))

        second = ControllerProcess(tmp_path, bench.agent.address)
        assert second.line() == f"resumed {info.run_id}"
        code = cli.main(["watch", second.address, info.run_id, "--token-file",
                         str(tmp_path / "token")])
        out = capsys.readouterr().out
        after = journal_transitions(info.run_dir)
        assert after[:len(before)] == before
        runs = second.stub.ListRuns(controller_pb2.ListRunsRequest(), metadata=AUTH).runs
        assert [(r.run_id, r.finished) for r in runs] == [(info.run_id, True)]
        assert code == 0 and f"verdict {runs[0].verdict}" in out and runs[0].verdict
        assert second.stop() == 0
    finally:
        for process in (first, second):
            if process is not None:
                process.stop()
        bench.close()


def test_serve_refuses_to_listen_beyond_loopback_without_credentials(tmp_path, capsys):
    code = cli.main(["controller", "serve", "--listen", "0.0.0.0:0", "--runs-dir",
                     str(tmp_path)])
    assert code == 3
    assert "--token-file or --tls-dir" in capsys.readouterr().err


def test_the_kubernetes_deployment_arguments_are_the_ones_serve_takes():
    path = os.path.join(os.path.dirname(__file__), "..", "deploy", "k8s",
                        "controller-deployment.yaml")
    with open(path) as handle:
        deployment = next(d for d in yaml.safe_load_all(handle)
                          if d and d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = cli.build_parser(container["args"]).parse_args(container["args"])
    assert args.func.__name__ == "serve_command"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(args.listen.rpartition(":")[2]) == ports["grpc"]
    assert args.metrics_port == ports["metrics"]
    assert args.token_file and args.runs_dir and args.agents.startswith("dns:///")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert args.runs_dir in mounts and os.path.dirname(args.token_file) in mounts


def test_tls_dir_serves_mutual_tls_and_refuses_a_client_without_a_certificate(tmp_path):
    init_certs(str(tmp_path / "certs"))
    server = start_server(ControllerService(tmp_path / "runs"), "127.0.0.1:0",
                          tls_dir=str(tmp_path / "certs"))
    try:
        with ControllerClient(server.address, tls_dir=str(tmp_path / "certs")) as client:
            assert not client.stub.ListRuns(controller_pb2.ListRunsRequest(), timeout=10).runs
        anonymous = grpc.secure_channel(server.address, grpc.ssl_channel_credentials(
            (tmp_path / "certs" / "ca.pem").read_bytes()))
        with pytest.raises(grpc.RpcError) as refused:
            controller_pb2_grpc.ControllerStub(anonymous).ListRuns(
                controller_pb2.ListRunsRequest(), timeout=10)
        anonymous.close()
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
