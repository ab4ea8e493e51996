"""What the engine is asked to do: targets, request templates and the run's configuration.

All three are plain dataclasses with ``to_dict()`` / ``from_dict()`` for the wire (JSON-able).
``build_requests`` turns a target into the raw HTTP/1.1 requests a worker rotates through.

Rotation files (``RequestTemplate.rotate_file``), read once when a worker starts:

- ``rotate_mode="bodies"``: every non-empty line is one request body (without its newline),
  sent with the template's method, path and headers; Content-Length is set per body.
- ``rotate_mode="requests"``: whole requests, separated by a line that is exactly ``%%``.
  Each is written as text: the request line, header lines, an empty line, then the body,
  which runs up to the newline before the separator (or the file's last newline).  Lines
  may end in LF or CRLF; they are sent with CRLF.  Host and Content-Length are added when
  the entry does not give them.

Requests are sent in file order, one per request, wrapping around at the end.
"""
import base64
import dataclasses
import enum
import ipaddress
import math
import urllib.parse
from dataclasses import dataclass, field

from loadgate.native.errors import ConfigError
from loadgate.native.schedule import schedule_from_dict

REQUEST_SEPARATOR = "%%"
# A coarser window than this is no longer a pacing schedule.
MAX_PACING_WINDOW_S = 0.01
# Past this a rotation file is a mistake (a log, a dump), not a set of requests.
MAX_ROTATE_BYTES = 256 * 1024 * 1024


class RotateMode(enum.Enum):
    BODIES = "bodies"
    REQUESTS = "requests"


class Scheme(enum.Enum):
    HTTP = "http"
    HTTPS = "https"


@dataclass
class RequestTemplate:
    """The request sent to a target.  ``path=None`` means the target URL's path and query."""

    method: str = "GET"
    path: str | None = None
    headers: tuple = ()
    body: bytes = b""
    rotate_file: str | None = None
    rotate_mode: RotateMode = RotateMode.BODIES

    def __post_init__(self):
        self.method = str(self.method).upper()
        if not self.method.isalpha():
            raise ConfigError(f"not an HTTP method: {self.method!r}")
        self.headers = tuple((str(k), str(v)) for k, v in self.headers)
        for name, value in self.headers:
            if not name or any(c in name + value for c in "\r\n") or ":" in name:
                raise ConfigError(f"not a valid header: {name!r}: {value!r}")
        if isinstance(self.body, str):
            self.body = self.body.encode()
        try:
            self.rotate_mode = RotateMode(self.rotate_mode)
        except ValueError:
            raise ConfigError(f"rotate_mode must be 'bodies' or 'requests', "
                              f"got {self.rotate_mode!r}") from None

    def to_dict(self):
        return {"method": self.method, "path": self.path,
                "headers": [list(h) for h in self.headers],
                "body_b64": base64.b64encode(self.body).decode(),
                "rotate_file": self.rotate_file, "rotate_mode": self.rotate_mode.value}

    @classmethod
    def from_dict(cls, d):
        try:
            return cls(method=d.get("method", "GET"), path=d.get("path"),
                       headers=tuple(tuple(h) for h in d.get("headers", ())),
                       body=base64.b64decode(d.get("body_b64", "")),
                       rotate_file=d.get("rotate_file"),
                       rotate_mode=d.get("rotate_mode", RotateMode.BODIES.value))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"not a request template: {d!r} ({exc})") from None


@dataclass
class TargetSpec:
    """One target.  ``weight`` is its share of the traffic (relative to the others);
    ``tls_verify=False`` accepts any certificate; ``ca_file`` adds a trusted CA.  ``address``,
    when set, is the IP address connections go to instead of resolving the URL's host again
    (an agent pins the address its allowlist checked); Host and TLS still use the URL's name."""

    name: str
    url: str
    weight: float = 1.0
    request: RequestTemplate = field(default_factory=RequestTemplate)
    tls_verify: bool = True
    ca_file: str | None = None
    address: str | None = None

    def __post_init__(self):
        parsed = urllib.parse.urlsplit(self.url)
        try:
            self.scheme = Scheme(parsed.scheme)
            self.port = parsed.port or (443 if self.scheme is Scheme.HTTPS else 80)
        except ValueError:
            raise ConfigError(f"target {self.name!r}: not an http(s) URL: {self.url!r}") from None
        if not parsed.hostname:
            raise ConfigError(f"target {self.name!r}: URL has no host: {self.url!r}")
        self.host = parsed.hostname
        self.url_path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        if self.address is not None:
            try:
                self.address = str(ipaddress.ip_address(self.address))
            except ValueError:
                raise ConfigError(f"target {self.name!r}: address {self.address!r} is not an "
                                  f"IP address") from None
        self.weight = float(self.weight)
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ConfigError(f"target {self.name!r}: weight must be >= 0, got {self.weight}")

    def to_dict(self):
        return {"name": self.name, "url": self.url, "weight": self.weight,
                "request": self.request.to_dict(), "tls_verify": self.tls_verify,
                "ca_file": self.ca_file, "address": self.address}

    @classmethod
    def from_dict(cls, d):
        try:
            return cls(name=d["name"], url=d["url"], weight=d.get("weight", 1.0),
                       request=RequestTemplate.from_dict(d.get("request", {})),
                       tls_verify=d.get("tls_verify", True), ca_file=d.get("ca_file"),
                       address=d.get("address"))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a target: {d!r} ({exc})") from None


