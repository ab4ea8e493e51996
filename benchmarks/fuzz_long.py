"""Long fuzzing runs, beyond the fixed budgets of tests/test_fuzz_*.py.

    python benchmarks/fuzz_long.py histogram --seconds 600     # atheris when installed
    python benchmarks/fuzz_long.py plan --seconds 600
    python benchmarks/fuzz_long.py report --seconds 600
    python benchmarks/fuzz_long.py http --examples 200          # hypothesis, real engine runs
    python benchmarks/fuzz_long.py histogram --engine hypothesis --examples 100000

Targets and what counts as a failure (anything else raised, a crash, or libFuzzer's RSS limit):
- histogram: any bytes to Histogram.decode_binary / Histogram.decode.  Allowed: EncodingError.
  A payload that decodes must re-encode to a histogram equal to itself.
- plan: any text to parse_plan.  Allowed: PlanError whose every issue has a line in the text.
- report: any bytes as an IntervalReport through the controller's first gate (AgentStream)
  and, if accepted, the histogram decoding the merge does.  Allowed: DecodeError, a
  Rejection, EncodingError/HistogramError from a histogram.
- http: tests/test_fuzz_http.py's strategy with a larger budget (each example is a real
  engine run against a real server on loopback, so atheris's per-input model does not fit).

With atheris (coverage-guided, libFuzzer), seeds come from real encodings and the example
plans; without it, hypothesis draws bytes.  Prints executions, time and the verdict.
"""
import argparse
import glob
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

try:
    import atheris
except ImportError:
    atheris = None


def _imports():
    """The modules under test (instrumented for coverage when atheris is used)."""
    from google.protobuf.message import DecodeError

    from loadgate.controller.merge import Metric
    from loadgate.controller.plan import PlanError, parse_plan
    from loadgate.controller.runner_reports import AgentStream, HistogramLayout, Rejection
    from loadgate.native._hdr import Histogram
    from loadgate.native.errors import EncodingError, HistogramError
    from loadgate.proto.loadgate.v1 import common_pb2
    return dict(DecodeError=DecodeError, Metric=Metric, PlanError=PlanError,
                parse_plan=parse_plan, AgentStream=AgentStream,
                HistogramLayout=HistogramLayout, Rejection=Rejection, Histogram=Histogram,
                EncodingError=EncodingError, HistogramError=HistogramError,
                common_pb2=common_pb2)


def checks(m):
    """One-input check functions per target; each raises AssertionError on a real failure."""
    Histogram = m["Histogram"]

    def histogram(data):
        for decode in (Histogram.decode_binary, Histogram.decode):
            try:
                decoded = decode(data)
            except m["EncodingError"]:
                continue
            again = Histogram.decode_binary(decoded.encode_binary())
            assert again == decoded, "a decoded histogram does not survive re-encoding"

    def plan(data):
        text = data.decode("utf-8", errors="replace")
        try:
            m["parse_plan"](text, "fuzz.yaml")
        except m["PlanError"] as exc:
            # YAML breaks lines at \r, NEL, LS and PS too; splitlines() breaks at all of them.
            lines = len(text.splitlines()) + 1
            assert exc.issues and all(1 <= i.line <= lines for i in exc.issues), exc.issues

    def report(data):
        try:
            parsed = m["common_pb2"].IntervalReport.FromString(data)
        except m["DecodeError"]:
            return
        stream = m["AgentStream"](parsed.run_id, parsed.agent_id, ["main"],
                                  m["HistogramLayout"]())
        result = stream.check(parsed)
        if isinstance(result, m["Rejection"]):
            assert result.reason and result.message
            return
        for share in result.targets.values():
            for metric in m["Metric"]:
                try:
                    Histogram.decode_binary(share.encoded[metric])
                except m["HistogramError"]:
                    pass

    return {"histogram": histogram, "plan": plan, "report": report}


