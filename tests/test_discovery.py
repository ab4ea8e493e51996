"""Agent discovery against the machine's real resolver (localhost) and real gRPC servers."""
import socket
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from loadgate.controller.discovery import (
    DiscoveryError, discover_agents, resolve_agents, split_host_port)
from loadgate.native.errors import ConfigError


def localhost_addresses(port):
    infos = socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    return {(f"[{i[4][0]}]:{port}" if i[0] == socket.AF_INET6 else f"{i[4][0]}:{port}")
            for i in infos}


def test_dns_name_resolves_to_every_record_of_localhost():
    addresses = resolve_agents("dns:///localhost:50051")
    assert set(addresses) == localhost_addresses(50051)
    assert "127.0.0.1:50051" in addresses
    assert len(addresses) == len(set(addresses))


def test_dns_without_slashes_and_host_port_lists_keep_order_and_deduplicate():
    addresses = resolve_agents(["10.0.0.9:7000", "dns:localhost:7001", "[::1]:7002",
                                "10.0.0.9:7000"])
    assert addresses[0] == "10.0.0.9:7000"
    assert addresses[-1] == "[::1]:7002"
    assert set(addresses[1:-1]) == localhost_addresses(7001)
    assert addresses.count("10.0.0.9:7000") == 1


def test_unresolvable_name_is_an_infrastructure_error():
    with pytest.raises(DiscoveryError, match="does not resolve"):
        resolve_agents("dns:///no-such-agent.invalid:50051")


@pytest.mark.parametrize("entry", [
    "dns://8.8.8.8/agents:50051", "dns:///agents", "agents", "agents:0", "agents:70000",
    "[::1]", "[not-v6]:80", "a:b:80", "dns:///:80",
])
def test_malformed_entries_are_config_errors(entry):
    with pytest.raises(ConfigError):
        resolve_agents(entry)


def test_split_host_port():
    assert split_host_port("[::1]:9") == ("::1", 9)
    assert split_host_port("agent-0.agents.loadgate.svc:50051") == \
        ("agent-0.agents.loadgate.svc", 50051)


def test_discovered_addresses_reach_real_agents_health_services():
    servers = []
    ports = []
    for _ in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        servers.append(server)
    try:
        entries = [f"dns:///localhost:{port}" for port in ports]
        reached = 0
        for address in resolve_agents(entries):
            if not address.startswith("127.0.0.1:"):
                continue  # the servers listen on IPv4 loopback only
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reached += 1
        assert reached == 2
    finally:
        for server in servers:
            server.stop(None)


def test_endpoints_carry_the_name_a_certificate_must_have():
    endpoints = discover_agents(["dns:///localhost:50051", "agent-3.example:50051"])
    assert {e.server_name for e in endpoints[:-1]} == {"localhost"}
    assert endpoints[-1].address == "agent-3.example:50051"
    assert endpoints[-1].server_name == "agent-3.example"
