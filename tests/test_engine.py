"""Engine: ONNX export, runners, open_runner, TensorRT guards, sidecar, fp16 conversion, content-hash cache."""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pktnin.engine.errors import EngineUnavailableError, ModelMismatchError
from pktnin.engine.model_file import ModelInfo
from pktnin.layout import LAYOUT_VERSION, ROW_LEN

CLASSES = ["chat", "email", "file", "stream", "voip"]
ALPHA = 0.25


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def gen_rows(n: int, seed: int = 0) -> np.ndarray:
    """Packet-like rows: a dense header, a payload of random length, zero padding after it."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, ROW_LEN), dtype=np.uint8)
    rows[:, :40] = rng.integers(0, 256, size=(n, 40))
    for i, length in enumerate(rng.integers(1, ROW_LEN - 40, size=n)):
        rows[i, 40 : 40 + length] = rng.integers(0, 256, size=length)
    return rows


@pytest.fixture(scope="module")
def keras_model():
    pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(7)
    inp = keras.Input((ROW_LEN,), dtype="float32")
    x = keras.layers.Reshape((ROW_LEN, 1))(inp)
    x = keras.layers.Conv1D(8, 5, strides=5, activation="relu")(x)
    x = keras.layers.MaxPooling1D(3, 3)(x)
    x = keras.layers.Conv1D(16, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def checkpoint(keras_model, tmp_path_factory):
    from pktnin.checkpoint import make_metadata, save_checkpoint

    meta = make_metadata("tiny", CLASSES, None, None, None, alpha=ALPHA)
    return save_checkpoint(keras_model, tmp_path_factory.mktemp("ckpt") / "tiny", meta)


@pytest.fixture(scope="module")
def onnx_models(checkpoint, tmp_path_factory):
    from pktnin.engine.export import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    return {d: export_onnx(checkpoint, out / f"tiny-{d}.onnx", input_dtype=d) for d in ("float32", "uint8")}


@pytest.fixture(scope="module")
def keras_probs(keras_model):
    rows = gen_rows(64)
    return rows, keras_model.predict(rows.astype(np.float32) / np.float32(255.0), verbose=0)


# -- export -------------------------------------------------------------------------------------------------
def test_export_round_trip(onnx_models, keras_probs):
    import onnx
    import onnxruntime as ort

    rows, expected = keras_probs
    for dtype, path in onnx_models.items():
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) <= 18
        assert [i.name for i in proto.graph.input] == ["row"] and [o.name for o in proto.graph.output] == ["probs"]
        props = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(props["pktnin.classes"]) == CLASSES
        assert float(props["pktnin.alpha"]) == ALPHA
        assert props["pktnin.layout_version"] == str(LAYOUT_VERSION)
        assert props["pktnin.preset"] == "tiny"
        assert props["pktnin.input_dtype"] == dtype
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = rows if dtype == "uint8" else rows.astype(np.float32) / np.float32(255.0)
        for n in (1, 37, 64):  # dynamic batch
            got = session.run(["probs"], {"row": x[:n]})[0]
            assert got.shape == (n, len(CLASSES))
            np.testing.assert_allclose(got, expected[:n], atol=1e-5, rtol=0)


def test_uint8_graph_equals_float32_graph(onnx_models):
    from pktnin.engine.ort_runner import OnnxRuntimeRunner

    rows = gen_rows(200, seed=3)
    with OnnxRuntimeRunner(onnx_models["uint8"]) as r8, OnnxRuntimeRunner(onnx_models["float32"]) as r32:
        p8 = r8.predict(rows)
        p32 = r32.predict(rows)  # uint8 rows, normalized on the host
        p32_direct = r32.predict(rows.astype(np.float32) / np.float32(255.0))
    np.testing.assert_allclose(p8, p32, atol=1e-6, rtol=0)
    np.testing.assert_allclose(p32, p32_direct, atol=1e-6, rtol=0)


def test_export_rejects_bad_arguments(checkpoint, tmp_path):
    from pktnin.engine.export import export_onnx

    with pytest.raises(ValueError, match="opset 19"):
        export_onnx(checkpoint, tmp_path / "m.onnx", opset=19)
    with pytest.raises(ValueError, match="input dtype"):
        export_onnx(checkpoint, tmp_path / "m.onnx", input_dtype="int16")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_onnx(checkpoint, tmp_path):
    from typer.testing import CliRunner

    from pktnin.cli import app
    from pktnin.engine.model_file import read_model_info

    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["export-onnx", str(checkpoint), "--out", str(out), "--input-dtype", "float32"])
    assert result.exit_code == 0, result.output
    info = read_model_info(out)
    assert info.classes == tuple(CLASSES) and info.input_dtype == "float32" and info.alpha == ALPHA
    missing = CliRunner().invoke(app, ["export-onnx", str(tmp_path / "nope.keras"), "--out", str(out)])
    assert missing.exit_code == 2 and "not found" in missing.output  # a path given by the user: usage


def test_export_real_nin_parallel(tmp_path):
    """The fused model with its custom layers (ByteSlice, AlphaFusion) from a checkpoint, small width."""
    pytest.importorskip("tensorflow")
    import keras

    from pktnin.checkpoint import make_metadata, save_checkpoint
    from pktnin.engine.export import export_onnx
    from pktnin.engine.fp16 import convert_onnx_to_fp16
    from pktnin.engine.model_file import read_model_info
    from pktnin.engine.ort_runner import OnnxRuntimeRunner
    from pktnin.trainer.models import build_model, build_parallel

    keras.utils.set_random_seed(3)
    classes = [f"c{i}" for i in range(6)]
    model = build_parallel(build_model("nin1", 6, width=1 / 16), build_model("nin2", 6, width=1 / 16), 0.3)
    ckpt = save_checkpoint(model, tmp_path / "par", make_metadata("nin_parallel", classes, None, None, None, alpha=0.3))
    rows = gen_rows(40, seed=5)
    expected = model.predict(rows.astype(np.float32) / np.float32(255.0), verbose=0)
    path = export_onnx(ckpt, tmp_path / "par.onnx", input_dtype="uint8")
    info = read_model_info(path)
    assert (info.preset, info.alpha, info.classes) == ("nin_parallel", 0.3, tuple(classes))
    p16 = convert_onnx_to_fp16(path, tmp_path / "par16.onnx")
    with OnnxRuntimeRunner(path) as runner, OnnxRuntimeRunner(p16) as half:
        got = runner.predict(rows)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        assert np.abs(half.predict(rows) - got).max() < 1e-2
    # the export keeps the convolution stacks 4-D: no Squeeze/Unsqueeze left between two layers of a branch
    import onnx

    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Squeeze") <= 4 and ops.count("Unsqueeze") <= 4  # at most one in and one out per branch


def test_simplify_conv1d_keeps_the_values_and_drops_the_reshapes(tmp_path):
    """tf2onnx's Conv1D/MaxPooling1D graph against the same graph kept 4-D with folded biases: same outputs."""
    pytest.importorskip("tensorflow")
    import keras
    import onnx

    from pktnin.engine.export import keras_to_onnx
    from pktnin.engine.graph_rewrite import simplify_conv1d
    from pktnin.trainer.models import build_model

    keras.utils.set_random_seed(4)
    model = build_model("nin_small_body", 5, width=1 / 8)
    proto = keras_to_onnx(model, "uint8")
    before = [node.op_type for node in proto.graph.node]
    folded, dropped = simplify_conv1d(proto)
    after = [node.op_type for node in proto.graph.node]
    assert dropped >= 8  # biases: folded here when the converter left them as Adds (it does for some graphs)
    assert after.count("Squeeze") == before.count("Squeeze") - dropped
    assert after.count("Add") == before.count("Add") - folded
    onnx.checker.check_model(proto, full_check=True)
    read = {name for node in proto.graph.node for name in node.input}
    assert all(t.name in read for t in proto.graph.initializer)
    plain, simple = tmp_path / "plain.onnx", tmp_path / "simple.onnx"
    onnx.save(keras_to_onnx(model, "uint8"), str(plain))
    onnx.save(proto, str(simple))
    rows = gen_rows(64, seed=9)
    import onnxruntime as ort

    def probs(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: rows})[0]

    np.testing.assert_allclose(probs(simple), probs(plain), atol=1e-6, rtol=0)


