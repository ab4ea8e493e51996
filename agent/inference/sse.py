"""Server-sent events as OpenAI-compatible servers stream them.

``SseDecoder`` turns body bytes, in whatever pieces the network delivers, into event data
strings (the WHATWG event-stream rules: any of CRLF, LF or CR ends a line, ``data:`` lines of
one event are joined with LF, comment lines start with a colon, a blank line dispatches).
``read_chunk`` says what one event of a completion stream carries.
"""
import enum
import json
import re

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SseDecoder:
    """Incremental event-stream decoder; ``feed`` returns the data of every completed event."""

    def __init__(self):
        self._pending = b""
        self._data = []
        self._started = False

    def feed(self, chunk):
        buffer = self._pending + chunk
        # A CR at the very end may be the first half of a CRLF still in flight.
        keep = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
        events = []
        position = 0
        for match in _LINE_END.finditer(buffer, 0, keep):
            self._line(buffer[position:match.start()], events)
            position = match.end()
        self._pending = buffer[position:]
        return events

    def _line(self, line, events):
        if not self._started:
            self._started = True
            if line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
        if not line:
            if self._data:
                events.append(b"\n".join(self._data).decode("utf-8", "replace"))
                self._data = []
            return
        if line.startswith(b":"):
            return
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)


class ChunkKind(enum.Enum):
    CONTENT = "content"      # carries generated text: one streamed output step
    EMPTY = "empty"          # valid but generates nothing (role announcement, finish, usage)
    DONE = "done"            # the ``[DONE]`` sentinel that ends an OpenAI stream
    ERROR = "error"          # the server reported an error inside the stream
    MALFORMED = "malformed"  # not JSON, or JSON of the wrong shape


def _has_text(choice):
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        for key in ("content", "reasoning_content"):
            if isinstance(delta.get(key), str) and delta[key]:
                return True
    return isinstance(choice.get("text"), str) and bool(choice["text"])


def read_chunk(data):
    """``(ChunkKind, completion_tokens or None)`` for one event's data string.

    The token count comes from a ``usage`` object when the server sends one (vLLM, OpenAI
    with ``stream_options.include_usage``); callers fall back to counting CONTENT chunks.
    """
    if data.strip() == "[DONE]":
        return ChunkKind.DONE, None
    try:
        chunk = json.loads(data)
    except ValueError:
        return ChunkKind.MALFORMED, None
    if not isinstance(chunk, dict):
        return ChunkKind.MALFORMED, None
    if chunk.get("error"):
        return ChunkKind.ERROR, None
    usage = chunk.get("usage")
    tokens = None
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        tokens = usage["completion_tokens"]
    choices = chunk.get("choices")
    if choices is None:
        choices = []
    if not isinstance(choices, list):
        return ChunkKind.MALFORMED, None
    if any(_has_text(choice) for choice in choices):
        return ChunkKind.CONTENT, tokens
    return ChunkKind.EMPTY, tokens
