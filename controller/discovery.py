"""Agent discovery: turn the plan's ``agents`` entries into one address per agent.

An entry is either ``host:port`` (one agent; ``[v6]:port`` for an IPv6 literal), kept as
given, or ``dns:///name:port``, which stands for every agent behind a name: each A and AAAA
record ``socket.getaddrinfo`` returns becomes one agent.  That is how a Kubernetes headless
Service lists a DaemonSet's pods (deploy/k8s/agent-service.yaml).  gRPC's own ``dns:``
resolver would pick *one* of those addresses per channel; the controller needs a channel to
each agent, so it resolves the name itself.

    resolve_agents(entries) -> list[str]
    discover_agents(entries) -> list[AgentEndpoint(address, server_name)]

``server_name`` is the name an agent's TLS certificate must carry for that address: the DNS
name for a ``dns:///`` entry (pod IPs change, the Service name does not: pass it to
``loadgate certs init --hosts`` and dial with ``grpc.ssl_target_name_override``, see
``loadgate.controller.certs.channel_options``), the host itself for ``host:port``.

Addresses come back de-duplicated, in entry order, each name's records sorted (so the
shard an agent gets does not depend on the DNS server's rotation).  A name that does not
resolve is an InfrastructureError (``DiscoveryError``); a malformed entry a ConfigError.
"""
import ipaddress
import socket
from dataclasses import dataclass

from loadgate.native.errors import ConfigError, InfrastructureError

DNS_SCHEME = "dns:"


class DiscoveryError(InfrastructureError):
    """A name that should list agents resolves to none."""


@dataclass(frozen=True)
class AgentEndpoint:
    address: str  # host:port or [v6]:port to dial
    server_name: str  # the name its TLS certificate must carry


def split_host_port(text):
    """(host, port) of ``host:port`` or ``[v6]:port``; ConfigError if it is not one."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"agent address {text!r}: expected [IPv6]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"agent address {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ConfigError(f"agent address {text!r}: expected host:port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"agent address {text!r}: port must be 1..65535")
    return host, int(port_text)


def join_host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dns_name(entry):
    # dns:///name:port, or dns:name:port; an authority (dns://server/...) names a DNS server,
    # which getaddrinfo cannot be pointed at, so it is refused rather than ignored.
    rest = entry[len(DNS_SCHEME):]
    if rest.startswith("//"):
        authority, sep, rest = rest[2:].partition("/")
        if authority:
            raise ConfigError(f"agent address {entry!r}: a DNS server in the address "
                              f"({authority!r}) is not supported; use dns:///name:port")
        if not sep:
            raise ConfigError(f"agent address {entry!r}: expected dns:///name:port")
    return split_host_port(rest)


def resolve_entry(entry):
    """The agent endpoints one entry stands for."""
    entry = entry.strip()
    if not entry.startswith(DNS_SCHEME):
        host, port = split_host_port(entry)
        return [AgentEndpoint(join_host_port(host, port), host)]
    host, port = _dns_name(entry)
    try:
        records = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DiscoveryError(f"{entry}: {host!r} does not resolve: {exc.strerror}") from None
    addresses = sorted({info[4][0] for info in records
                        if info[0] in (socket.AF_INET, socket.AF_INET6)},
                       key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))
    if not addresses:
        raise DiscoveryError(f"{entry}: {host!r} has no A or AAAA records")
    return [AgentEndpoint(join_host_port(address, port), host) for address in addresses]


def discover_agents(entries):
    """Every agent endpoint the entries stand for (a string is one entry), de-duplicated."""
    if isinstance(entries, str):
        entries = [entries]
    seen = {}
    for entry in entries:
        for endpoint in resolve_entry(entry):
            seen.setdefault(endpoint.address, endpoint)
    return list(seen.values())


def resolve_agents(entries):
    """Every agent address the entries stand for, as ``host:port`` strings."""
    return [endpoint.address for endpoint in discover_agents(entries)]