# -- runners ------------------------------------------------------------------------------------------------
def test_runner_interface_and_preallocated_output(onnx_models, keras_probs):
    from pktnin.engine.ort_runner import OnnxRuntimeRunner
    from pktnin.engine.protocols import DeviceRunner, ModelRunner

    rows, expected = keras_probs
    runner = OnnxRuntimeRunner(onnx_models["uint8"], intra_threads=1, max_batch=16)
    with pytest.raises(RuntimeError, match="load"):
        _ = runner.classes
    with runner:
        assert runner.classes == CLASSES and runner.alpha == ALPHA
        assert isinstance(runner, ModelRunner) and not isinstance(runner, DeviceRunner)
        assert runner.max_batch == 16 and runner.input_dtype == "uint8" and runner.backend == "onnxruntime"
        out = np.full((80, len(CLASSES)), -7.0, dtype=np.float32)
        got = runner.infer(rows[:50], out)  # 50 rows in chunks of 16
        assert got.shape == (50, len(CLASSES)) and np.shares_memory(got, out)
        np.testing.assert_allclose(out[:50], expected[:50], atol=1e-5, rtol=0)
        assert (out[50:] == -7.0).all()  # rows past n untouched
        with pytest.raises(ValueError, match="at least"):
            runner.infer(rows[:50], np.empty((10, len(CLASSES)), np.float32))
        with pytest.raises(ValueError, match="float32"):
            runner.infer(rows[:5], np.empty((5, len(CLASSES)), np.float64))
        with pytest.raises(ValueError, match="uint8 rows"):
            runner.infer(rows[:5].astype(np.float32), out)
        with pytest.raises(ValueError, match=r"\[n, 1500\]"):
            runner.infer(rows[:5, :100], out)
    assert not runner.loaded


