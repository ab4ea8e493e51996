"""The built-in target, exercised over real loopback sockets in a real child process."""
import http.client
import json
import random
import selectors
import socket
import subprocess
import sys
import time

import pytest

from loadgate.native.errors import ConfigError, InfrastructureError
from loadgate.native.target import (
    Behaviour, LatencyKind, LatencySpec, LoadLatency, TargetConfig, parse_behaviour,
    parse_duration, start_target_process, stop_target_process,
)

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture
def target():
    started = []

    def start(*args):
        proc, host, port = start_target_process(args)
        started.append(proc)
        return host, port

    yield start
    for proc in started:
        assert stop_target_process(proc) == 0


def timed_get(host, port, path="/", conn=None):
    conn = conn or http.client.HTTPConnection(host, port, timeout=10)
    begin = time.monotonic()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    return response.status, body, time.monotonic() - begin


def stats(host, port):
    status, body, _ = timed_get(host, port, "/__target/stats")
    assert status == 200
    return json.loads(body)


def one_shot(port, count, wait_s, request=GET):
    """Sends one request on each of ``count`` fresh connections at once, then classifies what
    each connection got within ``wait_s``: 'ok', 'error', 'reset', 'malformed' or 'hang'."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    received = {s: b"" for s in socks}
    verdict = {}
    with selectors.DefaultSelector() as selector:
        for s in socks:
            s.sendall(request)
            selector.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + wait_s
        while len(verdict) < count and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk, verdict[s] = b"", "reset"
                received[s] += chunk
                data = received[s]
                if s not in verdict and (b"\r\n\r\n" in data or not chunk):
                    if not data:
                        verdict[s] = "reset"
                    elif not data.startswith((b"HTTP/1.1 200", b"HTTP/1.1 5")):
                        verdict[s] = "malformed"
                    else:
                        verdict[s] = "ok" if data.startswith(b"HTTP/1.1 200") else "error"
                if s in verdict:
                    selector.unregister(s)
    for s in socks:
        s.close()
    return [verdict.get(s, "hang") for s in socks]


def test_listening_line_port_file_and_stats(target, tmp_path):
    port_file = tmp_path / "port"
    host, port = target("--port-file", str(port_file))
    assert host == "127.0.0.1" and int(port_file.read_text()) == port
    status, body, _ = timed_get(host, port, "/anything?q=1")
    assert (status, body) == (200, b"ok\n")
    counters = stats(host, port)
    assert counters["outcomes"]["ok"] == 1 and counters["requests"] == 2
    assert counters["epoch_monotonic_ns"] <= time.monotonic_ns()


def test_fixed_latency_is_observed_on_keep_alive(target):
    host, port = target("--latency", "30ms")
    conn = http.client.HTTPConnection(host, port, timeout=10)
    took = sorted(timed_get(host, port, conn=conn)[2] for _ in range(8))
    assert took[0] >= 0.030
    assert took[len(took) // 2] < 0.030 + 0.050
    assert stats(host, port)["connections"] == 2


def test_latency_distribution_spans_its_range(target):
    host, port = target("--latency", "uniform:5ms:60ms", "--seed", "3")
    conn = http.client.HTTPConnection(host, port, timeout=10)
    took = [timed_get(host, port, conn=conn)[2] for _ in range(30)]
    assert min(took) >= 0.005
    assert min(took) < 0.030 < max(took)


def test_body_size_and_connection_close(target):
    host, port = target("--body-size", "1000")
    with socket.create_connection((host, port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Length: 1000" in head and len(body) == 1000


def test_failures_happen_at_their_rates(target):
    host, port = target("--seed", "11", "--error-rate", "0.2", "--error-status", "503",
                        "--reset-rate", "0.15", "--hang-rate", "0.1", "--malformed-rate", "0.05")
    outcomes = one_shot(port, 400, 1.5)
    share = {name: outcomes.count(name) / len(outcomes)
             for name in ("ok", "error", "reset", "hang", "malformed")}
    # 400 draws: four standard deviations of a 20 % share are 8 %.
    for name, expected in (("error", 0.2), ("reset", 0.15), ("hang", 0.1), ("malformed", 0.05),
                           ("ok", 0.5)):
        assert abs(share[name] - expected) < 4 * (expected * (1 - expected) / 400) ** 0.5 + 0.01, share
    counters = stats(host, port)["outcomes"]
    assert counters["error"] == outcomes.count("error")
    assert counters["hang"] == outcomes.count("hang")


def test_decisions_are_reproducible_by_seed(target):
    runs = []
    for seed in ("5", "5", "6"):
        host, port = target("--seed", seed, "--error-rate", "0.5")
        conn = http.client.HTTPConnection(host, port, timeout=10)
        runs.append([timed_get(host, port, conn=conn)[0] for _ in range(40)])
    assert runs[0] == runs[1] != runs[2]
    assert set(runs[0]) == {200, 500}


def test_stall_holds_every_answer_until_it_ends(target):
    host, port = target("--stall-every", "600ms", "--stall-for", "200ms")
    epoch = stats(host, port)["epoch_monotonic_ns"] / 1e9
    socks = [socket.create_connection((host, port)) for _ in range(40)]
    # Requests every 10 ms from 0.5 s to 0.9 s after the epoch; the stall is [0.6, 0.8).
    sent, answered = {}, {}
    with selectors.DefaultSelector() as selector:
        for i, s in enumerate(socks):
            at = epoch + 0.5 + 0.01 * i
            while time.monotonic() < at:
                for key, _ in selector.select(max(0.0, at - time.monotonic())):
                    answered[key.fileobj] = time.monotonic()
                    selector.unregister(key.fileobj)
            s.sendall(GET)
            sent[s] = time.monotonic() - epoch
            selector.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 2
        while len(answered) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(0.1):
                answered[key.fileobj] = time.monotonic()
                selector.unregister(key.fileobj)
    for s in socks:
        s.close()
    assert len(answered) == len(socks)
    for s in socks:
        at, done = sent[s], answered[s] - epoch
        if 0.605 <= at < 0.795:
            assert 0.798 <= done < 0.85, (at, done)
        elif at < 0.595 or at >= 0.805:
            assert done - at < 0.04, (at, done)


def test_load_latency_appears_above_the_threshold(target):
    host, port = target("--load-latency", "40ms@100rps", "--load-window", "500ms")
    conn = http.client.HTTPConnection(host, port, timeout=10)
    took = [timed_get(host, port, conn=conn)[2] for _ in range(56)]
    # 50 requests in a 0.5 s window are 100 req/s: the 51st exceeds the threshold.
    assert max(took[:48]) < 0.035
    assert min(took[51:]) >= 0.040
    time.sleep(0.6)
    assert timed_get(host, port, conn=conn)[2] < 0.035


def test_routes_override_by_longest_prefix(target):
    host, port = target("--route", "/slow", "latency=60ms", "--route", "/slow/err",
                        "error-rate=1,error-status=429", "--latency", "1ms")
    assert timed_get(host, port, "/fast")[0] == 200
    status, _, took = timed_get(host, port, "/slow/page")
    assert status == 200 and took >= 0.060
    # A route starts from the top-level flags, not from a shorter route.
    status, _, took = timed_get(host, port, "/slow/err/x")
    assert status == 429 and 0.001 <= took < 0.060


def test_pipelined_answers_keep_request_order(target):
    host, port = target("--route", "/slow", "latency=80ms")
    with socket.create_connection((host, port)) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /stats-free HTTP/1.1\r\nHost: t\r\n\r\n"
                  b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        begin, data = time.monotonic(), b""
        first = None
        while chunk := s.recv(65536):
            first = first or time.monotonic() - begin
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert first >= 0.075


def test_bad_request_gets_400_and_close(target):
    host, port = target()
    with socket.create_connection((host, port)) as s:
        s.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 400") and s.recv(65536) == b""


def sse_events(host, port, path, payload):
    """(seconds since the request, event payload) for each server-sent event, read raw."""
    body = json.dumps(payload).encode()
    with socket.create_connection((host, port)) as s:
        begin = time.monotonic()
        s.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        events, data = [], b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            assert chunk
            now = time.monotonic() - begin
            events += [(now, line[6:]) for line in chunk.split(b"\n") if line.startswith(b"data: ")]
            data += chunk
    return data, events


def test_sse_stream_timing_and_framing(target):
    host, port = target("--llm-ttft", "120ms", "--llm-itl", "30ms", "--llm-tokens", "6")
    data, events = sse_events(host, port, "/v1/chat/completions",
                              {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in data
    assert events[-1][1] == b"[DONE]"
    tokens = [(t, json.loads(p)) for t, p in events[:-1]]
    assert len(tokens) == 7 and tokens[-1][1]["choices"][0]["finish_reason"] == "length"
    assert tokens[0][1]["choices"][0]["delta"]["role"] == "assistant"
    # Token i is due at ttft + i * itl from the start of the answer (timers may fire up to a
    # millisecond early: libuv counts whole milliseconds from the start of a loop iteration).
    for i, (at, _) in enumerate(tokens[:6]):
        assert 0.120 + 0.030 * i - 0.002 <= at < 0.120 + 0.030 * i + 0.060, (i, at)
    # A real HTTP client decodes the chunked stream to exactly the events.
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/v1/completions", body=json.dumps({"stream": True, "max_tokens": 2}))
    text = conn.getresponse().read().decode()
    assert text.count("data: ") == 4 and '"text":"tok1 "' in text


def test_completion_json_answer(target):
    host, port = target("--llm-ttft", "10ms", "--llm-itl", "1ms", "--llm-tokens", "5")
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/v1/chat/completions",
                 body=json.dumps({"messages": [{"role": "user", "content": "one two three"}]}))
    answer = json.loads(conn.getresponse().read())
    assert answer["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    conn.request("POST", "/v1/completions", body=b"[not json")
    response = conn.getresponse()
    assert response.status == 400 and b"invalid_request_error" in response.read()


def test_workers_share_the_port(target):
    host, port = target("--workers", "2")
    pids = {stats(host, port)["pid"] for _ in range(24)}
    assert len(pids) == 2


def test_loadgate_cli_runs_the_target(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "loadgate.controller.cli", "target",
                             "--listen", "127.0.0.1:0", "--port-file", str(tmp_path / "p")],
                            stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on 127.0.0.1:")
        assert timed_get("127.0.0.1", int(line.rsplit(":", 1)[1]))[0] == 200
    finally:
        assert stop_target_process(proc) == 0


def test_invalid_flags_fail_cleanly():
    with pytest.raises(InfrastructureError):
        start_target_process(["--error-rate", "0.7", "--reset-rate", "0.7"], timeout=10)
    result = subprocess.run([sys.executable, "-m", "loadgate.native.target_cli", "--latency",
                             "gamma:1ms"], capture_output=True, timeout=30)
    assert result.returncode == ConfigError.exit_code and b"gamma" in result.stderr


def test_parsers():
    assert parse_duration("250us") == pytest.approx(250e-6)
    assert parse_duration("1.5s") == 1.5 and parse_duration("2m") == 120 and parse_duration(3) == 3
    assert LatencySpec.parse("5ms") == LatencySpec(LatencyKind.FIXED, 0.005)
    assert LatencySpec.parse("exp:2ms") == LatencySpec(LatencyKind.EXPONENTIAL, 0.002)
    assert LatencySpec.parse("lognormal:2ms:0.5") == LatencySpec(LatencyKind.LOGNORMAL, 0.002, 0.5)
    assert LoadLatency.parse("30%@200rps") == LoadLatency(200.0, extra_fraction=0.3)
    assert LoadLatency.parse("30ms@200") == LoadLatency(200.0, extra_s=0.03)
    slow = parse_behaviour("latency=uniform:1ms:2ms,error-rate=0.5", Behaviour(body_size=9))
    assert slow.error_rate == 0.5 and slow.body_size == 9
    assert slow.latency.kind is LatencyKind.UNIFORM
    config = TargetConfig(routes=(("/a", Behaviour()), ("/a/b", slow)))
    assert config.behaviour_for("/a/b/c") is slow and config.behaviour_for("/z") is config.behaviour
    for bad in ("5 parsecs", "-1s", "nan"):
        with pytest.raises(ConfigError):
            parse_duration(bad)
    for bad in (lambda: LatencySpec.parse("uniform:5ms:1ms"), lambda: LoadLatency.parse("30ms"),
                lambda: parse_behaviour("colour=red"), lambda: Behaviour(error_status=42),
                lambda: Behaviour(stall_every_s=0.1, stall_for_s=0.2),
                lambda: Behaviour(error_rate=1.5)):
        with pytest.raises(ConfigError):
            bad()


def test_latency_samplers_follow_their_distributions():
    rng = random.Random(1)
    draws = [LatencySpec.parse("lognormal:10ms:0.5").sampler(rng)() for _ in range(20000)]
    assert sorted(draws)[10000] == pytest.approx(0.010, rel=0.03)
    draws = [LatencySpec.parse("exponential:4ms").sampler(rng)() for _ in range(20000)]
    assert sum(draws) / len(draws) == pytest.approx(0.004, rel=0.03)
    draws = [LatencySpec.parse("uniform:1ms:3ms").sampler(rng)() for _ in range(2000)]
    assert 0.001 <= min(draws) < 0.0011 and 0.0029 < max(draws) <= 0.003


def test_open_target_serves_inside_a_running_loop():
    import asyncio

    import uvloop

    from loadgate.native.target import open_target
    from loadgate.native.target_protocol import TargetOutcome

    async def main():
        config = TargetConfig(behaviour=Behaviour(latency=LatencySpec.parse("20ms")))
        server, counters = await open_target(config, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        begin = time.monotonic()
        writer.write(GET)
        head = await reader.readuntil(b"\r\n\r\n")
        took = time.monotonic() - begin
        writer.close()
        server.close()
        return head, took, counters

    head, took, counters = uvloop.run(main())
    assert head.startswith(b"HTTP/1.1 200 OK") and took >= 0.019
    assert counters.outcomes[TargetOutcome.OK] == 1 and counters.requests == 1


def test_workers_die_with_a_killed_parent():
    import os
    import signal

    proc, host, port = start_target_process(["--workers", "2"])
    pids = {stats(host, port)["pid"] for _ in range(24)}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if os.path.exists(f"/proc/{pid}")
                and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "Z"}
        time.sleep(0.05)
    assert not pids
    stop_target_process(proc)


def test_nothing_is_answered_after_a_closing_answer(target):
    host, port = target()
    with socket.create_connection((host, port)) as s:
        s.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1") == 1
    assert stats(host, port)["requests"] == 2
