"""In-process PyTorch models as load targets, on the CPU (tests/gpu/ has the CUDA check)."""
import json
import subprocess
import sys
import textwrap

import pytest

from loadgate.agent.inference.interval_log import IntervalLog
from loadgate.agent.inference.torch_target import (
    CallOutcome, TorchConfig, import_torch, parse_shape, run_torch,
)
from loadgate.native.errors import ConfigError, EngineError
from loadgate.native.hlog import read_hlog
from loadgate.native.schedule import ClosedLoop, ConstantRate

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

SHAPE = ((1, 3, 16, 16),)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def scripted_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    torch.jit.script(Tiny()).save(str(path))
    return str(path)


@pytest.fixture
def callables(tmp_path, monkeypatch):
    """A module of plain Python callables, importable as ``infer_callables``."""
    (tmp_path / "infer_callables.py").write_text(textwrap.dedent("""
        import time
        calls = []

        def counting(x):
            calls.append(tuple(x.shape))
            return x.sum()

        def failing(x):
            raise ValueError("bad input")

        def sleepy(x):
            time.sleep(0.02)
            return x
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "infer_callables", raising=False)
    return "infer_callables"


def _config(model, rate=100, duration=0.3, **options):
    options.setdefault("threads", 1)
    options.setdefault("input_shapes", SHAPE)
    return TorchConfig(model, ConstantRate(rate, duration), **options)


def test_torchscript_model_runs_as_a_target_on_cpu(scripted_model):
    m = run_torch(_config(scripted_model, batch=4))
    result = m.to_dict()
    assert m.outcomes == {CallOutcome.OK: 30}
    for name in ("latency_ms", "service_time_ms", "schedule_lag_ms"):
        assert m.histograms[name].total_count == 30
    # latency = service time + schedule lag, sample by sample
    assert m.histograms["latency_ms"].min >= m.histograms["service_time_ms"].min
    figures = result["figures"]
    assert figures["device"] == "cpu" and figures["batch"] == 4
    assert figures["samples_per_s"] == pytest.approx(4 * figures["requests_per_s"])
    assert figures["torch_version"].startswith("2.")
    assert "peak_gpu_memory_bytes" not in figures


def test_exported_program_runs(tmp_path):
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(Tiny(), (torch.randn(1, 3, 16, 16),)), str(path))
    m = run_torch(_config(str(path), duration=0.1))
    assert m.outcomes == {CallOutcome.OK: 10}


def test_warmup_runs_are_not_measured(callables):
    m = run_torch(_config(f"{callables}:counting", warmup=3, batch=2))
    calls = sys.modules[callables].calls
    assert len(calls) == 3 + 30
    assert set(calls) == {(2, 3, 16, 16)}
    assert m.histograms["latency_ms"].total_count == 30


def test_model_errors_are_outcomes_not_exceptions(callables):
    m = run_torch(_config(f"{callables}:failing", warmup=0, duration=0.05))
    assert m.outcomes == {CallOutcome.ERROR: 5}
    assert m.figures["first_error"] == "ValueError: bad input"
    assert m.histograms["latency_ms"].total_count == 0
    # A model that cannot get through its warm-up never starts the run.
    with pytest.raises(EngineError, match="warm-up: ValueError: bad input"):
        run_torch(_config(f"{callables}:failing", warmup=1, duration=0.05))


def test_a_slow_model_shows_queueing_as_latency(callables):
    # 20 ms per call at 100/s: each call starts later than intended by 10 ms more than the
    # one before, so the last of 30 waits about 290 ms while its service stays at 20 ms.
    m = run_torch(_config(f"{callables}:sleepy", warmup=0))
    assert m.outcomes == {CallOutcome.OK: 30}
    assert m.histograms["schedule_lag_ms"].max >= 250_000
    assert m.histograms["latency_ms"].max >= m.histograms["service_time_ms"].max + 250_000


def test_batches_still_queued_after_the_grace_time_are_not_run(callables):
    m = run_torch(_config(f"{callables}:sleepy", warmup=0, duration=0.5, grace_s=0.1))
    assert m.outcomes[CallOutcome.NOT_RUN] > 0
    assert sum(m.outcomes.values()) == 50


def test_interval_log_splits_the_run_by_time(scripted_model, tmp_path):
    path = tmp_path / "torch.hlog"
    with open(path, "w") as handle:
        m = run_torch(_config(scripted_model, rate=100, duration=0.5),
                      IntervalLog(handle, ("latency_ms", "service_time_ms", "schedule_lag_ms"),
                                  0.1))
    intervals = [(tag, hist) for tag, _, _, hist in read_hlog(str(path))]
    latency = [hist for tag, hist in intervals if tag == "latency_ms"]
    assert len(latency) >= 3
    merged = latency[0].copy()
    for hist in latency[1:]:
        merged.add(hist)
    assert merged == m.histograms["latency_ms"]
    assert {tag for tag, _ in intervals} == {"latency_ms", "service_time_ms", "schedule_lag_ms"}


def test_closed_loop_runs_back_to_back_with_think_time(callables):
    # 20 ms per call and 50 ms of thinking: at most 0.3 / 0.07 + 1 calls in 0.3 s.
    m = run_torch(TorchConfig(f"{callables}:sleepy", ClosedLoop(1, 0.3, think_time_s=0.05),
                              input_shapes=SHAPE, warmup=0))
    assert 2 <= m.outcomes[CallOutcome.OK] <= 0.3 / 0.07 + 1
    with pytest.raises(ConfigError):
        TorchConfig(f"{callables}:sleepy", ClosedLoop(2, 0.3))


def test_configuration_errors(scripted_model, tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            run_torch(_config(scripted_model, device="cuda"))
    with pytest.raises(ConfigError):
        run_torch(_config(scripted_model, device="tpu"))
    with pytest.raises(ConfigError):
        run_torch(_config(scripted_model, dtype="float99"))
    with pytest.raises(ConfigError):
        run_torch(_config(str(tmp_path / "missing.pt")))
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_bytes(b"not a zip file")
    with pytest.raises(ConfigError):
        run_torch(_config(str(not_a_model)))
    with pytest.raises(ConfigError):
        run_torch(_config("no_such_module_here:f"))
    with pytest.raises(ConfigError):
        _config(scripted_model, batch=0)
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    with pytest.raises(ConfigError):
        parse_shape("1,x")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match="loadgate\\[torch\\]"):
        import_torch()


def test_cli_runs_a_model_file(scripted_model, tmp_path):
    out = tmp_path / "torch.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadgate.controller.cli", "infer", "torch", scripted_model,
         "--rate", "50", "--duration", "0.4s", "--batch", "2", "--input-shape", "1,3,16,16",
         "--threads", "1", "--warmup", "2", "--gate", "latency_ms:p50<=10000",
         "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["kind"] == "torch" and result["verdict"] == "PASS"
    assert result["requests"]["completed"] == 20
    assert result["figures"]["batch"] == 2
    assert result["metrics"]["latency_ms"]["histogram"].startswith("HISTF")