@dataclass
class EngineConfig:
    """A run.  ``connections`` is the pool each target starts with and ``max_connections``
    the most it may grow to, both across all workers (each worker gets an equal share, at
    least one).  ``pacing_window_s`` trades precision for CPU: sends may go out up to that
    late so that one wake-up serves several (0, the default, paces each send exactly)."""

    targets: list
    schedule: object
    connections: int = 16
    max_connections: int = 1024
    timeout_s: float = 10.0
    interval_s: float = 1.0
    pacing_window_s: float = 0.0

    def __post_init__(self):
        self.targets = list(self.targets)
        if not self.targets:
            raise ConfigError("a run needs at least one target")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ConfigError(f"target names must be unique: {names}")
        if sum(t.weight for t in self.targets) <= 0:
            raise ConfigError("at least one target needs a positive weight")
        if not 1 <= self.connections <= self.max_connections:
            raise ConfigError(f"need 1 <= connections ({self.connections}) <= "
                              f"max_connections ({self.max_connections})")
        if not self.timeout_s > 0 or not self.interval_s > 0:
            raise ConfigError("timeout_s and interval_s must be positive")
        if not 0 <= self.pacing_window_s <= MAX_PACING_WINDOW_S:
            raise ConfigError(f"pacing_window_s must be within 0..{MAX_PACING_WINDOW_S}, "
                              f"got {self.pacing_window_s}")

    @property
    def open_loop(self):
        return self.schedule.is_open_loop

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["targets"] = [t.to_dict() for t in self.targets]
        d["schedule"] = self.schedule.to_dict()
        return d

    @classmethod
    def from_dict(cls, d):
        try:
            return cls(targets=[TargetSpec.from_dict(t) for t in d["targets"]],
                       schedule=schedule_from_dict(d["schedule"]),
                       connections=int(d.get("connections", 16)),
                       max_connections=int(d.get("max_connections", 1024)),
                       timeout_s=float(d.get("timeout_s", 10.0)),
                       interval_s=float(d.get("interval_s", 1.0)),
                       pacing_window_s=float(d.get("pacing_window_s", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not an engine config: {exc}") from None


def worker_share(total, workers):
    """Each worker's part of a per-run connection count: an equal share, at least one."""
    return max(1, math.ceil(total / workers))


def _host_header(spec):
    default = 443 if spec.scheme is Scheme.HTTPS else 80
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return host if spec.port == default else f"{host}:{spec.port}"


def _has_header(headers, name):
    return any(k.lower() == name for k, _ in headers)


def _render(method, path, headers, body, host):
    lines = [f"{method} {path} HTTP/1.1"]
    if not _has_header(headers, "host"):
        lines.append(f"Host: {host}")
    lines.extend(f"{k}: {v}" for k, v in headers)
    if (body or method in ("POST", "PUT", "PATCH")) and not _has_header(headers, "content-length"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _read_rotation(path):
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ROTATE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read rotation file {path!r}: {exc.strerror}") from None
    if len(data) > MAX_ROTATE_BYTES:
        raise ConfigError(f"rotation file {path!r} is larger than {MAX_ROTATE_BYTES} bytes")
    return data


def _parse_raw_request(entry, host, where):
    head, _, body = entry.partition(b"\n\n")
    lines = head.rstrip(b"\n").decode("latin-1").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ConfigError(f"{where}: not a request line: {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"{where}: not a header line: {line!r}")
        headers.append((name.strip(), value.strip()))
    return _render(parts[0], parts[1], headers, body, host)


def _split_requests(data):
    entries, current = [], []
    text = data.replace(b"\r\n", b"\n")
    if text.endswith(b"\n"):
        text = text[:-1]
    for line in text.split(b"\n"):
        if line == REQUEST_SEPARATOR.encode():
            entries.append(b"\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append(b"\n".join(current))
    return [e.lstrip(b"\n") for e in entries if e.strip()]


def load_rotate_file(path, mode):
    """The entries of a rotation file as bytes: bodies (``mode="bodies"``) or raw request
    texts with LF line ends (``mode="requests"``), in file order; ConfigError if the file is
    unreadable or holds none."""
    mode = RotateMode(mode)
    data = _read_rotation(path)
    if mode is RotateMode.BODIES:
        entries = [line for line in data.splitlines() if line.strip()]
    else:
        entries = _split_requests(data)
    if not entries:
        raise ConfigError(f"rotation file {path!r} holds no requests")
    return entries


def build_requests(spec):
    """The raw requests (bytes) a worker rotates through for ``spec``; ConfigError if the
    rotation file is missing, empty or malformed."""
    template = spec.request
    host = _host_header(spec)
    path = template.path or spec.url_path
    if template.rotate_file is None:
        return [_render(template.method, path, template.headers, template.body, host)]
    entries = load_rotate_file(template.rotate_file, template.rotate_mode)
    if template.rotate_mode is RotateMode.BODIES:
        return [_render(template.method, path, template.headers, body, host) for body in entries]
    return [_parse_raw_request(entry, host, f"{template.rotate_file} entry {i + 1}")
            for i, entry in enumerate(entries)]
