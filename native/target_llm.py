"""OpenAI-compatible completion emulation for the target: JSON answers and SSE streams.

A streamed answer sends its headers when the injected latency has passed, the first token
``ttft_s`` later and each further token ``inter_token_s`` after the previous one, every event
in its own chunk of a chunked transfer encoding, then ``data: [DONE]``.  Token instants are
computed from the start of the answer, not from the previous timer, so timer jitter does not
accumulate over a long stream.
"""
import json
import time

LLM_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def _chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload):
    return _chunk(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def _token(i):
    return f"tok{i} "


def _prompt_tokens(request):
    if "messages" in request:
        text = " ".join(str(m.get("content", "")) for m in request["messages"] if isinstance(m, dict))
    else:
        text = str(request.get("prompt", ""))
    return len(text.split())


def _choice(chat, text, finish, first=False):
    if chat:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        return {"index": 0, "delta": delta, "finish_reason": finish}
    return {"index": 0, "text": text, "finish_reason": finish}


def llm_response(protocol, slot, path, body, delay, spec):
    """Schedules the answer to one completion request into ``slot`` of ``protocol``."""
    from loadgate.native.target_protocol import http_response

    try:
        request = json.loads(body or b"{}")
        if not isinstance(request, dict):
            raise ValueError("the request body is not a JSON object")
        tokens = spec.tokens
        if request.get("max_tokens") is not None:
            tokens = max(1, min(tokens, int(request["max_tokens"])))
    except (ValueError, TypeError) as exc:
        message = json.dumps({"error": {"message": str(exc), "type": "invalid_request_error"}})
        protocol.loop.call_later(max(delay, 0), protocol.fill, slot,
                                 http_response(400, message.encode(), False, b"application/json"),
                                 True)
        return
    chat = path == "/v1/chat/completions"
    model = str(request.get("model", "loadgate-target"))
    base = {"id": "cmpl-loadgate", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model}
    start = time.monotonic() + delay
    if not request.get("stream"):
        text = "".join(_token(i) for i in range(tokens))
        answer = dict(base, object="chat.completion" if chat else "text_completion")
        if chat:
            answer["choices"] = [{"index": 0, "finish_reason": "length",
                                  "message": {"role": "assistant", "content": text}}]
        else:
            answer["choices"] = [{"index": 0, "text": text, "finish_reason": "length"}]
        prompt = _prompt_tokens(request)
        answer["usage"] = {"prompt_tokens": prompt, "completion_tokens": tokens,
                           "total_tokens": prompt + tokens}
        due = delay + spec.ttft_s + (tokens - 1) * spec.inter_token_s
        data = http_response(200, json.dumps(answer).encode(), slot.close, b"application/json")
        protocol.loop.call_later(max(due, 0), protocol.fill, slot, data, True)
        return

    def send(i):
        if protocol.closed:
            return
        event = _event(dict(base, choices=[_choice(chat, _token(i), None, i == 0)]))
        if i + 1 == tokens:
            final = _event(dict(base, choices=[_choice(chat, "", "length")]))
            protocol.fill(slot, event + final + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n", True)
            return
        protocol.fill(slot, event, False)
        due = start + spec.ttft_s + (i + 1) * spec.inter_token_s
        protocol.loop.call_later(max(due - time.monotonic(), 0), send, i + 1)

    def head():
        protocol.fill(slot, _STREAM_HEAD, False)
        protocol.loop.call_later(max(start + spec.ttft_s - time.monotonic(), 0), send, 0)

    protocol.loop.call_later(max(delay, 0), head)
