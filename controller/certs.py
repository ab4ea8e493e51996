"""``loadgate certs init DIR``: the certificates and token that authenticate controller and agents.

One private CA signs two leaves: the agent's server certificate (SANs: the given hosts plus
localhost, 127.0.0.1 and ::1) and the controller's client certificate (also usable as a
server certificate for the Controller service, with the same SANs).  Keys are ECDSA P-256,
written 0600; the directory is created 0700.  A random bearer token is written beside them
for environments whose TLS is terminated elsewhere (a service mesh).

Files in DIR (``CertFiles``): ca.pem, ca-key.pem, agent.pem, agent-key.pem, controller.pem,
controller-key.pem, token.  The agent takes ``--tls-cert agent.pem --tls-key agent-key.pem
--tls-ca ca.pem``, ``loadgate run`` takes ``--tls-cert controller.pem --tls-key
controller-key.pem --tls-ca ca.pem``; both take ``--token-file token``.

API::

    init_certs(directory, hosts=(), days=365, force=False) -> CertFiles
    grpc_server_credentials(directory) -> grpc.ServerCredentials     # agent side, mTLS
    grpc_channel_credentials(directory) -> grpc.ChannelCredentials   # controller side, mTLS
    channel_options(server_name) -> list                 # dial an IP, verify a DNS name
    read_token(path) -> str
    token_metadata(path) -> tuple                        # (("authorization", "Bearer ..."),)
    token_call_credentials(path) -> grpc.CallCredentials # compose with channel credentials
"""
import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from loadgate.native.errors import ConfigError

ALWAYS_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_DAYS = 3650
# Clocks of freshly booted nodes disagree by a little; a certificate valid from "now" would be
# refused by a node a minute behind.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertFiles:
    """The paths of everything ``init_certs`` writes into one directory."""

    directory: str

    def _path(self, name):
        return os.path.join(self.directory, name)

    @property
    def ca(self):
        return self._path("ca.pem")

    @property
    def ca_key(self):
        return self._path("ca-key.pem")

    @property
    def agent_cert(self):
        return self._path("agent.pem")

    @property
    def agent_key(self):
        return self._path("agent-key.pem")

    @property
    def controller_cert(self):
        return self._path("controller.pem")

    @property
    def controller_key(self):
        return self._path("controller-key.pem")

    @property
    def token(self):
        return self._path("token")

    def all(self):
        return (self.ca, self.ca_key, self.agent_cert, self.agent_key, self.controller_cert,
                self.controller_key, self.token)


def _subject_alt_names(hosts):
    names = []
    for host in dict.fromkeys(list(hosts) + list(ALWAYS_NAMES)):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            try:
                names.append(x509.DNSName(host))
            except ValueError as exc:
                raise ConfigError(f"--hosts: {host!r} is not a DNS name or IP: {exc}") from None
    return names


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject, issuer, public_key, days):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False))


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "loadgate"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(days):
    key = _key()
    name = _name("loadgate CA")
    cert = (_builder(name, name, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, common_name, usages, hosts, days):
    key = _key()
    cert = (_builder(_name(common_name), ca_cert.subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write(path, data, mode):
    # Created with its final mode, so a key is never readable by others even for an instant.
    if os.path.lexists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def init_certs(directory, hosts=(), days=365, force=False):
    """Writes a CA, the agent and controller certificates and a token; returns CertFiles."""
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"--days must be 1..{MAX_DAYS}, got {days}")
    files = CertFiles(directory)
    existing = [path for path in files.all() if os.path.exists(path)]
    if existing and not force:
        raise ConfigError(f"{directory} already holds {', '.join(map(os.path.basename, existing))};"
                          " give --force to replace them (every agent then needs the new files)")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        ca_key, ca_cert = _ca(days)
        agent_key, agent_cert = _leaf(ca_key, ca_cert, "loadgate-agent",
                                      [ExtendedKeyUsageOID.SERVER_AUTH], hosts, days)
        controller_key, controller_cert = _leaf(
            ca_key, ca_cert, "loadgate-controller",
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH], hosts, days)
        _write(files.ca_key, _key_pem(ca_key), 0o600)
        _write(files.ca, _cert_pem(ca_cert), 0o644)
        _write(files.agent_key, _key_pem(agent_key), 0o600)
        _write(files.agent_cert, _cert_pem(agent_cert), 0o644)
        _write(files.controller_key, _key_pem(controller_key), 0o600)
        _write(files.controller_cert, _cert_pem(controller_cert), 0o644)
        _write(files.token, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write certificates to {directory}: {exc}") from None
    return files


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def grpc_server_credentials(directory):
    """mTLS server credentials from the agent's files: callers need a certificate from the CA."""
    files = CertFiles(directory)
    return grpc.ssl_server_credentials(
        [(_read(files.agent_key), _read(files.agent_cert))],
        root_certificates=_read(files.ca), require_client_auth=True)


def grpc_channel_credentials(directory):
    """mTLS channel credentials from the controller's files."""
    files = CertFiles(directory)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(files.ca), private_key=_read(files.controller_key),
        certificate_chain=_read(files.controller_cert))


def channel_options(server_name):
    """Channel options that verify the agent's certificate against ``server_name`` whatever
    address is dialled (pods are dialled by IP, their certificate names the Service)."""
    return [("grpc.ssl_target_name_override", server_name)]


def read_token(path):
    """The bearer token in ``path``; ConfigError if unreadable or empty."""
    token = _read(path).decode("utf-8", "replace").strip()
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def token_metadata(path):
    """Call metadata carrying the token (for channels without call-credential support)."""
    return (("authorization", f"Bearer {read_token(path)}"),)


def token_call_credentials(path):
    """Call credentials sending ``authorization: Bearer <token>`` on every call; gRPC sends
    them only over a secure channel (TLS, or local credentials on loopback)."""
    return grpc.access_token_call_credentials(read_token(path))


def register(subparsers):
    parser = subparsers.add_parser("certs", help="create the CA, certificates and token",
                                   description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)
    init = commands.add_parser("init", help="create a CA, agent and controller certificates")
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--hosts", nargs="+", default=[], metavar="HOST",
                      help="DNS names or IPs the agents are reached by (e.g. the headless "
                           "Service name); localhost, 127.0.0.1 and ::1 are always included")
    init.add_argument("--days", type=int, default=365, help="validity (default 365)")
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(func=_init_command)


def _init_command(args):
    files = init_certs(args.directory, args.hosts, args.days, args.force)
    names = ", ".join(dict.fromkeys(list(args.hosts) + list(ALWAYS_NAMES)))
    print(f"wrote {', '.join(os.path.basename(p) for p in files.all())} to {files.directory}")
    print(f"agent certificate names: {names}; valid {args.days} days")
    print(f"agent:      --tls-cert {files.agent_cert} --tls-key {files.agent_key} "
          f"--tls-ca {files.ca}")
    print(f"controller: --tls-cert {files.controller_cert} --tls-key {files.controller_key} "
          f"--tls-ca {files.ca}")
    return 0
