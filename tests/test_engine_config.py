"""Engine configuration: the raw requests built from templates and rotation files, and the
wire form of a configuration."""
import pytest

from loadgate.native.engine import (EngineConfig, RequestTemplate, TargetSpec, build_requests,
                                    load_rotate_file)
from loadgate.native.errors import ConfigError
from loadgate.native.outcomes import Outcome, outcome_for_status
from loadgate.native.schedule import Poisson


def test_a_template_renders_one_request_with_host_and_length():
    spec = TargetSpec("t", "http://example.test:8080/api?q=1",
                      request=RequestTemplate(method="put", headers=(("X-A", "1"),), body=b"hi"))
    assert build_requests(spec) == [
        b"PUT /api?q=1 HTTP/1.1\r\nHost: example.test:8080\r\nX-A: 1\r\n"
        b"Content-Length: 2\r\n\r\nhi"]
    plain = TargetSpec("t", "https://example.test/", request=RequestTemplate(path="/p"))
    assert build_requests(plain) == [b"GET /p HTTP/1.1\r\nHost: example.test\r\n\r\n"]
    assert plain.port == 443


def test_rotation_files(tmp_path):
    bodies = tmp_path / "bodies"
    bodies.write_bytes(b"a\r\n\nbb\n")
    spec = TargetSpec("t", "http://h/", request=RequestTemplate(
        method="POST", rotate_file=str(bodies)))
    assert build_requests(spec) == [
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\na",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nbb"]
    requests = tmp_path / "requests"
    requests.write_bytes(b"GET /a HTTP/1.1\r\nHost: other\r\n\r\n%%\r\n"
                         b"POST /b HTTP/1.1\nContent-Length: 3\n\nxyz\n%%\n")
    spec = TargetSpec("t", "http://h/", request=RequestTemplate(
        rotate_file=str(requests), rotate_mode="requests"))
    assert build_requests(spec) == [
        b"GET /a HTTP/1.1\r\nHost: other\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"]


@pytest.mark.parametrize("content, message", [
    (b"", "holds no requests"),
    (b"GET /\n", "not a request line"),
    (b"GET / HTTP/1.1\nno colon here\n", "not a header line"),
])
def test_malformed_rotation_files_are_config_errors(tmp_path, content, message):
    path = tmp_path / "requests"
    path.write_bytes(content)
    spec = TargetSpec("t", "http://h/", request=RequestTemplate(
        rotate_file=str(path), rotate_mode="requests"))
    with pytest.raises(ConfigError, match=message):
        build_requests(spec)


def test_missing_rotation_file_is_a_config_error(tmp_path):
    spec = TargetSpec("t", "http://h/", request=RequestTemplate(
        rotate_file=str(tmp_path / "absent")))
    with pytest.raises(ConfigError, match="cannot read"):
        build_requests(spec)


@pytest.mark.parametrize("make", [
    lambda: TargetSpec("t", "ftp://h/"),
    lambda: TargetSpec("t", "http:///path"),
    lambda: TargetSpec("t", "http://h/", weight=-1),
    lambda: RequestTemplate(method="GE T"),
    lambda: RequestTemplate(headers=(("X", "a\r\nInjected: 1"),)),
    lambda: RequestTemplate(rotate_mode="lines"),
    lambda: EngineConfig([], Poisson(10, 1, 1)),
    lambda: EngineConfig([TargetSpec("a", "http://h/"), TargetSpec("a", "http://h/")],
                         Poisson(10, 1, 1)),
    lambda: EngineConfig([TargetSpec("a", "http://h/", weight=0)], Poisson(10, 1, 1)),
    lambda: EngineConfig([TargetSpec("a", "http://h/")], Poisson(10, 1, 1), connections=5,
                         max_connections=4),
    lambda: EngineConfig([TargetSpec("a", "http://h/")], Poisson(10, 1, 1), pacing_window_s=1),
])
def test_invalid_configuration_is_refused(make):
    with pytest.raises(ConfigError):
        make()


def test_config_survives_the_wire():
    config = EngineConfig(
        [TargetSpec("base", "http://h:1/", weight=3,
                    request=RequestTemplate(method="POST", headers=(("A", "b"),), body=b"\x00\xff")),
         TargetSpec("canary", "https://h:2/", weight=1, tls_verify=False, ca_file="/ca.pem")],
        Poisson(100, 2.5, 9), connections=3, max_connections=30, timeout_s=1.5, interval_s=0.5,
        pacing_window_s=0.001)
    again = EngineConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert again.targets[0].request.body == b"\x00\xff" and again.schedule == config.schedule
    assert again.targets[1].tls_verify is False


def test_status_classes():
    assert [outcome_for_status(s) for s in (200, 204, 301, 404, 503, 99, 600)] == [
        Outcome.OK_2XX, Outcome.OK_2XX, Outcome.REDIRECT_3XX, Outcome.CLIENT_4XX,
        Outcome.SERVER_5XX, Outcome.PARSE_ERROR, Outcome.PARSE_ERROR]
    assert [o.label for o in Outcome][:4] == ["2xx", "3xx", "4xx", "5xx"]


def test_rotation_entries_can_be_shipped_and_written_back(tmp_path):
    # The controller reads entries, ships them, and an agent writes them back to a file.
    source = tmp_path / "source"
    source.write_bytes(b"GET /a HTTP/1.1\r\nX: 1\r\n\r\n%%\nPOST /b HTTP/1.1\n\nbody\n")
    entries = load_rotate_file(str(source), "requests")
    assert entries == [b"GET /a HTTP/1.1\nX: 1\n", b"POST /b HTTP/1.1\n\nbody"]
    copy = tmp_path / "copy"
    copy.write_bytes(b"\n%%\n".join(entries) + b"\n")
    spec = lambda path: TargetSpec("t", "http://h/", request=RequestTemplate(
        rotate_file=str(path), rotate_mode="requests"))
    assert build_requests(spec(copy)) == build_requests(spec(source))


def test_live_weights_are_checked_against_the_current_split():
    from loadgate.native.engine import LoadRun
    run = LoadRun(EngineConfig([TargetSpec("a", "http://h/"), TargetSpec("b", "http://h/")],
                               Poisson(10, 1, 1)), workers=1)
    run.set_weights({"a": 0})          # not started: nothing to tell, the split is kept
    with pytest.raises(ConfigError):
        run.set_weights({"b": 0})      # would leave no target with traffic
    with pytest.raises(ConfigError):
        run.set_weights({"c": 1})
    with pytest.raises(ConfigError):
        run.set_rate_scale(0)
