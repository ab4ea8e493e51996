"""What an agent refuses: unsafe start, unauthenticated calls, targets outside its allowlist,
rates and connections over its caps.  Real agent subprocesses, real gRPC on loopback."""
import datetime
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_helpers import AGENT_COMMAND, run_spec, start_agent, stream_reports
from loadgate.agent.safety import Allowlist, NotAllowed, is_loopback_listen, parse_allow_entry
from loadgate.agent.server import MAX_CONCURRENT_RPCS
from loadgate.native.errors import ConfigError, InfrastructureError
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import agent_pb2, common_pb2

# Documentation addresses (RFC 5737): never routed, and never contacted by these tests
# because the agent refuses them before anything is sent.
OUTSIDE = "http://192.0.2.10:8080/"


# -- the allowlist itself ---------------------------------------------------------------

def _no_dns(host, port, proto=0):
    raise AssertionError(f"unexpected DNS lookup of {host}")


def test_default_allowlist_is_loopback_only():
    allow = Allowlist()
    allow.check_url("http://127.0.0.1:8080/x", resolve=_no_dns)
    allow.check_url("http://127.3.4.5/", resolve=_no_dns)
    allow.check_url("https://[::1]:8443/", resolve=_no_dns)
    for url in (OUTSIDE, "http://10.0.0.1/", "http://[2001:db8::1]/"):
        with pytest.raises(NotAllowed):
            allow.check_url(url, resolve=_no_dns)


def test_hostnames_must_resolve_entirely_inside_the_allowlist():
    allow = Allowlist()

    def resolve(addresses):
        return lambda host, port, proto=0: [(2, 1, 6, "", (a, port)) for a in addresses]

    allow.check_url("http://localhost:9000/", resolve=resolve(["127.0.0.1", "::1"]))
    with pytest.raises(NotAllowed, match="192.0.2.7"):
        allow.check_url("http://mixed.test/", resolve=resolve(["127.0.0.1", "192.0.2.7"]))
    with pytest.raises(NotAllowed, match="no address"):
        allow.check_url("http://nowhere.test/", resolve=resolve([]))


def _answers(*answers):
    """A resolver whose answer changes with each call, as a rebinding DNS server's does."""
    remaining = list(answers)

    def resolve(host, port, proto=0):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in remaining.pop(0)]
    return resolve


def test_the_check_returns_the_answer_it_admitted_and_a_rebound_answer_is_refused():
    allow = Allowlist(["127.0.0.0/8:8080"])
    resolve = _answers(["127.0.0.9", "127.0.0.1", "127.0.0.9"], ["192.0.2.7"])
    checked = allow.check_url("http://rebind.test:8080/", resolve=resolve)
    # resolver order, without repeats: the first is what the agent pins
    assert checked == (ipaddress.ip_address("127.0.0.9"), ipaddress.ip_address("127.0.0.1"))
    with pytest.raises(NotAllowed, match="192.0.2.7"):
        allow.check_url("http://rebind.test:8080/", resolve=resolve)


def test_what_the_check_admits_by():
    allow = Allowlist(["127.0.0.0/8", "api.internal"])
    # a listed name is trusted by name: nothing resolved, nothing to pin
    assert allow.check_url("http://API.internal/", resolve=_no_dns) is None
    assert allow.check_url("http://127.0.0.5:81/", resolve=_no_dns) == \
        (ipaddress.ip_address("127.0.0.5"),)
    # every address must be allowed even though only the first is pinned
    with pytest.raises(NotAllowed, match="::1"):
        allow.check_url("http://localhost/", resolve=_answers(["::1", "127.0.0.1"]))
    both = Allowlist(["127.0.0.0/8", "::1"])
    assert both.check_url("http://localhost/", resolve=_answers(["::1", "127.0.0.1"]))[0] == \
        ipaddress.ip_address("::1")
    # a link-local address keeps its scope: without it the pinned address could not be reached
    link = Allowlist(["fe80::/10"]).check_url("http://router.test/",
                                              resolve=_answers(["fe80::1%eth0"]))
    assert [str(a) for a in link] == ["fe80::1%eth0"]


