"""``loadgate certs init``: real certificates, a real gRPC server over TLS on 127.0.0.1."""
import os
import stat
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agent_helpers import start_agent
from loadgate.controller import certs
from loadgate.controller.cli import main as cli_main
from loadgate.proto.loadgate.v1 import agent_pb2

SERVICE_NAME = "loadgate-agents.loadgate.svc.cluster.local"


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("certs") / "tls")
    certs.init_certs(directory, hosts=[SERVICE_NAME, "10.1.2.3"], days=30)
    return directory


@pytest.fixture(scope="module")
def foreign_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("foreign"))
    certs.init_certs(directory)
    return directory


@pytest.fixture
def tls_health_server(cert_dir):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", certs.grpc_server_credentials(cert_dir))
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    yield f"127.0.0.1:{port}"
    server.stop(None)


def check(address, credentials, options=()):
    with grpc.secure_channel(address, credentials, options=list(options)) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5).status


def load(path):
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read())


def test_files_keys_private_and_chain_valid(cert_dir):
    files = certs.CertFiles(cert_dir)
    for path in files.all():
        assert os.path.getsize(path) > 0
    for path in (files.ca_key, files.agent_key, files.controller_key, files.token):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(cert_dir).st_mode) == 0o700
    ca = load(files.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for path in (files.agent_cert, files.controller_cert):
        leaf = load(path)
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {SERVICE_NAME, "localhost"} <= set(sans.get_values_for_type(x509.DNSName))
        assert {"127.0.0.1", "::1", "10.1.2.3"} <= {
            str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
        assert days == 30


def test_mutual_tls_admits_the_controller(cert_dir, tls_health_server):
    credentials = certs.grpc_channel_credentials(cert_dir)
    assert check(tls_health_server, credentials) == health_pb2.HealthCheckResponse.SERVING


def test_client_without_a_certificate_is_refused(cert_dir, tls_health_server):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(certs.CertFiles(cert_dir).ca).read_bytes())
    with pytest.raises(grpc.RpcError) as refused:
        check(tls_health_server, credentials)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_with_a_certificate_from_another_ca_is_refused(cert_dir, foreign_dir,
                                                              tls_health_server):
    ours, theirs = certs.CertFiles(cert_dir), certs.CertFiles(foreign_dir)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ours.ca).read_bytes(),
        private_key=Path(theirs.controller_key).read_bytes(),
        certificate_chain=Path(theirs.controller_cert).read_bytes())
    with pytest.raises(grpc.RpcError) as refused:
        check(tls_health_server, credentials)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_controller_refuses_a_server_from_another_ca(foreign_dir, tls_health_server):
    with pytest.raises(grpc.RpcError) as refused:
        check(tls_health_server, certs.grpc_channel_credentials(foreign_dir))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_dialled_by_ip_verified_by_service_name(cert_dir, tls_health_server):
    credentials = certs.grpc_channel_credentials(cert_dir)
    assert check(tls_health_server, credentials, certs.channel_options(SERVICE_NAME)) == \
        health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as refused:
        check(tls_health_server, credentials, certs.channel_options("impostor.example"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cli_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    directory = str(tmp_path / "tls")
    assert cli_main(["certs", "init", directory, "--hosts", "agents.example", "--days", "7"]) == 0
    first = Path(certs.CertFiles(directory).ca).read_bytes()
    assert cli_main(["certs", "init", directory]) == 3
    assert "--force" in capsys.readouterr().err
    assert Path(certs.CertFiles(directory).ca).read_bytes() == first
    assert cli_main(["certs", "init", directory, "--force"]) == 0
    assert Path(certs.CertFiles(directory).ca).read_bytes() != first


@pytest.mark.parametrize("days", [0, 100_000])
def test_bad_validity_is_a_config_error(tmp_path, days):
    with pytest.raises(certs.ConfigError):
        certs.init_certs(str(tmp_path), days=days)


def test_real_agent_with_generated_certificates_and_token(cert_dir, foreign_dir):
    files = certs.CertFiles(cert_dir)
    args = ["--tls-cert", files.agent_cert, "--tls-key", files.agent_key, "--tls-ca", files.ca,
            "--token-file", files.token]
    with start_agent(args) as agent:
        mtls = certs.grpc_channel_credentials(cert_dir)
        with_token = grpc.composite_channel_credentials(
            mtls, certs.token_call_credentials(files.token))
        node = agent.stub(with_token).Describe(agent_pb2.DescribeRequest(), timeout=10)
        assert node.agent_id
        node = agent.stub(mtls).Describe(agent_pb2.DescribeRequest(), timeout=10,
                                         metadata=certs.token_metadata(files.token))
        assert node.agent_id
        with pytest.raises(grpc.RpcError) as refused:
            agent.stub(mtls).Describe(agent_pb2.DescribeRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            agent.stub(certs.grpc_channel_credentials(foreign_dir)).Describe(
                agent_pb2.DescribeRequest(), timeout=10,
                metadata=certs.token_metadata(files.token))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
