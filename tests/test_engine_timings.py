"""The engine-timing cache of `--precision auto`: keyed by what it measured, measured again when stale or noisy."""

from __future__ import annotations

import json
import os

import pytest
from onnx_fixtures import tiny_model

from pktnin.engine import precision as prec


@pytest.fixture
def engines(tmp_path, monkeypatch):
    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model(tmp_path / "tiny.onnx", ["a", "b"])
    calls: list[int] = []

    def fake_runs(runners, batch, seconds=0.0, repeats=3):
        calls.append(1)
        return {label: [100.0, 101.0, 99.0] for label in runners}

    monkeypatch.setattr(prec, "measure_runs", fake_runs)
    return [prec.Engine("onnxruntime", "fp32", str(model)), prec.Engine("onnxruntime", "fp32", str(model), 2)], calls


def test_timings_are_cached_under_the_cache_variable_and_keyed_by_what_they_measured(engines, tmp_path, monkeypatch):
    engines, calls = engines
    first = prec.timed(engines, 64, None)
    assert prec.timed(engines, 64, None) == first and len(calls) == 1
    [record] = (tmp_path / "cache" / "engine-timings").glob("*.json")
    saved = json.loads(record.read_text())
    assert saved["cpu"] == prec.cache.cpu_model() and set(saved["spread"]) == set(first)
    prec.timed(engines, 64, 2)  # other thread count: another key
    assert len(calls) == 2
    monkeypatch.setattr(prec.cache, "cpu_model", lambda: "another CPU")
    prec.timed(engines, 64, None)
    assert len(calls) == 3
    monkeypatch.setattr(prec, "backend_versions", lambda e: {"pktnin": "9.9", "onnxruntime": "9.9"})
    prec.timed(engines, 64, None)
    assert len(calls) == 4


def test_noisy_or_stale_timings_are_measured_again(engines, tmp_path):
    engines, calls = engines
    prec.timed(engines, 64, None)
    [record] = (tmp_path / "cache" / "engine-timings").glob("*.json")
    saved = json.loads(record.read_text())
    saved["spread"] = {k: 0.6 for k in saved["spread"]}  # taken while the machine was busy
    record.write_text(json.dumps(saved))
    prec.timed(engines, 64, None)
    assert len(calls) == 2
    old = prec.install_time(engines) - 3600
    os.utime(record, (old, old))  # recorded before pktnin or ONNX Runtime was (re)installed
    prec.timed(engines, 64, None)
    assert len(calls) == 3
    prec.timed(engines, 64, None)
    assert len(calls) == 3  # fresh and quiet: reused


class _Drifting:
    """An opened engine whose probabilities are another row's: a backend that computes wrongly on this CPU."""

    def __init__(self, runner):
        self.runner = runner

    def predict(self, rows):
        return self.runner.predict(rows)[::-1].copy()

    def close(self):
        self.runner.close()


def test_an_engine_that_differs_from_the_reference_on_this_machine_is_left_out(engines, tmp_path, monkeypatch):
    """auto runs every candidate on the check rows beside float32 on ONNX Runtime first; a float32 engine whose
    probabilities differ (a backend's kernels gone wrong on this CPU) is neither timed nor chosen, and the cached
    record says why."""
    engines, calls = engines
    opened = prec.open_engine

    def open_engine(e, max_batch=None, threads=None):
        runner = opened(e, max_batch=max_batch, threads=threads)
        return _Drifting(runner) if e.workers > 1 else runner

    monkeypatch.setattr(prec, "open_engine", open_engine)
    timings = prec.timed(engines, 64, None)
    assert set(timings) == {engines[0].label()}
    [record] = (tmp_path / "cache" / "engine-timings").glob("*.json")
    check = json.loads(record.read_text())["check"][engines[1].label()]
    assert check["passed"] is False and check["max_abs_diff"] > prec.FP32_MAX_DIFF
    monkeypatch.setattr(prec, "candidate_engines", lambda *a, **k: engines)
    choice = prec.choose_engine(engines[0].path, "onnxruntime", batch=64)
    assert choice.engine == engines[0] and engines[1].label() in choice.reason.split("left out here")[1]


def test_engines_that_agree_pass_the_check(engines, tmp_path):
    engines, _ = engines
    assert set(prec.timed(engines, 64, None)) == {e.label() for e in engines}
    [record] = (tmp_path / "cache" / "engine-timings").glob("*.json")
    check = json.loads(record.read_text())["check"][engines[1].label()]
    assert check["passed"] is True and check["agreement"] == 1.0 and check["max_abs_diff"] <= 1e-6


def test_openvino_float32_runs_only_when_asked_for(tmp_path):
    """auto never opens OpenVINO float32 (no faster than ONNX Runtime's, and once off float32's labels);
    --backend openvino still offers it."""
    pytest.importorskip("openvino")
    model = tiny_model(tmp_path / "tiny.onnx", ["a", "b"])
    under_auto = {(e.backend, e.precision) for e in prec.candidate_engines(model, "auto")}
    assert under_auto == {("onnxruntime", "fp32")}
    assert ("openvino", "fp32") in {(e.backend, e.precision) for e in prec.candidate_engines(model, "openvino")}
