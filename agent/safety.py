"""What an agent will do, decided on the agent's own command line, never over the wire:
which targets it may aim at, how fast, how many connections, and who may ask.

A request outside these limits is refused with PERMISSION_DENIED and changes nothing;
an unauthenticated call is refused with UNAUTHENTICATED before any handler runs.
"""
import hmac
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass

import grpc

from loadgate.native.errors import ConfigError, LoadgateError

LOOPBACK = ("127.0.0.0/8", "::1/128")
# Health probes (kubelet, load balancers) carry no credentials and reveal nothing.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)
DEFAULT_PORTS = {"http": 80, "https": 443}


class NotAllowed(LoadgateError):
    """A request this agent's own limits forbid (target, rate, connections)."""


@dataclass(frozen=True)
class AllowEntry:
    text: str
    network: object = None  # ipaddress network, or None for a host name
    host: str = ""          # lower-case host name when network is None
    port: int = 0           # 0: any port

    def admits_port(self, port):
        return self.port == 0 or self.port == port


def parse_allow_entry(text):
    """One allowlist entry: HOST, IP, CIDR, or any of them with :PORT ([v6]:PORT for IPv6)."""
    raw = text.strip()
    port = 0
    if raw.startswith("["):
        address, _, rest = raw[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"allowlist entry {text!r}: expected [ADDRESS]:PORT")
            port = _port(text, rest[1:])
        raw = address
    elif raw.count(":") == 1:
        raw, port_text = raw.split(":")
        port = _port(text, port_text)
    if not raw:
        raise ConfigError(f"allowlist entry {text!r} names no host")
    try:
        return AllowEntry(text, network=ipaddress.ip_network(raw, strict=False), port=port)
    except ValueError:
        pass
    if not all(part and (part.replace("-", "").isalnum()) for part in raw.split(".")):
        raise ConfigError(f"allowlist entry {text!r} is not a host, address or CIDR")
    return AllowEntry(text, host=raw.lower(), port=port)


def _port(text, value):
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"allowlist entry {text!r}: bad port {value!r}")
    return int(value)


class Allowlist:
    """The targets an agent may send to.  A URL is allowed when its host name is listed, or
    when every address it resolves to lies in a listed network (with a matching port).

    A URL admitted by network is checked against one DNS answer; the agent pins its load to
    the first of those addresses, so a later answer (DNS rebinding) cannot redirect it.  A
    listed host name is trusted by name and not pinned."""

    def __init__(self, entries=None):
        self.entries = tuple(parse_allow_entry(e) for e in (entries or LOOPBACK))

    def __iter__(self):
        return (entry.text for entry in self.entries)

    def check_url(self, url, resolve=socket.getaddrinfo):
        """The addresses ``url`` was admitted for, in resolver order, or None when its host
        name is listed; raises NotAllowed (or ConfigError for a malformed URL) unless it is
        allowed.  May block on DNS: call it off the event loop."""
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as exc:  # an unclosed IPv6 bracket, for one
            raise ConfigError(f"target URL {url!r} is malformed: {exc}") from None
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ConfigError(f"target URL {url!r} is not an http:// or https:// URL")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ConfigError(f"target URL {url!r} has a bad port") from None
        host = parts.hostname.lower()
        entries = [e for e in self.entries if e.admits_port(port)]
        if any(e.network is None and e.host == host for e in entries):
            return None
        networks = [e.network for e in entries if e.network is not None]
        addresses = self._addresses(host, port, resolve)
        outside = [a for a in addresses if not any(a in n for n in networks)]
        if not addresses or outside:
            shown = ", ".join(str(a) for a in outside) or "no address"
            raise NotAllowed(f"target {url} ({shown}) is outside this agent's allowlist "
                             f"[{', '.join(self)}]")
        return addresses

    @staticmethod
    def _addresses(host, port, resolve):
        try:
            return (ipaddress.ip_address(host),)
        except ValueError:
            pass
        try:
            infos = resolve(host, port, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return ()
        # Resolver order is the order a client would try; a link-local address keeps its
        # scope (fe80::1%eth0) because the pinned address is where connections go.
        return tuple(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def is_loopback_listen(address):
    """True when ADDR (HOST:PORT) only accepts connections from this node."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refusal(handler, code, message):
    # A handler of the same shape as the one refused, so gRPC frames the error normally.
    async def unary(request, context):
        await context.abort(code, message)

    async def streaming(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator; abort raises first

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Admits a call only with ``authorization: Bearer <token>`` metadata; anything else is
    UNAUTHENTICATED before a handler runs, so a refused call changes nothing."""

    def __init__(self, token):
        if not token:
            raise ConfigError("the token file is empty")
        self._expected = b"Bearer " + token.encode()

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(UNAUTHENTICATED_PREFIXES):
            return await continuation(handler_call_details)
        presented = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
        if presented is not None and hmac.compare_digest(presented, self._expected):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        reason = "no bearer token" if presented is None else "wrong bearer token"
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                        f"{reason}: this agent requires the controller's token")


def read_token(path):
    """The token in ``path`` (surrounding whitespace removed); ConfigError if empty/unreadable."""
    try:
        with open(path) as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def server_credentials(cert_path, key_path, ca_path):
    """mTLS credentials: clients must present a certificate signed by the CA."""
    try:
        with open(cert_path, "rb") as f:
            cert = f.read()
        with open(key_path, "rb") as f:
            key = f.read()
        with open(ca_path, "rb") as f:
            ca = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS material: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=True)