def test_entries_with_ports_cidrs_and_names():
    allow = Allowlist(["10.0.0.0/8:443", "api.internal", "[::1]:9000", "127.0.0.1:8080"])
    allow.check_url("https://10.2.3.4/", resolve=_no_dns)
    allow.check_url("http://API.internal:1234/", resolve=_no_dns)
    allow.check_url("http://[::1]:9000/", resolve=_no_dns)
    allow.check_url("http://127.0.0.1:8080/", resolve=_no_dns)
    for url in ("http://10.2.3.4/", "http://127.0.0.1:8081/", "http://[::1]:9001/"):
        with pytest.raises(NotAllowed):
            allow.check_url(url, resolve=_no_dns)


@pytest.mark.parametrize("bad", ["", "10.0.0.0/8:http", "a b", "[::1]x", "host:0", "host:70000"])
def test_malformed_entries_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_allow_entry(bad)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:80", "http:///x",
                                 "http://127.0.0.1:99999/"])
def test_non_http_targets_are_config_errors(url):
    with pytest.raises(ConfigError):
        Allowlist().check_url(url, resolve=_no_dns)


def test_loopback_listen_addresses():
    assert is_loopback_listen("127.0.0.1:0") and is_loopback_listen("[::1]:50051")
    assert is_loopback_listen("localhost:1")
    assert not is_loopback_listen("0.0.0.0:50051") and not is_loopback_listen("[::]:1")
    assert not is_loopback_listen("agent.example:50051")


# -- refusing to start --------------------------------------------------------------------

def _agent_exit(args, timeout=60):
    return subprocess.run(AGENT_COMMAND + args, capture_output=True, text=True, timeout=timeout)


def test_non_loopback_listen_without_credentials_refuses_to_start():
    result = _agent_exit(["--listen", "0.0.0.0:0"])
    assert result.returncode == ConfigError.exit_code
    assert "refusing to listen on 0.0.0.0:0 without credentials" in result.stderr
    assert "listening on" not in result.stdout


def test_insecure_flag_starts_and_says_what_it_means(tmp_path):
    err = open(tmp_path / "stderr", "w+")
    agent = start_agent(["--listen", "0.0.0.0:0", "--insecure"], stderr=err)
    try:
        assert agent.stub().Ping(agent_pb2.PingRequest(), timeout=10) is not None
    finally:
        agent.stop()
    err.seek(0)
    assert "WARNING: --insecure" in err.read()


def test_half_given_tls_is_refused(tmp_path):
    result = _agent_exit(["--tls-cert", str(tmp_path / "c.pem")])
    assert result.returncode == ConfigError.exit_code
    assert "--tls-cert, --tls-key and --tls-ca" in result.stderr


# -- token authentication -------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_agent(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text("s3cret-token-for-tests\n")
    agent = start_agent(["--token-file", token_file, "--dead-man", "60s"])
    yield agent
    agent.stop()


GOOD = (("authorization", "Bearer s3cret-token-for-tests"),)


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),),
                                      (("authorization", "s3cret-token-for-tests"),)])
