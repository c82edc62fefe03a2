"""The flow-context network: shapes, masking of empty slots, checkpoint round trip, and its ONE ONNX graph (two
inputs, port branch fused on the first row) against Keras."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from test_port_table import synthetic_rows  # noqa: E402

from pktnin.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from pktnin.engine.port_table import PortTable, fuse_port_onnx  # noqa: E402
from pktnin.flow_features import N_FLOW_FEATURES  # noqa: E402
from pktnin.layout import ROW_LEN  # noqa: E402
from pktnin.trainer.flow_model import (  # noqa: E402
    FlowBatches,
    build_flow_model,
    export_flow_onnx,
    predict_flows,
)

CLASSES = ["a", "b", "c"]
K = 3


def flows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (n, K, ROW_LEN), dtype=np.uint8)
    rows[:, :, :24] = synthetic_rows(rng.choice([80, 443, 65536 + 3478], n * K).tolist())[:, :24].reshape(n, K, 24)
    feats = rng.random((n, K, N_FLOW_FEATURES)).astype(np.float32)
    feats[:, :, 0] = 1.0
    feats[: n // 2, 2:] = 0.0  # half the flows have 2 packets: the last slot is empty
    rows[: n // 2, 2:] = 0
    return rows, feats


def test_flow_model_shapes_and_empty_slots():
    model = build_flow_model(len(CLASSES), K, width=0.05)
    rows, feats = flows(8)
    probs = predict_flows(model, rows, feats, batch=3)
    assert probs.shape == (8, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # what an empty slot holds does not change the decision
    noisy = rows.copy()
    noisy[:4, 2] = 7
    np.testing.assert_allclose(predict_flows(model, noisy, feats), probs, atol=1e-6)
    with pytest.raises(ValueError):
        build_flow_model(len(CLASSES), 0)


def test_flow_batches_scale_and_weights():
    rows, feats = flows(5)
    batches = FlowBatches(rows, feats, np.arange(5) % 3, np.ones(5, np.float32), batch=2, shuffle=True, seed=1)
    assert len(batches) == 3
    seen = []
    for i in range(len(batches)):
        (x_rows, x_feats), y, w = batches[i]
        assert x_rows.dtype == np.float32 and x_rows.max() <= 1.0 and x_rows.shape[1:] == (K, ROW_LEN)
        seen += y.tolist()
    assert sorted(seen) == sorted((np.arange(5) % 3).tolist())


def test_checkpoint_and_onnx_match_keras(tmp_path):
    import onnx
    import onnxruntime as ort

    model = build_flow_model(len(CLASSES), K, width=0.05)
    rows, feats = flows(40, seed=2)
    y = np.arange(40) % 3
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(FlowBatches(rows, feats, y, np.ones(40, np.float32), batch=16), epochs=1, verbose=0)
    save_checkpoint(model, tmp_path / "f.keras", {"preset": "nin_flow", "classes": CLASSES})
    loaded, _ = load_checkpoint(tmp_path / "f.keras")
    want = predict_flows(model, rows, feats)
    np.testing.assert_allclose(predict_flows(loaded, rows, feats), want, atol=1e-6)

    plain = export_flow_onnx(loaded, tmp_path / "f.onnx", CLASSES, {"fit": "test"})
    table = PortTable.fit(rows[:, 0], y, 3)
    fused = fuse_port_onnx(plain, table, 0.25, tmp_path / "fp.onnx", {"fit": "test"})
    for path, expect in ((plain, want), (fused, 0.25 * table.predict_proba(rows[:, 0]) + 0.75 * want)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["rows", "pkt_feats"]
        assert sess.get_inputs()[0].type == "tensor(uint8)" and sess.get_inputs()[0].shape == ["batch", K, ROW_LEN]
        got = sess.run(["probs"], {"rows": rows, "pkt_feats": feats})[0]
        np.testing.assert_allclose(got, expect, atol=1e-5)
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert props["pktnin.decide"] == "flow" and props["pktnin.flow_packets"] == str(K)
        assert json.loads(props["pktnin.classes"]) == CLASSES and props["pktnin.input_dtype"] == "uint8"
    assert props["pktnin.preset"] == "nin_flow_port"
