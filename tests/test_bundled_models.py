"""The models shipped inside the package: metadata, size, and their fp16 form (what TensorRT 11 would parse)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from pktnin.engine.bundled import MODELS_DIR
from pktnin.engine.fp16 import convert_onnx_to_fp16
from pktnin.engine.ort_runner import OnnxRuntimeRunner
from pktnin.layout import LAYOUT_VERSION
from pktnin.packets import find_captures, iter_packets

ROOT = Path(__file__).resolve().parents[1]
CORPUS = (ROOT.parent / "shared" / "corpus" / "pcaps").resolve()
BUNDLED = ("nin_parallel_small_port.onnx", "nin1_port.onnx")


def _meta(path: Path) -> dict:
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def test_bundled_models_fit_and_say_what_trained_them():
    sizes = [(MODELS_DIR / name).stat().st_size for name in BUNDLED]
    assert sum(sizes) < 30 * 2**20
    for name in BUNDLED:
        meta = _meta(MODELS_DIR / name)
        assert int(meta["pktnin.layout_version"]) == LAYOUT_VERSION
        assert meta["pktnin.input_dtype"] == "uint8"
        assert len(json.loads(meta["pktnin.classes"])) == 18
        provenance = json.loads(meta["pktnin.provenance"])
        assert len(provenance["git_commit"]) == 40
        assert provenance["data"]["split_mode"] == "by-file" and provenance["data"]["label_column"] == "task_category"
        if provenance.get("fit") == "train+val":  # a refit was selected on validation before it was refit
            assert provenance["validation_macro_f1"] is None
    default = _meta(MODELS_DIR / "nin_parallel_small_port.onnx")
    assert default["pktnin.preset"] == "nin_parallel_small_port" and 0.0 <= json.loads(default["pktnin.alpha"]) <= 1.0
    assert 0.0 < json.loads(default["pktnin.port_beta"]) < 1.0
    # two labeled sources, refit on train+val after the choice on validation
    assert len(json.loads(default["pktnin.provenance"])["data"]["labels_csv"]) == 2


def test_int8_companions_are_the_quantized_bundled_models():
    from pktnin.engine.precision import find_int8, recorded_agreement

    for name in BUNDLED:
        int8 = find_int8(MODELS_DIR / name)
        assert int8 is not None and int8.parent == MODELS_DIR
        quant = json.loads(_meta(int8)["pktnin.quantization"])
        assert quant["validation"]["split"] == "test"  # refit models: checked on rows they never trained on
        recorded = recorded_agreement(int8)
        for engine in ("onnxruntime:int8", "openvino:int8", "openvino:bf16"):
            sets = dict(recorded[engine])
            # Held out: each source's test captures, synthetic, oddly captured and unusual-port traffic.
            assert {"test:corpus", "test:corpus-ext", "synthetic", "odd", "services"} <= set(sets), engine
            assert all(0.95 <= v <= 1.0 for v in sets.values())


def test_metadata_is_read_without_the_onnx_package(monkeypatch):
    """A plain install has ONNX Runtime but not onnx: the model's metadata still reads (score needs it)."""
    import sys

    from pktnin.engine.catalog import model_provenance
    from pktnin.engine.model_file import read_props as onnx_metadata

    path = MODELS_DIR / BUNDLED[0]
    with_onnx = onnx_metadata(path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert onnx_metadata(path) == with_onnx and model_provenance(path)["data"]["split_mode"] == "by-file"


def _rows(limit: int) -> np.ndarray:
    """Real rows when the corpus is here (a spread of files), else the example captures' rows."""
    files = find_captures([CORPUS])[::7] if CORPUS.is_dir() else find_captures([ROOT / "examples"])
    rows = np.concatenate([b.rows for b in iter_packets(files)])
    return rows[np.random.default_rng(0).permutation(rows.shape[0])[:limit]]


@pytest.mark.parametrize("name", BUNDLED)
def test_fp16_form_of_bundled_model_agrees_with_fp32(name, tmp_path):
    rows = _rows(600)
    fp16 = convert_onnx_to_fp16(MODELS_DIR / name, tmp_path / "fp16.onnx")
    with OnnxRuntimeRunner(MODELS_DIR / name).load() as full, OnnxRuntimeRunner(fp16).load() as half:
        p32 = full.predict(rows)
        p16 = half.predict(rows)
    assert np.abs(p32 - p16).max() < 1e-2
    assert np.mean(p32.argmax(1) == p16.argmax(1)) >= 0.995


def _unseen_captures(folder: Path) -> list[Path]:
    """Captures of traffic no model or check here has seen: the test generators' mixed traffic (VLAN tags, IPv6,
    empty segments) and synthetic flows of seeds no check set uses, one of them cut to a short snap length."""
    from packetgen import mixed_traffic
    from pcapgen import write_pcap

    from pktnin.synth import synthetic_packets

    paths = [write_pcap(folder / f"mixed{seed}.pcap", mixed_traffic(seed, 400, max_payload=1400)) for seed in (7, 8)]
    frames = [(int(ts * 1e9), frame) for ts, frame in synthetic_packets(1200, seed=77)]
    paths.append(write_pcap(folder / "synth.pcap", frames))
    paths.append(write_pcap(folder / "snap.pcap", [(ts, f[:128]) for ts, f in frames[:600]], snaplen=128))
    return paths


@pytest.mark.parametrize("openvino", [False, True], ids=["without-openvino", "with-openvino"])
def test_auto_gives_float32_labels_on_unseen_captures(tmp_path, monkeypatch, openvino):
    """--precision auto agrees with --precision fp32 on >= 99.5% of packets, on an install with or without
    OpenVINO, and the engine it ran and that engine's agreement are in the Parquet metadata."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from pktnin.cli import app
    from pktnin.engine import precision

    if openvino and not precision.openvino_available():
        pytest.skip("OpenVINO is not installed")
    if not openvino:
        monkeypatch.setattr(precision, "openvino_available", lambda: False)
    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    captures = _unseen_captures(tmp_path)
    labels, engines = {}, {}
    for name in BUNDLED:
        for mode in ("auto", "fp32"):
            out = tmp_path / f"{name}-{mode}.parquet"
            result = CliRunner().invoke(app, ["score", *map(str, captures), "--model", str(MODELS_DIR / name),
                                              "--precision", mode, "--out", str(out), "--no-progress"])  # fmt: skip
            assert result.exit_code == 0, result.output
            assert "engine: " in result.output
            labels[mode] = pq.read_table(out).column("label").to_pylist()
            meta = pq.read_schema(out).metadata
            engine = engines[mode] = meta[b"pktnin.engine"].decode()
            assert engine and (mode == "auto" or engine.startswith("onnxruntime fp32"))
            if "openvino" in engine:
                assert openvino
        assert len(labels["auto"]) == len(labels["fp32"]) > 1000
        same = np.mean(np.array(labels["auto"]) == np.array(labels["fp32"]))
        assert same >= 0.995, (name, same, engines)