def test_runner_refuses_foreign_models(tmp_path, onnx_models):
    import onnx

    from pktnin.engine.model_file import set_model_info
    from pktnin.engine.ort_runner import OnnxRuntimeRunner

    proto = onnx.load(str(onnx_models["uint8"]))
    set_model_info(proto, ModelInfo(tuple(CLASSES), None, LAYOUT_VERSION + 1, "tiny", "uint8"))
    onnx.save(proto, str(tmp_path / "future.onnx"))
    with pytest.raises(ModelMismatchError, match=f"layout v{LAYOUT_VERSION + 1}"):
        OnnxRuntimeRunner(tmp_path / "future.onnx").load()
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelMismatchError, match="not a pktnin model"):
        OnnxRuntimeRunner(tmp_path / "bare.onnx").load()


@pytest.mark.skipif(tensorrt_importable(), reason="TensorRT is installed here")
def test_open_runner_auto_picks_onnxruntime_and_tensorrt_fails_clearly(onnx_models, keras_probs, tmp_path, monkeypatch):
    from pktnin.engine.gpu_env import TENSORRT_MISSING
    from pktnin.engine.runners import open_runner, resolve_backend

    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    rows, expected = keras_probs
    assert resolve_backend("auto") == "onnxruntime"
    with open_runner(onnx_models["float32"]) as runner:
        assert runner.backend == "onnxruntime"
        np.testing.assert_allclose(runner.predict(rows), expected, atol=1e-5, rtol=0)
    with pytest.raises(EngineUnavailableError) as err:
        open_runner(onnx_models["float32"], backend="tensorrt")
    assert str(err.value) == TENSORRT_MISSING and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="tensorrt backend"):
        open_runner(tmp_path / "x.plan", backend="onnxruntime")
    with pytest.raises(ValueError, match="backend must be"):
        open_runner(onnx_models["float32"], backend="cuda")


