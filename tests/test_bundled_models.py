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
        assert all(0.9 <= v <= 1.0 for _, v in recorded_agreement(int8)["onnxruntime:int8"])


def test_metadata_is_read_without_the_onnx_package(monkeypatch):
    """A plain install has ONNX Runtime but not onnx: the model's metadata still reads (score needs it)."""
    import sys

    from pktnin.engine.catalog import model_provenance, onnx_metadata

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
