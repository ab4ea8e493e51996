"""The event-stream decoder and the completion-chunk reader of the LLM client."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from loadgate.agent.inference.sse import ChunkKind, SseDecoder, read_chunk

STREAM = (b": keep-alive comment\n"
          b"data: {\"a\": 1}\n\n"
          b"event: message\r\ndata: line one\r\ndata: line two\r\n\r\n"
          b"data:no-space\r\rdata: [DONE]\n\n")
EVENTS = ['{"a": 1}', "line one\nline two", "no-space", "[DONE]"]


def test_decoder_reads_every_line_ending_and_field():
    assert SseDecoder().feed(STREAM) == EVENTS


def test_decoder_holds_an_event_until_its_blank_line():
    decoder = SseDecoder()
    assert decoder.feed(b"data: par") == []
    assert decoder.feed(b"tial\n") == []
    assert decoder.feed(b"\n") == ["partial"]


def test_a_trailing_cr_waits_for_a_possible_lf():
    decoder = SseDecoder()
    assert decoder.feed(b"data: x\r") == []
    # CR then LF in the next read is one line end; taken as two, the LF would be a blank line
    # that dispatches "x" on its own.
    assert decoder.feed(b"\ndata: y\n\n") == ["x\ny"]


def test_byte_order_mark_is_ignored_at_the_start_only():
    assert SseDecoder().feed(b"\xef\xbb\xbfdata: z\n\n") == ["z"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_stream_gives_the_same_events(cuts):
    decoder = SseDecoder()
    events = []
    edges = [0] + sorted(cuts) + [len(STREAM)]
    for a, b in zip(edges, edges[1:]):
        events += decoder.feed(STREAM[a:b])
    assert events == EVENTS


def _chat(content=None, **extra):
    delta = {} if content is None else {"content": content}
    return json.dumps(dict({"choices": [{"index": 0, "delta": delta}]}, **extra))


def test_read_chunk_kinds():
    assert read_chunk("[DONE]") == (ChunkKind.DONE, None)
    assert read_chunk(_chat("hello")) == (ChunkKind.CONTENT, None)
    assert read_chunk(_chat("")) == (ChunkKind.EMPTY, None)
    assert read_chunk(json.dumps({"choices": [{"text": "hi"}]})) == (ChunkKind.CONTENT, None)
    reasoning = json.dumps({"choices": [{"delta": {"reasoning_content": "hmm"}}]})
    assert read_chunk(reasoning) == (ChunkKind.CONTENT, None)
    usage = json.dumps({"choices": [], "usage": {"completion_tokens": 7, "prompt_tokens": 3}})
    assert read_chunk(usage) == (ChunkKind.EMPTY, 7)
    assert read_chunk(_chat("x", usage={"completion_tokens": 2})) == (ChunkKind.CONTENT, 2)
    assert read_chunk(json.dumps({"error": {"message": "overloaded"}}))[0] is ChunkKind.ERROR
    assert read_chunk("{not json")[0] is ChunkKind.MALFORMED
    assert read_chunk("[1, 2]")[0] is ChunkKind.MALFORMED
    assert read_chunk(json.dumps({"choices": "nope"}))[0] is ChunkKind.MALFORMED
