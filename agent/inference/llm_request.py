"""What the LLM client sends: the endpoint, the prompts and the encoded HTTP requests."""
import json
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from loadgate.native.errors import ConfigError

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_SUFFIX = "/completions"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str
    tls: bool

    @classmethod
    def parse(cls, url):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"not an http(s) URL: {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError(f"bad port in {url!r}") from None
        path = parts.path if parts.path not in ("", "/") else CHAT_PATH
        if parts.query:
            path += "?" + parts.query
        return cls(parts.hostname, port, path, parts.scheme == "https")

    @property
    def is_chat(self):
        """Chat completions take ``messages``; the legacy completions API takes ``prompt``."""
        path = self.path.split("?", 1)[0]
        return path.endswith("/chat" + COMPLETIONS_SUFFIX) or not path.endswith(COMPLETIONS_SUFFIX)

    @property
    def authority(self):
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class LlmRequestSpec:
    """Everything that shapes the requests of a run (not their timing)."""
    model: str
    prompts: tuple                  # str prompts or lists of chat messages, used in turn
    max_tokens: int = 128
    include_usage: bool = True      # ask for the final usage chunk (stream_options)
    headers: tuple = ()             # extra (name, value) pairs, e.g. Authorization
    extra_body: dict = field(default_factory=dict)  # merged into every JSON body

    def __post_init__(self):
        if not self.prompts:
            raise ConfigError("at least one prompt is needed")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")

    def body(self, endpoint, prompt):
        body = {"model": self.model, "stream": True, "max_tokens": self.max_tokens}
        if endpoint.is_chat:
            body["messages"] = prompt if isinstance(prompt, list) else [
                {"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt if isinstance(prompt, str) else "\n".join(
                str(m.get("content", "")) for m in prompt)
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return json.dumps(body, separators=(",", ":")).encode()

    def encode_all(self, endpoint):
        """One complete HTTP/1.1 request per prompt, encoded once before the run."""
        head = [f"POST {endpoint.path} HTTP/1.1", f"Host: {endpoint.authority}",
                "User-Agent: loadgate", "Content-Type: application/json",
                "Accept: text/event-stream"]
        head += [f"{name}: {value}" for name, value in self.headers]
        out = []
        for prompt in self.prompts:
            body = self.body(endpoint, prompt)
            text = "\r\n".join(head + [f"Content-Length: {len(body)}", "", ""])
            out.append(text.encode("latin-1") + body)
        return out


def parse_header(text):
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in text for c in "\r\n"):
        raise ConfigError(f"not a header: {text!r} (expected NAME:VALUE)")
    return name.strip(), value.strip()


def parse_extra_body(text):
    """The JSON object ``--extra-body`` gives (empty for None)."""
    if text is None:
        return {}
    try:
        extra = json.loads(text)
    except ValueError:
        raise ConfigError(f"--extra-body is not JSON: {text!r}") from None
    if not isinstance(extra, dict):
        raise ConfigError("--extra-body must be a JSON object")
    return extra


def load_prompts(path):
    """Prompts from a file: one per line, plain text or JSON ({"prompt": ...} or
    {"messages": [...]}); blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.rstrip("\n") for line in handle]
    except OSError as exc:
        raise ConfigError(f"cannot read prompts file {path!r}: {exc.strerror}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                raise ConfigError(f"{path}:{number}: not valid JSON") from None
            if isinstance(record.get("messages"), list):
                prompts.append(record["messages"])
            elif isinstance(record.get("prompt"), str):
                prompts.append(record["prompt"])
            else:
                raise ConfigError(f"{path}:{number}: needs a 'prompt' or 'messages' field")
        else:
            prompts.append(line)
    if not prompts:
        raise ConfigError(f"no prompts in {path!r}")
    return tuple(prompts)


def api_key_header(env_name):
    """The Authorization header for the API key held in environment variable ``env_name``."""
    key = os.environ.get(env_name)
    if not key:
        raise ConfigError(f"environment variable {env_name} is not set")
    return ("Authorization", f"Bearer {key}")