@pytest.mark.skipif(tensorrt_importable(), reason="TensorRT is installed here")
def test_cli_build_engine_without_tensorrt(onnx_models, tmp_path):
    from typer.testing import CliRunner

    from pktnin.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["build-engine", str(onnx_models["float32"]), "--out", str(tmp_path / "m.plan")])
    assert result.exit_code == 2  # the backend asked for cannot run here, as in `score --backend tensorrt`
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: TensorRT is not installed (pip install 'pktnin[gpu]' on a machine with an NVIDIA GPU)"]
    assert not (tmp_path / "m.plan").exists()
    bad = runner.invoke(
        app,
        [
            "build-engine",
            str(onnx_models["float32"]),
            "--out",
            str(tmp_path / "m.plan"),
            "--max-batch",
            "64",
            "--opt-batch",
            "128",
        ],
    )
    assert bad.exit_code == 2 and "--opt-batch" in bad.output
    bad = runner.invoke(app, ["build-engine", str(onnx_models["float32"]), "--out", "m.plan", "--precision", "int4"])
    assert bad.exit_code == 2 and "precision" in bad.output


# -- TensorRT pieces that run without a GPU ------------------------------------------------------------------
def test_fp16_strategy_by_tensorrt_version():
    from pktnin.engine.fp16 import FP16_STRATEGY_FLAG, FP16_STRATEGY_ONNX, fp16_strategy

    assert fp16_strategy("10.8.0.43") == FP16_STRATEGY_FLAG
    assert fp16_strategy("11.0.0") == FP16_STRATEGY_ONNX
    with pytest.raises(ValueError):
        fp16_strategy("banana")


def test_sidecar_round_trip_and_mismatch(tmp_path):
    from pktnin.engine.sidecar import (
        check_plan_compatible,
        make_sidecar,
        read_sidecar,
        sidecar_model_info,
        sidecar_path,
        write_sidecar,
    )

    info = ModelInfo(tuple(CLASSES), ALPHA, LAYOUT_VERSION, "nin_parallel", "float32")
    plan = tmp_path / "model.plan"
    sidecar = make_sidecar(info, "fp16", "10.8.0", "NVIDIA H100 80GB HBM3", (9, 0), 4096, 1024, source="m.onnx")
    assert write_sidecar(plan, sidecar) == sidecar_path(plan) == tmp_path / "model.plan.json"
    loaded = read_sidecar(plan)
    assert loaded == sidecar
    assert sidecar_model_info(loaded, str(plan)) == info
    check_plan_compatible(loaded, "10.8.0", "NVIDIA H100 80GB HBM3", (9, 0), plan)  # same machine: fine
    with pytest.raises(ModelMismatchError) as err:
        check_plan_compatible(loaded, "10.9.0", "NVIDIA A100-SXM4-40GB", (8, 0), plan)
    message = str(err.value)
    assert "\n" not in message
    assert "TensorRT 10.8.0 (this machine has 10.9.0)" in message
    assert "NVIDIA H100 80GB HBM3 sm 9.0 (this machine has NVIDIA A100-SXM4-40GB sm 8.0)" in message
    assert "pktnin build-engine m.onnx" in message
    with pytest.raises(ModelMismatchError, match="TensorRT 10.8.0"):
        check_plan_compatible(loaded, "10.8.1", "NVIDIA H100 80GB HBM3", (9, 0), plan)
    with pytest.raises(ModelMismatchError, match="not found"):
        read_sidecar(tmp_path / "other.plan")
    sidecar_path(plan).write_text(json.dumps({"classes": CLASSES}))
    with pytest.raises(ModelMismatchError, match="missing"):
        read_sidecar(plan)


def test_fp16_onnx_matches_fp32(onnx_models, tmp_path):
    import onnx

    from pktnin.engine.fp16 import convert_onnx_to_fp16
    from pktnin.engine.ort_runner import OnnxRuntimeRunner

    rows = gen_rows(1000, seed=11)
    for dtype, path in onnx_models.items():
        p16 = convert_onnx_to_fp16(path, tmp_path / f"fp16-{dtype}.onnx")
        proto = onnx.load(str(p16))
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
        with OnnxRuntimeRunner(path) as r32, OnnxRuntimeRunner(p16) as r16:
            assert r16.input_dtype == dtype and r16.classes == CLASSES
            p32, p16_probs = r32.predict(rows), r16.predict(rows)
        assert np.abs(p32 - p16_probs).max() < 1e-2
        assert (p32.argmax(1) == p16_probs.argmax(1)).mean() >= 0.995