def test_calls_without_the_token_are_unauthenticated_and_change_nothing(token_agent, metadata):
    stub = token_agent.stub()
    spec = run_spec("http://127.0.0.1:9/", 10, 1.0)
    for call, request in ((stub.Ping, agent_pb2.PingRequest()),
                          (stub.Describe, agent_pb2.DescribeRequest()),
                          (stub.Prepare, agent_pb2.PrepareRequest(run_id="sneaky", spec=spec)),
                          (stub.Stop, agent_pb2.StopRequest(run_id="sneaky"))):
        with pytest.raises(grpc.RpcError) as info:
            call(request, metadata=metadata, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamReports(agent_pb2.StreamReportsRequest(run_id="sneaky"),
                                metadata=metadata, timeout=10))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # nothing was prepared: the run is unknown to an authenticated caller
    assert stub.Ping(agent_pb2.PingRequest(), metadata=GOOD, timeout=10).active_run_id == ""
    with pytest.raises(grpc.RpcError) as info:
        stub.Stop(agent_pb2.StopRequest(run_id="sneaky"), metadata=GOOD, timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_unauthenticated_pings_do_not_keep_a_run_alive(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-tests")
    with start_agent(["--token-file", token_file, "--dead-man", "1s"]) as agent:
        stub = agent.stub()
        spec = run_spec("http://127.0.0.1:9/", 10, 1.0)
        stub.Prepare(agent_pb2.PrepareRequest(run_id="held", spec=spec), metadata=GOOD,
                     timeout=30)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with pytest.raises(grpc.RpcError):
                stub.Ping(agent_pb2.PingRequest(), timeout=5)
            time.sleep(0.1)
        # the dead-man switch fired despite the stream of unauthenticated pings
        assert stub.Ping(agent_pb2.PingRequest(), metadata=GOOD, timeout=10).active_run_id == ""
        final = list(stub.StreamReports(agent_pb2.StreamReportsRequest(run_id="held"),
                                        metadata=GOOD, timeout=10))
    assert [r.run_end for r in final] == [common_pb2.RUN_END_DEAD_MAN]


def test_the_token_admits_calls_and_health_needs_none(token_agent):
    stub = token_agent.stub()
    node = stub.Describe(agent_pb2.DescribeRequest(), metadata=GOOD, timeout=10)
    assert node.agent_id.endswith(f":{token_agent.port}")
    health = health_pb2_grpc.HealthStub(token_agent.channel())
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- mutual TLS -----------------------------------------------------------------------------

def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject, key, issuer, issuer_key, ca=False, ip=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj):
    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return obj.public_bytes(serialization.Encoding.PEM)


def make_pki(directory, name="loadgate-ca"):
    """A CA plus agent (127.0.0.1) and controller certificates; returns PEM bytes by role."""
    ca_key = _key()
    ca = _cert(name, ca_key, name, ca_key, ca=True)
    out = {"ca": _pem(ca)}
    for role, ip in (("agent", "127.0.0.1"), ("controller", None)):
        key = _key()
        out[role + "_key"] = _pem(key)
        out[role + "_cert"] = _pem(_cert(role, key, name, ca_key, ip=ip))
    for label, data in out.items():
        (directory / f"{label}.pem").write_bytes(data)
    return out


@pytest.fixture(scope="module")
def tls_agent(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    pki = make_pki(directory)
    agent = start_agent(["--tls-cert", directory / "agent_cert.pem",
                         "--tls-key", directory / "agent_key.pem",
                         "--tls-ca", directory / "ca.pem", "--dead-man", "60s"])
    yield agent, pki, directory
    agent.stop()


def test_mtls_admits_a_client_certificate_from_the_ca(tls_agent):
    agent, pki, _ = tls_agent
    credentials = grpc.ssl_channel_credentials(pki["ca"], pki["controller_key"],
                                               pki["controller_cert"])
    reply = agent.stub(credentials).Ping(agent_pb2.PingRequest(controller_unix_ns=7), timeout=10)
    assert reply.controller_unix_ns == 7


def test_mtls_refuses_clients_without_a_certificate_or_from_another_ca(tls_agent, tmp_path):
    agent, pki, _ = tls_agent
    other = make_pki(tmp_path, name="someone-else")
    for credentials in (grpc.ssl_channel_credentials(pki["ca"]),
                        grpc.ssl_channel_credentials(pki["ca"], other["controller_key"],
                                                     other["controller_cert"])):
        with pytest.raises(grpc.RpcError) as info:
            agent.stub(credentials).Ping(agent_pb2.PingRequest(), timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError):
        agent.stub().Ping(agent_pb2.PingRequest(), timeout=10)  # plaintext


def test_certificates_from_loadgate_certs_init_work_with_token_on_top(tmp_path):
    from loadgate.controller.certs import CertFiles, grpc_channel_credentials, init_certs

    files = init_certs(str(tmp_path / "certs"))
    assert isinstance(files, CertFiles)
    args = ["--tls-cert", files.agent_cert, "--tls-key", files.agent_key, "--tls-ca", files.ca,
            "--token-file", files.token]
    token = open(files.token).read().strip()
    with start_agent(args) as agent:
        stub = agent.stub(grpc_channel_credentials(files.directory))
        with pytest.raises(grpc.RpcError) as info:
            stub.Ping(agent_pb2.PingRequest(), timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Ping(agent_pb2.PingRequest(controller_unix_ns=3), timeout=10,
                          metadata=(("authorization", f"Bearer {token}"),))
        assert reply.controller_unix_ns == 3


# -- targets and caps ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def capped_agent():
    agent = start_agent(["--max-rate", "1000", "--max-connections", "64", "--workers", "1",
                         "--dead-man", "60s"])
    yield agent
    agent.stop()


def _prepare(agent, run_id, spec):
    return agent.stub().Prepare(agent_pb2.PrepareRequest(run_id=run_id, spec=spec), timeout=30)


def _refusal(agent, run_id, spec):
    with pytest.raises(grpc.RpcError) as info:
        _prepare(agent, run_id, spec)
    return info.value


def test_target_outside_the_allowlist_is_permission_denied(capped_agent):
    error = _refusal(capped_agent, "outside", run_spec(OUTSIDE, 10, 1.0))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "192.0.2.10" in error.details() and "allowlist" in error.details()
    node = capped_agent.stub().Describe(agent_pb2.DescribeRequest(), timeout=10)
    assert list(node.allowlist) == ["127.0.0.0/8", "::1/128"]


def test_one_bad_target_among_good_ones_refuses_the_run(capped_agent):
    targets = [agent_pb2.TargetSpec(name="ok", url="http://127.0.0.1:9/"),
               agent_pb2.TargetSpec(name="bad", url=OUTSIDE)]
    error = _refusal(capped_agent, "mixed", run_spec("", 10, 1.0, targets=targets))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


def test_rate_over_the_cap_is_permission_denied(capped_agent):
    for schedule in (dict(rate=1500), dict(model="ramp", rate=10, end_rate=2000)):
        spec = run_spec("http://127.0.0.1:9/", schedule.pop("rate"), 1.0,
                        model=schedule.pop("model", "constant"))
        spec.schedule.end_rate = schedule.get("end_rate", 0)
        error = _refusal(capped_agent, f"fast-{spec.schedule.model}", spec)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "cap of 1000/s" in error.details()


def test_connections_over_the_cap_are_permission_denied(capped_agent):
    spec = run_spec("http://127.0.0.1:9/", 10, 1.0, connections=8, max_connections=65)
    error = _refusal(capped_agent, "wide", spec)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "cap of 64" in error.details()


def test_within_the_caps_a_shard_is_prepared_and_stopped(capped_agent):
    # 3000/s across 4 agents is 750/s for this one: under its cap of 1000/s
    spec = run_spec("http://127.0.0.1:9/", 3000, 1.0, shard_index=1, shard_count=4,
                    max_connections=32)
    reply = _prepare(capped_agent, "shard", spec)
    assert reply.shard_rate == 750 and reply.shard_requests == 750
    stub = capped_agent.stub()
    assert stub.Ping(agent_pb2.PingRequest(), timeout=10).active_run_id == "shard"
    assert not stub.Ping(agent_pb2.PingRequest(), timeout=10).generating
    stop = stub.Stop(agent_pb2.StopRequest(run_id="shard", reason="test"), timeout=30)
    assert stop.last_seq == 1
    assert stub.Ping(agent_pb2.PingRequest(), timeout=10).active_run_id == ""


@pytest.mark.parametrize("change, code", [
    (lambda s: s.schedule.__setattr__("model", "zigzag"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda s: s.schedule.__setattr__("duration_s", -1), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda s: s.targets[0].__setattr__("url", "gopher://127.0.0.1/"),
     grpc.StatusCode.INVALID_ARGUMENT),
    (lambda s: s.__setattr__("timeout_s", float("nan")), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda s: s.schedule.__setattr__("shard_index", 5), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_malformed_specs_are_invalid_argument(capped_agent, change, code):
    spec = run_spec("http://127.0.0.1:9/", 10, 1.0)
    change(spec)
    assert _refusal(capped_agent, "malformed", spec).code() is code


def test_calls_out_of_order(capped_agent):
    stub = capped_agent.stub()
    for call, request in ((stub.Start, agent_pb2.StartRequest(run_id="nope")),
                          (stub.Adjust, agent_pb2.AdjustRequest(run_id="nope", rate_scale=2))):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        _prepare(capped_agent, "", run_spec("http://127.0.0.1:9/", 10, 1.0))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_messages_are_refused(capped_agent):
    spec = run_spec("http://127.0.0.1:9/", 10, 1.0)
    spec.targets[0].request.body = b"x" * (17 << 20)
    error = _refusal(capped_agent, "huge", spec)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_agent_module_runs_standalone():
    result = subprocess.run([sys.executable, "-m", "loadgate.agent.main", "--help"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ))
    assert result.returncode == 0 and "--dead-man" in result.stdout


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _agent_exit(["--listen", f"127.0.0.1:{port}"])
    assert result.returncode == InfrastructureError.exit_code
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_concurrent_calls_beyond_the_limit_are_refused(capped_agent):
    _prepare(capped_agent, "watched", run_spec("http://127.0.0.1:9/", 10, 1.0))
    # streams of a run not yet started wait for its reports, each holding one call slot;
    # several connections, since each carries at most MAX_CONCURRENT_STREAMS at once
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    stubs = [capped_agent.stub(options=own_connection) for _ in range(4)]
    request = agent_pb2.StreamReportsRequest(run_id="watched")
    streams = [stubs[i % 4].StreamReports(request, timeout=60)
               for i in range(MAX_CONCURRENT_RPCS + 8)]
    deadline = time.monotonic() + 10
    while sum(s.done() for s in streams) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    refused = [s for s in streams if s.done()]
    assert len(refused) == 8
    assert {s.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for stream in streams:
        stream.cancel()
    deadline = time.monotonic() + 10
    while True:
        try:
            capped_agent.stub().Stop(agent_pb2.StopRequest(run_id="watched"), timeout=10)
            break
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "cancelled streams never freed their slots"
            time.sleep(0.1)


def test_allow_flags_replace_the_default():
    with start_agent(["--allow", "127.0.0.1:8123", "--allow", "192.0.2.0/28",
                      "--dead-man", "60s"]) as agent:
        stub = agent.stub()
        node = stub.Describe(agent_pb2.DescribeRequest(), timeout=10)
        assert list(node.allowlist) == ["127.0.0.1:8123", "192.0.2.0/28"]
        for url in ("http://127.0.0.1:8124/", "http://[::1]:8123/", "http://192.0.2.99/"):
            error = _refusal(agent, "denied", run_spec(url, 10, 1.0))
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED, url
        for run_id, url in (("port", "http://127.0.0.1:8123/"), ("cidr", "http://192.0.2.3/")):
            # prepared, never started: nothing is sent anywhere
            assert _prepare(agent, run_id, run_spec(url, 10, 1.0)).shard_requests == 10
            stub.Stop(agent_pb2.StopRequest(run_id=run_id), timeout=30)


def test_an_agent_pins_its_load_to_the_address_its_allowlist_checked(tmp_path):
    resolved = [info[4][0] for info in socket.getaddrinfo("localhost", 80,
                                                          proto=socket.IPPROTO_TCP)]
    if set(resolved) != {"127.0.0.1"}:
        # The rule refuses a name with any address off the allowlist (::1 here); the
        # resolver-injected checks above cover it.
        pytest.skip(f"localhost resolves to {resolved} on this machine, not 127.0.0.1 alone")
    proc, host, port = start_target_process()
    log_path = tmp_path / "agent.log"
    try:
        with open(log_path, "w") as log, \
                start_agent(["--allow", f"127.0.0.0/8:{port}", "--workers", "1",
                             "--dead-man", "60s"], stderr=log) as agent:
            stub = agent.stub()
            spec = run_spec(f"http://localhost:{port}/", 50, 0.4, interval_s=0.2)
            _prepare(agent, "pinned", spec)
            stub.Start(agent_pb2.StartRequest(run_id="pinned"), timeout=30)
            reports = stream_reports(stub, "pinned")
        with urllib.request.urlopen(f"http://{host}:{port}/__target/stats",
                                    timeout=10) as response:
            served = json.loads(response.read())["requests"]
    finally:
        stop_target_process(proc)
    outcomes = {}
    for report in reports:
        for target in report.targets:
            for outcome in target.outcomes:
                outcomes[outcome.outcome] = outcomes.get(outcome.outcome, 0) + outcome.count
    assert outcomes == {common_pb2.OUTCOME_OK_2XX: 20}
    assert served == 21  # the run's requests and the stats request
    assert "run pinned: prepared (20 requests on 1 workers; main -> 127.0.0.1)" in \
        log_path.read_text()


def test_malformed_allow_flag_refuses_to_start():
    result = _agent_exit(["--allow", "10.0.0.0/8:http"])
    assert result.returncode == ConfigError.exit_code and "allowlist entry" in result.stderr
