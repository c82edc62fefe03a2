"""The ONNX Runtime runner: clear one-line errors for broken model files, and no telemetry files on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import write_pcap
from typer.testing import CliRunner

from pktnin.cli import app
from pktnin.engine.errors import ModelMismatchError
from pktnin.engine.ort_runner import OnnxRuntimeRunner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", ["a", "b", "c"], seed=1)


def _broken(tmp_path: Path, good: Path, how: str) -> Path:
    data = good.read_bytes()
    path = tmp_path / f"{how}.onnx"
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    else:  # text
        path.write_text("this is not a model\n")
    return path


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage", "text"])
def test_broken_model_files_raise_one_clear_error(tmp_path, good_model, how):
    path = _broken(tmp_path, good_model, how)
    with pytest.raises(ModelMismatchError) as err:
        OnnxRuntimeRunner(path).load()
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert ("empty" in msg) if how == "empty" else ("corrupt or truncated" in msg)


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_score_with_a_broken_model_prints_one_line(tmp_path, good_model, how):
    path = _broken(tmp_path, good_model, how)
    cap = write_pcap(tmp_path / "c.pcap", mixed_traffic(0, 10))
    res = CliRunner().invoke(
        app, ["score", str(cap), "--model", str(path), "--out", str(tmp_path / "o.parquet"), "--no-progress"]
    )
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and f"error: {path}: " in text
    assert "Traceback" not in text
    assert not (tmp_path / "o.parquet").exists()


def test_no_telemetry_files_under_the_users_cache(tmp_path, good_model):
    """Loading and running a model leaves nothing under HOME or XDG_CACHE_HOME (ONNX Runtime's telemetry store)."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(cache), PYTHONPATH=str(REPO))
    code = textwrap.dedent(f"""
        import numpy as np
        from pktnin.engine.ort_runner import OnnxRuntimeRunner
        runner = OnnxRuntimeRunner({str(good_model)!r}).load()
        out = np.empty((4, 3), np.float32)
        runner.infer(np.zeros((4, 1500), np.uint8), out)
        import onnxruntime
        onnxruntime.InferenceSession({str(good_model)!r})  # later sessions too
        print("ran")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "ran" in proc.stdout, proc.stderr[-2000:]
    written = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written


def _int64_output_model(tmp_path: Path, good: Path, how: str) -> Path:
    """The tiny model with its output turned into int64: class indices (ArgMax) or probabilities cast to int64."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(good))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["p" if o == "probs" else o for o in node.output]
    if how == "argmax":
        graph.node.append(helper.make_node("ArgMax", ["p"], ["probs"], axis=1, keepdims=0))
        out = helper.make_tensor_value_info("probs", TensorProto.INT64, ["batch"])
    else:
        graph.node.append(helper.make_node("Cast", ["p"], ["probs"], to=TensorProto.INT64))
        out = helper.make_tensor_value_info("probs", TensorProto.INT64, ["batch", 3])
    del graph.output[:]
    graph.output.append(out)
    onnx.checker.check_model(model, full_check=True)  # a valid ONNX model
    path = tmp_path / f"{how}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("how", ["argmax", "cast"])
def test_a_model_whose_output_is_not_float_probabilities_is_refused_when_opened(tmp_path, good_model, how):
    path = _int64_output_model(tmp_path, good_model, how)
    with pytest.raises(ModelMismatchError, match="tensor\\(int64\\).*expected float32"):
        OnnxRuntimeRunner(path).load()
    from pktnin.engine.openvino_runner import OpenVinoRunner, openvino_available

    if openvino_available():
        with pytest.raises(ModelMismatchError, match="expected float32"):
            OpenVinoRunner(path).load()
    cap = write_pcap(tmp_path / "c.pcap", mixed_traffic(0, 10))
    for precision in ("auto", "fp32"):
        out = tmp_path / f"o-{precision}.parquet"
        res = CliRunner().invoke(
            app, ["score", str(cap), "--model", str(path), "--precision", precision, "--out", str(out), "--no-progress"]
        )
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "int64" in lines[0], res.output
        assert not out.exists()