# -- cache ----------------------------------------------------------------------------------------------------
def test_checkpoint_export_is_cached_by_content(checkpoint, tmp_path, monkeypatch):
    import shutil

    from pktnin.engine import export

    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real_export = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: calls.append(a) or real_export(*a, **k))

    first = export.cached_onnx(checkpoint, input_dtype="uint8")
    again = export.cached_onnx(checkpoint, input_dtype="uint8")
    assert first == again and first.parent == tmp_path / "cache" / "onnx" and len(calls) == 1
    other_dtype = export.cached_onnx(checkpoint, input_dtype="float32")
    assert other_dtype != first and len(calls) == 2

    # A copy with the same bytes hits the cache; an edited metadata file does not.
    copy = tmp_path / "copy" / "tiny.keras"
    copy.parent.mkdir()
    shutil.copy(checkpoint, copy)
    shutil.copy(checkpoint.with_suffix(".json"), copy.with_suffix(".json"))
    assert export.cached_onnx(copy, input_dtype="uint8") == first and len(calls) == 2
    meta = json.loads(copy.with_suffix(".json").read_text())
    meta["alpha"] = 0.75
    copy.with_suffix(".json").write_text(json.dumps(meta))
    edited = export.cached_onnx(copy, input_dtype="uint8")
    assert edited != first and len(calls) == 3

    from pktnin.engine.runners import open_runner

    with open_runner(copy, backend="onnxruntime") as runner:  # .keras -> cached ONNX, no new export
        assert runner.alpha == 0.75 and runner.input_dtype == "uint8"
    assert len(calls) == 3


def test_plan_cache_key_depends_on_settings(onnx_models):
    from pktnin.engine.cache import plan_cache_path

    base = {"precision": "fp32", "max_batch": 4096, "tensorrt": "10.8.0", "gpu": "H100", "cc": [9, 0]}
    a = plan_cache_path(onnx_models["float32"], base)
    assert a == plan_cache_path(onnx_models["float32"], dict(base))
    assert a != plan_cache_path(onnx_models["float32"], {**base, "precision": "fp16"})
    assert a != plan_cache_path(onnx_models["float32"], {**base, "tensorrt": "10.9.0"})
    assert a != plan_cache_path(onnx_models["uint8"], base)
    assert a.suffix == ".plan"


# -- bench/gpu_check.py: what runs without a GPU --------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_capture(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from packetgen import ethernet, ipv4, tcp, udp
    from pcapgen import write_pcap

    packets = [
        ethernet(ipv4(tcp(sport=40000 + i, payload=bytes((i + j) % 256 for j in range(20 + 37 * i))))) for i in range(8)
    ]
    packets += [
        ethernet(ipv4(udp(dport=53, payload=b"q" * 30), proto=17)),  # skipped: dns
        ethernet(ipv4(udp(payload=b"v" * 300), proto=17)),
    ]
    folder = tmp_path_factory.mktemp("captures")
    write_pcap(folder / "small.pcap", packets)
    return folder


