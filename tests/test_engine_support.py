"""Real peers for the engine tests: ``loadgate target`` processes, a recording HTTP(S) server
on loopback, a self-signed certificate and a port nobody listens on."""
import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import socket
import ssl
import threading
import urllib.request

import httptools
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loadgate.native.engine import EngineConfig, TargetSpec
from loadgate.native.target import start_target_process, stop_target_process


@contextlib.contextmanager
def target(*args, favoured=False):
    """A ``loadgate target`` process with these flags; yields its base URL.  A ``favoured``
    target runs at a raised priority where that is permitted, so that on a busy host it still
    answers when its injected behaviour says (a test comparing against a computed truth)."""
    proc, host, port = start_target_process(list(args))
    if favoured:
        favour(proc.pid)
    try:
        yield f"http://{host}:{port}"
    finally:
        stop_target_process(proc)


def favour(pid):
    """Raises process ``pid`` to a higher scheduling priority where that is permitted."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, -10)
    except PermissionError:
        pass


def target_stats(base_url):
    with urllib.request.urlopen(base_url + "/__target/stats", timeout=10) as response:
        return json.load(response)


def closed_port():
    """A loopback port that refuses connections (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(urls, schedule, **kwargs):
    """An EngineConfig over ``urls`` (a URL, or {name: (url, weight)})."""
    if isinstance(urls, str):
        urls = {"t": (urls, 1.0)}
    targets = [TargetSpec(name, url, weight=weight, **kwargs.pop("spec", {}))
               for name, (url, weight) in urls.items()]
    return EngineConfig(targets, schedule, **kwargs)


def outcome_counts(target_interval):
    """The non-zero outcome counters of a TargetInterval."""
    return {o: n for o, n in target_interval.outcomes.items() if n}


def self_signed_cert(directory):
    """(cert_path, key_path) of a fresh certificate for 127.0.0.1 / localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Recorder(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.body = []

    def connection_made(self, transport):
        self.transport = transport
        self.server.connections += 1

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_url(self, url):
        self.url = url

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        request = (self.parser.get_method().decode(), self.url.decode(), b"".join(self.body))
        self.body = []
        self.server.requests.append(request)
        # A response to HEAD announces the body a GET would get, and sends none.
        body = b"" if request[0] == "HEAD" else b"ok"
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + body)


class RecordingServer:
    """An HTTP/1.1 server on 127.0.0.1 in a thread of its own; ``requests`` lists
    (method, path, body) in arrival order.  With ``ssl_context`` it serves https."""

    def __init__(self, ssl_context=None):
        self.ssl_context = ssl_context
        self.requests = []
        self.connections = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    @property
    def url(self):
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _serve(self):
        asyncio.run(self._main())

    async def _main(self):
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        server = await self._loop.create_server(lambda: _Recorder(self), "127.0.0.1", 0,
                                                ssl=self.ssl_context)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop
        server.close()


def tls_server_context(cert_path, key_path):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context