def seeds(target, m):
    """Seed inputs: real encodings, the example plans, a real report."""
    if target == "histogram":
        h = m["Histogram"]()
        for v in (1, 7, 1000, 123456, 3_600_000_000):
            h.record(v, 3)
        return [h.encode_binary(), h.encode(), m["Histogram"]().encode_binary()]
    if target == "plan":
        out = []
        for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml"))):
            with open(path, "rb") as f:
                out.append(f.read())
        return out
    h = m["Histogram"]()
    h.record(1500)
    pb = m["common_pb2"]
    report = pb.IntervalReport(run_id="r", agent_id="a", seq=1, interval_index=0,
                               start_unix_ns=1, end_unix_ns=2, intended=1, sent=1)
    report.targets.add(name="main", latency=h.encode_binary(), service_time=h.encode_binary(),
                       schedule_lag=h.encode_binary(),
                       outcomes=[pb.OutcomeCount(outcome=pb.OUTCOME_OK_2XX, count=1)])
    return [report.SerializeToString()]


def run_atheris(target, seconds, rss_limit_mb):
    with atheris.instrument_imports():
        modules = _imports()
    check = checks(modules)[target]
    corpus = tempfile.mkdtemp(prefix=f"fuzz-{target}-")
    for i, seed in enumerate(seeds(target, modules)):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(seed)
    print(f"atheris {atheris.__version__ if hasattr(atheris, '__version__') else ''}: "
          f"{target} for {seconds} s, corpus {corpus}", flush=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", f"-rss_limit_mb={rss_limit_mb}",
                   "-print_final_stats=1", corpus], check)
    atheris.Fuzz()  # exits the process with libFuzzer's status


def run_hypothesis(target, examples, seconds):
    from hypothesis import HealthCheck, given, settings, strategies as st

    if target == "http":
        from test_fuzz_http import ANSWERS, REQUESTS
        import test_fuzz_http
        inner = test_fuzz_http.test_fuzzed_answers_are_each_counted_once_and_never_hang_the_engine
        strategy = st.lists(ANSWERS, min_size=REQUESTS, max_size=REQUESTS)
        check = inner.hypothesis.inner_test
    else:
        modules = _imports()
        check = checks(modules)[target]
        strategy = st.one_of(st.binary(max_size=4096),
                             st.sampled_from(seeds(target, modules)).flatmap(_mutations))
    done = {"count": 0}

    # Batches, each with a fresh random seed, until the budget is spent: hypothesis has no
    # time limit of its own.
    @settings(max_examples=min(examples, 200), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def fuzz(data):
        done["count"] += 1
        check(data)

    began = time.monotonic()
    while time.monotonic() - began < seconds and done["count"] < examples:
        fuzz()
    elapsed = time.monotonic() - began
    print(f"hypothesis: {target}: {done['count']} inputs in {elapsed:.1f} s, no failure")


def _mutations(seed):
    from hypothesis import strategies as st

    @st.composite
    def mutate(draw):
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 8))):
            if not data:
                break
            position = draw(st.integers(0, len(data) - 1))
            action = draw(st.sampled_from(["flip", "cut", "insert"]))
            if action == "flip":
                data[position] = draw(st.integers(0, 255))
            elif action == "cut":
                del data[position:position + draw(st.integers(1, 16))]
            else:
                data[position:position] = draw(st.binary(min_size=1, max_size=16))
        return bytes(data)
    return mutate()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=["histogram", "plan", "report", "http"])
    parser.add_argument("--engine", choices=["atheris", "hypothesis"],
                        default="atheris" if atheris else "hypothesis")
    parser.add_argument("--seconds", type=float, default=300.0, help="time budget")
    parser.add_argument("--examples", type=int, default=1_000_000,
                        help="hypothesis: at most this many inputs")
    parser.add_argument("--rss-limit-mb", type=int, default=2048,
                        help="atheris: an input that grows memory past this is a failure")
    args = parser.parse_args(argv)
    if args.engine == "atheris" and (atheris is None or args.target == "http"):
        why = "not installed" if atheris is None else "http needs whole engine runs"
        print(f"atheris: {why}; using hypothesis", flush=True)
        args.engine = "hypothesis"
    if args.engine == "atheris":
        run_atheris(args.target, int(args.seconds), args.rss_limit_mb)
    else:
        run_hypothesis(args.target, args.examples, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