def test_gpu_check_cpu_parts(small_capture, tmp_path):
    gpu_check = load_gpu_check()
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", str(tmp_path), "--sections", "kernel"])  # kernel needs --captures
    args = gpu_check.parse_args(["--captures", str(small_capture), "--out", str(tmp_path), "--batches", "25,40"])
    assert args.sections == list(gpu_check.SECTIONS) and args.batches == [25, 40]

    # The replayed batch for the throughput section is the captures' records repeated.
    files = gpu_check.capture_files(small_capture)
    ((_, raw),) = list(gpu_check.iter_raw(files, chunk=64))
    once, _ = gpu_check.cpu_reference(raw, "paper")
    replayed, meta = gpu_check.cpu_reference(gpu_check.replay_raw(files, 25), "paper")
    assert raw.n == 10 and once.shape[0] == 9  # the DNS packet is skipped
    assert np.array_equal(replayed, np.concatenate([once, once, once[:5]]))  # 10 + 10 + 5 records
    assert meta["skip_counts"][0] == 23

    # The comparison notices a single wrong byte, a wrong float and a wrong metadata column.
    rows, cpu_meta = gpu_check.cpu_reference(raw, "paper")
    good = gpu_check.new_entry()
    gpu_check.compare_batch(good, rows, cpu_meta, rows.copy(), gpu_check.FLOAT_TABLE[rows], cpu_meta, cpu_meta)
    assert (good["row_mismatch"], good["float_mismatch"], good["meta_mismatch"]) == (0, 0, [])
    bad_rows, bad_float = rows.copy(), gpu_check.FLOAT_TABLE[rows]
    bad_rows[3, 700] ^= 1
    bad_float[5, 10] += 1e-7
    bad_meta = {**cpu_meta, "dst_port": cpu_meta["dst_port"] + 1}
    bad = gpu_check.new_entry()
    gpu_check.compare_batch(bad, rows, cpu_meta, bad_rows, bad_float, cpu_meta, bad_meta)
    assert (bad["row_mismatch"], bad["float_mismatch"], bad["meta_mismatch"]) == (1, 1, ["dst_port"])


