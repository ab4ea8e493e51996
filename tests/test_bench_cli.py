"""``loadgate bench`` as a user runs it: a real process against ``loadgate target``, its
table, its versioned JSON and its HdrHistogram interval log."""
import json
import signal
import subprocess
import sys

import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

from loadgate.controller.cli import build_parser
from loadgate.native.bench_cli import config_from_args
from loadgate.native.errors import ConfigError
from loadgate.native.hlog import read_hlog
from loadgate.native.schedule import ArrivalModel

from test_engine_support import RecordingServer, target

SUMMARY_KEYS = {"count", "min", "mean", "p50", "p75", "p90", "p99", "p99.9", "p99.99", "max"}


def bench(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "loadgate.controller.cli", "bench", *args],
                          capture_output=True, text=True, timeout=timeout)


def parse(*argv):
    args = build_parser(["bench", *argv]).parse_args(["bench", *argv])
    return config_from_args(args)


def test_json_and_hlog_describe_the_run(tmp_path):
    out, hlog = tmp_path / "run.json", tmp_path / "run.hlog"
    with target() as url:
        done = bench(url + "/", "-R", "500", "-d", "1s", "-t", "1", "-c", "4",
                     "--json", str(out), "--hlog", str(hlog))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["schema_version"] == 1 and report["open_loop"] is True
    requests = report["requests"]
    assert requests["scheduled"] == 500 == requests["completed"]
    assert requests["scheduled"] == (requests["completed"] + sum(requests["errors"].values())
                                     + requests["timeouts"] + requests["not_sent"])
    assert report["rate"]["intended"] == 500.0 and report["rate"]["achieved"] == 500.0
    for key in ("latency", "service_time", "schedule_lag"):
        assert set(report[key]) == SUMMARY_KEYS and report[key]["count"] == 500
        assert report[key]["p50"] <= report[key]["p99"] <= report[key]["max"]
    assert report["latency"]["p50"] >= report["service_time"]["p50"] > 0
    assert set(report["generator"]) >= {"cpu_seconds", "workers", "max_lag_us", "late", "warning"}
    assert sum(i["sent"] for i in report["intervals"]) == 500
    for word in ("latency", "service time", "schedule lag", "p99.99", "intended 500.0/s"):
        assert word in done.stdout
    # the log: the hdrhistogram package reads every interval; ours splits them by tag
    reader = HistogramLogReader(str(hlog), HdrHistogram(1, 3_600_000_000, 3))
    total = 0
    while (interval := reader.get_next_interval_histogram()) is not None:
        total += interval.get_total_count()
    assert total == 3 * 500
    by_tag = {}
    for tag, _, _, hist in read_hlog(str(hlog)):
        by_tag[tag] = by_tag.get(tag, 0) + hist.total_count
    assert by_tag == {None: 500, "service_time": 500, "schedule_lag": 500}


def test_a_generator_that_falls_behind_says_so(tmp_path):
    out = tmp_path / "run.json"
    # One connection to a 50 ms server cannot carry 100 requests/s: sends go out late.
    with target("--latency", "50ms") as url:
        done = bench(url + "/", "-R", "100", "-d", "1s", "-t", "1", "-c", "1",
                     "--max-connections", "1", "--json", str(out), "-q")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["generator"]["warning"] is True
    assert report["requests"]["late"] > 50
    assert "WARNING" in done.stdout and "does NOT measure the target" in done.stdout
    # latency still counts from the intended instants: the queue shows, service time does not
    assert report["latency"]["p99"] > 5 * report["service_time"]["p50"]


def test_closed_loop_is_labelled(tmp_path):
    out = tmp_path / "run.json"
    with target() as url:
        done = bench(url + "/", "--closed", "-c", "2", "-d", "500ms", "-t", "1",
                     "--json", str(out), "-q")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["open_loop"] is False and report["mode"] == "closed-loop"
    assert report["rate"]["intended"] is None
    assert report["requests"]["scheduled"] == report["requests"]["completed"] > 0
    assert "closed-loop run" in done.stdout and "closed loop" in done.stdout


