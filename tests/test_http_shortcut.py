"""The harvest's shortcut past the general parser (native/lg_http.c) against llhttp itself
(through httptools), the parser of record: whatever the shortcut accepts, httptools must
read as exactly one complete response with the same status and keep-alive, nothing left."""
import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgate.native._engine import whole_response


class _Reader:
    def __init__(self):
        self.parser = httptools.HttpResponseParser(self)
        self.completed = []

    def on_message_complete(self):
        self.completed.append((self.parser.get_status_code(), self.parser.should_keep_alive()))


def reference(data):
    """[(status, keep_alive)] of the complete responses httptools reads in ``data``, or None
    when it refuses the bytes."""
    reader = _Reader()
    try:
        reader.parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    return reader.completed


def response(status=200, reason=b"OK", headers=((b"Content-Length", b"3"),), body=b"ok\n",
             version=b"HTTP/1.1"):
    head = b"%s %d %s\r\n" % (version, status, reason)
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + b"\r\n" + body


NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 04:05:00 GMT\r\n"
         b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n"
         b"Connection: keep-alive\r\n\r\nok\n")


@pytest.mark.parametrize("data, expected", [
    (NGINX, (200, True)),
    (response(503, b"Service Unavailable"), (503, True)),
    (response(headers=((b"content-length", b"3"), (b"CONNECTION", b"Close"))), (200, False)),
    (response(headers=((b"Content-Length", b" 0 "),), body=b""), (200, True)),
    (response(404, b"", headers=((b"Content-Length", b"3"), (b"X-Empty", b""))), (404, True)),
])
def test_common_responses_take_the_shortcut_and_agree_with_llhttp(data, expected):
    assert whole_response(data) == expected
    assert reference(data) == [expected]


@pytest.mark.parametrize("data", [
    NGINX[:-1],                                                   # body not complete yet
    NGINX[:40],                                                   # headers not complete
    NGINX + NGINX,                                                # two responses in one read
    NGINX + b"x",                                                 # bytes after the body
    response(headers=((b"Transfer-Encoding", b"chunked"),), body=b"3\r\nok\n\r\n0\r\n\r\n"),
    response(headers=()),                                         # close-delimited body
    response(204, b"No Content", body=b""),
    response(304, b"Not Modified", body=b""),
    b"HTTP/1.1 100 Continue\r\n\r\n" + NGINX,
    response(version=b"HTTP/1.0"),
    response(headers=((b"Content-Length", b"3"), (b"Content-Length", b"3"))),
    response(headers=((b"Content-Length", b"+3"),)),
    response(headers=((b"Connection", b"upgrade"), (b"Content-Length", b"3"))),
    response(headers=((b"Proxy-Connection", b"close"), (b"Content-Length", b"3"))),
    response(headers=((b"Bad Name", b"x"), (b"Content-Length", b"3"))),
    response(headers=((b"X-Bin", b"caf\xc3\xa9"), (b"Content-Length", b"3"))),
    NGINX.replace(b"\r\n", b"\n"),
    b"HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
])
def test_anything_else_is_left_to_the_general_parser(data):
    assert whole_response(data) is None


_TOKEN = st.text("abcXYZ-_!#0123456789", min_size=1, max_size=12).map(str.encode)
_VALUE = st.binary(max_size=20)
_HEADER = st.one_of(
    st.tuples(_TOKEN, _VALUE),
    st.tuples(st.sampled_from([b"Content-Length", b"content-length", b"Connection",
                               b"Transfer-Encoding", b"Proxy-Connection"]),
              st.one_of(_VALUE, st.sampled_from([b"3", b"0", b"close", b"keep-alive",
                                                 b" 3", b"3 ", b"chunked", b"007"]))))


@settings(max_examples=1500, derandomize=True, deadline=None)
@given(status=st.integers(0, 999), reason=st.binary(max_size=12),
       headers=st.lists(_HEADER, max_size=6), body=st.binary(max_size=8),
       version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 "]),
       cut=st.integers(-3, 3))
def test_the_shortcut_never_disagrees_with_llhttp(status, reason, headers, body, version, cut):
    data = response(status, reason, headers, body, version)
    if cut < 0:
        data = data[:cut]
    elif cut > 0:
        data += NGINX[:cut]
    shortcut = whole_response(data)
    if shortcut is not None:
        assert reference(data) == [shortcut]


@settings(max_examples=1500, derandomize=True, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_are_never_accepted_unless_llhttp_agrees(data):
    shortcut = whole_response(data)
    if shortcut is not None:
        assert reference(data) == [shortcut]