def test_gpu_check_script_under_simulator(small_capture, tmp_path):
    import subprocess
    import sys

    script = ROOT / "bench" / "gpu_check.py"
    help_run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "--captures" in help_run.stdout
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run(
        [sys.executable, str(script), "--captures", str(small_capture), "--out", str(tmp_path), "--max-packets", "10"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["gpu"] == "numba CUDA simulator (not a GPU)"
    kernel = report["sections"]["kernel"]
    assert kernel["simulated"] and kernel["all_equal"] and kernel["records"] == 10 and kernel["rows"] == 9
    assert set(report["not_run"]) == {"throughput", "pycuda", "ort"}  # never timed in the simulator
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")


# -- TensorRT build and runner flow, against stand-ins for tensorrt and pycuda --------------------------------
# The stand-ins implement only the calls pktnin makes (names as in the TensorRT 10/11 and pycuda docs); "device
# memory" is host memory found by address and the "engine" runs the parsed ONNX with ONNX Runtime. They check
# pktnin's control flow (profile, flags, timing cache, sidecar, slots, chunking, normalization), not TensorRT.
# The enums pktnin uses, with TensorRT 10's names and values (NvInfer.h, NvInferRuntime.h): the assertions
# below spell the expected values on their own, so a wrong member, a missing shift or a comparison against the
# wrong mode fails. The TensorRT 11 stand-in keeps this numbering.
class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1
    PREFER_JIT_PYTHON_PLUGINS = 2
    PREFER_AOT_PYTHON_PLUGINS = 3


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class FakeGPU:
    def __init__(self, trt_version: str = "10.8.0"):
        import types

        self.memory: dict[int, np.ndarray] = {}
        self.builds: list[dict] = []
        gpu = self

        class DeviceAllocation:
            def __init__(self, nbytes):
                self.mem = np.zeros(nbytes, dtype=np.uint8)
                gpu.memory[self.mem.ctypes.data] = self.mem

            def __int__(self):
                return self.mem.ctypes.data

            def free(self):
                gpu.memory.pop(self.mem.ctypes.data, None)

        class Context:
            depth = 0

            def push(self):
                Context.depth += 1

            def pop(self):
                Context.depth -= 1

        class Device:
            def __init__(self, index):
                self.index = index

            @staticmethod
            def count():
                return 1

            def name(self):
                return "Fake GPU 80GB"

            def compute_capability(self):
                return (9, 0)

            def retain_primary_context(self):
                return Context()

        class Handle:
            handle = 1234

            def synchronize(self):
                pass

            def record(self, stream=None):
                pass

        def htod(dest, src, stream):
            dest.mem[: src.nbytes] = np.ascontiguousarray(src).reshape(-1).view(np.uint8)

        def dtoh(dest, src, stream):
            dest.reshape(-1).view(np.uint8)[:] = src.mem[: dest.nbytes]

        self.pycuda_driver = types.SimpleNamespace(
            init=lambda: None,
            Device=Device,
            mem_alloc=DeviceAllocation,
            Stream=Handle,
            Event=Handle,
            pagelocked_empty=lambda shape, dtype: np.zeros(shape, dtype),
            memcpy_htod_async=htod,
            memcpy_dtoh_async=dtoh,
        )
        self.pycuda = types.SimpleNamespace(driver=self.pycuda_driver)
        self.trt = self._tensorrt(trt_version)

    def _tensorrt(self, version):
        import types

        import onnxruntime as ort

        gpu = self
        dtypes = {"float32": np.float32, "uint8": np.uint8, "float16": np.float16}

        class Network:
            def __init__(self, flags):
                self.flags, self.onnx = flags, None

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse(self, data):
                self.network.onnx = bytes(data)
                return True

        class Cache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return self.data + b"+tuned"

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.pool, self.cache = [], [], None, None

            def set_memory_pool_limit(self, pool, size):
                self.pool = (pool, size)

            def set_flag(self, flag):
                self.flags.append(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile.shapes)

            def create_timing_cache(self, data):
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def set_shape(self, name, min, opt, max):
                self.shapes = {name: (tuple(min), tuple(opt), tuple(max))}

        class Builder:
            def __init__(self, logger):
                pass

            create_network = staticmethod(Network)
            create_builder_config = staticmethod(Config)
            create_optimization_profile = staticmethod(Profile)

            def build_serialized_network(self, network, config):
                gpu.builds.append({"flags": network.flags, "config": config, "onnx": network.onnx})
                shape = config.profiles[0]["row"]
                return json.dumps({"max": shape[2][0], "version": version}).encode() + b"\n" + network.onnx

        class Context:
            def __init__(self, engine):
                self.engine, self.shape, self.addr = engine, None, {}

            def set_input_shape(self, name, shape):
                self.shape = tuple(shape)

            def set_tensor_address(self, name, address):
                self.addr[name] = address

            def execute_async_v3(self, stream_handle):
                n = self.shape[0]
                in_dtype = np.dtype(self.engine.dtype("row"))
                x = gpu.memory[self.addr["row"]][: n * 1500 * in_dtype.itemsize].view(in_dtype).reshape(n, 1500)
                probs = self.engine.session.run(["probs"], {"row": x})[0]
                gpu.memory[self.addr["probs"]][: probs.nbytes] = probs.reshape(-1).view(np.uint8)
                return True

        class Engine:
            num_io_tensors = 2

            def __init__(self, header, onnx_bytes):
                self.header = header
                self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

            def get_tensor_name(self, i):
                return ["row", "probs"][i]

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if name == "row" else TensorIOMode.OUTPUT

            def dtype(self, name):
                io = self.session.get_inputs()[0] if name == "row" else self.session.get_outputs()[0]
                return {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(float16)": "float16"}[io.type]

            def get_tensor_dtype(self, name):
                return self.dtype(name)

            def get_tensor_profile_shape(self, name, index):
                return [(1, 1500), (1, 1500), (self.header["max"], 1500)]

            def create_execution_context(self):
                return Context(self)

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                header, onnx_bytes = data.split(b"\n", 1)
                header = json.loads(header)
                return Engine(header, onnx_bytes) if header["version"] == version else None

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

        return types.SimpleNamespace(
            __version__=version,
            Logger=Logger,
            Builder=Builder,
            OnnxParser=Parser,
            Runtime=Runtime,
            nptype=lambda name: dtypes[name],
            NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
            BuilderFlag=BuilderFlag,
            MemoryPoolType=MemoryPoolType,
            TensorIOMode=TensorIOMode,
        )

    def install(self, monkeypatch):
        import sys

        from pktnin.engine import gpu_env

        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        monkeypatch.setitem(sys.modules, "pycuda", self.pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", self.pycuda_driver)
        monkeypatch.setattr(gpu_env, "_primary", {})
        return self


def test_trt_build_and_run_flow_tensorrt10(onnx_models, keras_probs, tmp_path, monkeypatch):
    from pktnin.engine.protocols import DeviceRunner, ModelRunner
    from pktnin.engine.sidecar import read_sidecar
    from pktnin.engine.trt_build import build_engine
    from pktnin.engine.trt_runner import TensorRTRunner

    gpu = FakeGPU("10.8.0").install(monkeypatch)
    cache_file = tmp_path / "timing.cache"
    plan = build_engine(
        onnx_models["float32"],
        tmp_path / "m.plan",
        precision="fp16",
        max_batch=24,
        opt_batch=8,
        timing_cache=cache_file,
        workspace_mb=64,
    )
    build = gpu.builds[-1]
    flags = build["config"].flags
    assert [(f.name, int(f)) for f in flags] == [("FP16", 0)] and build["flags"] == 0  # TensorRT 10: builder flag
    assert build["config"].profiles == [{"row": ((1, 1500), (8, 1500), (24, 1500))}]
    pool, size = build["config"].pool
    assert (pool.name, int(pool), size) == ("WORKSPACE", 0, 64 << 20)
    assert build["onnx"] == onnx_models["float32"].read_bytes()
    assert cache_file.read_bytes() == b"+tuned"
    sidecar = read_sidecar(plan)
    assert (sidecar["tensorrt_version"], sidecar["gpu_name"], sidecar["compute_capability"]) == (
        "10.8.0",
        "Fake GPU 80GB",
        "9.0",
    )
    assert (sidecar["precision"], sidecar["max_batch"], sidecar["classes"]) == ("fp16", 24, CLASSES)

    rows, expected = keras_probs
    with TensorRTRunner(plan) as runner:
        assert runner.backend == "tensorrt" and runner.max_batch == 24 and runner.classes == CLASSES
        assert isinstance(runner, DeviceRunner) and isinstance(runner, ModelRunner)
        out = np.full((70, len(CLASSES)), -3.0, dtype=np.float32)
        got = runner.infer(rows[:61], out)  # 3 chunks over 2 slots, uint8 rows normalized into pinned memory
        np.testing.assert_allclose(got, expected[:61], atol=1e-5, rtol=0)
        assert (out[61:] == -3.0).all()
        # Rows already on the device (the prep kernel's path): written to the slot's input, then submitted.
        slot_input = gpu.memory[int(runner._slots[1].dev_in)]
        slot_input[: 5 * 1500 * 4] = (rows[:5].astype(np.float32) / np.float32(255.0)).reshape(-1).view(np.uint8)
        runner.submit(1, 5)
        with pytest.raises(RuntimeError, match="in flight"):
            runner.submit(1, 5)
        np.testing.assert_allclose(
            runner.collect(1, np.empty((5, len(CLASSES)), np.float32)), expected[:5], atol=1e-5, rtol=0
        )
    assert not gpu.memory  # every device buffer freed

    gpu.trt.__version__ = "10.9.0"  # a plan from another TensorRT
    with pytest.raises(ModelMismatchError, match="TensorRT 10.8.0 \\(this machine has 10.9.0\\)"):
        TensorRTRunner(plan).load()


def test_trt_build_fp16_tensorrt11_and_open_runner_cache(onnx_models, keras_probs, tmp_path, monkeypatch):
    import onnx

    from pktnin.engine.runners import open_runner, resolve_backend
    from pktnin.engine.trt_build import build_engine

    gpu = FakeGPU("11.1.0").install(monkeypatch)
    build_engine(onnx_models["float32"], tmp_path / "m16.plan", precision="fp16", max_batch=32)
    build = gpu.builds[-1]
    assert build["config"].flags == [] and build["flags"] == 0b10  # no precision flag; bit 1: STRONGLY_TYPED
    parsed = onnx.load_from_string(build["onnx"])  # the float16 graph with float32 inputs/outputs
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in parsed.graph.initializer)
    assert parsed.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    assert resolve_backend("auto") == "tensorrt"
    rows, expected = keras_probs
    for _ in range(2):
        with open_runner(onnx_models["float32"], max_batch=16) as runner:
            assert runner.backend == "tensorrt"
            np.testing.assert_allclose(runner.predict(rows), expected, atol=1e-5, rtol=0)
    assert len(gpu.builds) == 2  # the cached plan was built once and reused
    assert len(list((tmp_path / "cache" / "tensorrt").glob("*.plan"))) == 1