def test_flags_build_the_engine_config(tmp_path):
    body = tmp_path / "body.json"
    body.write_bytes(b'{"a": 1}')
    config = parse("https://127.0.0.1:9443/x?y=1", "-R", "2000", "-d", "500ms", "-c", "7",
                   "--arrival", "poisson", "--seed", "3", "-H", "X-Trace: on",
                   "--method", "post", "--body", f"@{body}", "--timeout", "250ms", "-k")
    assert config.schedule.model is ArrivalModel.POISSON and config.schedule.seed == 3
    assert config.schedule.duration_s == 0.5 and config.schedule.rate == 2000
    assert config.connections == 7 and config.timeout_s == 0.25
    target = config.targets[0]
    assert target.request.method == "POST" and target.request.body == b'{"a": 1}'
    assert target.request.headers == (("X-Trace", "on"),) and target.tls_verify is False
    assert parse("http://h/", "-R", "1", "-d", "1m").schedule.duration_s == 60.0


@pytest.mark.parametrize("argv", [
    ("http://127.0.0.1:1/", "-d", "1s"),                       # open loop without a rate
    ("http://127.0.0.1:1/", "-R", "10", "-d", "ten seconds"),
    ("ftp://127.0.0.1:1/", "-R", "10"),
    ("http://127.0.0.1:1/", "-R", "10", "-H", "no colon"),
    ("http://127.0.0.1:1/", "-R", "10", "--closed"),
])
def test_bad_flags_are_config_errors(argv):
    with pytest.raises(ConfigError):
        parse(*argv)


def test_bad_flags_exit_with_the_config_error_code():
    done = bench("http://127.0.0.1:1/", "-d", "1s")
    assert done.returncode == ConfigError.exit_code
    assert "-R/--rate" in done.stderr


def _default_sigint():
    # A background job (`cmd &` in a script, some CI runners) starts with SIGINT ignored, and
    # an ignored signal stays ignored across exec: the bench must get the default back to be
    # interruptible at all, as it would be in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_run_and_still_reports_every_request(tmp_path):
    out = tmp_path / "run.json"
    with target() as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadgate.controller.cli", "bench", url + "/", "-R", "200",
             "-d", "30s", "-t", "2", "--interval", "250ms", "--json", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=_default_sigint)
        try:
            assert proc.stdout.readline().startswith("[")   # the first interval is in
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, stderr
    requests = json.loads(out.read_text())["requests"]
    assert requests["scheduled"] == 6000
    assert requests["not_sent"] > 4000 and requests["completed"] > 0
    assert requests["scheduled"] == (requests["completed"] + sum(requests["errors"].values())
                                     + requests["timeouts"] + requests["not_sent"])
    assert "latency" in stdout


def test_a_reader_that_goes_away_stops_the_run_quietly(tmp_path):
    # `loadgate bench ... | head -1`: the pipe closes after the first line.  The run stops as
    # on Ctrl-C, still accounts for every request and writes its files, and exits without a
    # BrokenPipeError traceback.
    out, hlog = tmp_path / "run.json", tmp_path / "run.hlog"
    with target() as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadgate.controller.cli", "bench", url + "/", "-R", "200",
             "-d", "30s", "-t", "1", "--interval", "250ms", "--json", str(out),
             "--hlog", str(hlog)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().startswith("[")
            proc.stdout.close()
            stderr = proc.stderr.read()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    report = json.loads(out.read_text())
    requests = report["requests"]
    assert requests["scheduled"] == 6000 and requests["not_sent"] > 3000
    assert requests["scheduled"] == (requests["completed"] + sum(requests["errors"].values())
                                     + requests["timeouts"] + requests["not_sent"])
    logged = sum(hist.total_count for tag, _, _, hist in read_hlog(str(hlog)) if tag is None)
    assert logged == report["latency"]["count"] >= requests["completed"] > 0


def test_a_closed_stdout_at_the_summary_is_quiet_too():
    # -q prints only the summary at the end; its reader is gone before then.
    with target() as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadgate.controller.cli", "bench", url + "/", "-R", "100",
             "-d", "300ms", "-t", "1", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()
        try:
            stderr = proc.stderr.read()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_an_unwritable_output_is_a_config_error_before_any_load(tmp_path):
    missing = tmp_path / "missing"
    with RecordingServer() as server:
        for flag in ("--json", "--hlog"):
            done = bench(server.url + "/", "-R", "100", "-d", "300ms", "-t", "1", "-q",
                         flag, str(missing / "out"))
            assert done.returncode == ConfigError.exit_code, done.stderr
            assert "cannot write" in done.stderr
        assert server.requests == []
