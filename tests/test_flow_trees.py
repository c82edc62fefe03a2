"""The flow-feature trees as one ONNX graph: its features equal the numpy ones, its probabilities scikit-learn's."""

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pktnin.flow_features import N_FLOW_FEATURES  # noqa: E402
from pktnin.layout import HEADER_LEN, ROW_LEN  # noqa: E402
from pktnin.trainer.flow_trees import (  # noqa: E402
    FIRST_PAYLOAD,
    PORT_BYTES,
    TCP_FLAGS_BYTE,
    TreeCandidate,
    blend_flow_graphs,
    direction_payload_features,
    feature_matrix,
    feature_rows,
    fit_gbt,
    flow_feature_count,
    flow_features,
    flow_trees_onnx,
    graph_features,
    ports,
    tree_probabilities,
)

CLASSES = ["a", "b", "c", "never-seen"]


def synthetic_flows(n: int, k: int, seed: int = 0):
    """Rows whose label shows in the port, the first packet's flags and a payload byte, plus noise everywhere."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, size=(n, k, ROW_LEN), dtype=np.uint8)
    labels = rng.integers(0, 3, size=n)
    rows[:, 0, PORT_BYTES[0] + 2 : PORT_BYTES[0] + 4] = np.array([[0, 80], [1, 187], [31, 144]], np.uint8)[labels]
    rows[np.arange(n), 0, TCP_FLAGS_BYTE] = np.where(labels == 1, 0x18, rows[:, 0, TCP_FLAGS_BYTE])
    rows[:, min(1, k - 1), HEADER_LEN + 3] = (labels * 60 + rng.integers(0, 40, size=n)).astype(np.uint8)
    feats = rng.random((n, k, N_FLOW_FEATURES), dtype=np.float32)
    feats[n // 2 :, k - 1] = 0.0  # short flows: empty last slot
    return rows, feats, labels


@pytest.mark.parametrize("k", [1, 3, 8])
def test_graph_features_equal_numpy(k):
    rows, feats, labels = synthetic_flows(200, k)
    x = flow_features(rows, feats, k)
    assert x.shape == (200, flow_feature_count(k))
    assert (x[:, -3:-1] == ports(rows[:, 0])).all() and (x[:, -1] == x[:, -3:-1].min(axis=1)).all()
    model = fit_gbt(x, labels, None, max_iter=3)
    proto = flow_trees_onnx(model, k, CLASSES, {"fit": "synthetic"})
    np.testing.assert_array_equal(graph_features(proto, rows, feats), x)


def test_graph_probabilities_equal_sklearn():
    k = 4
    rows, feats, labels = synthetic_flows(600, k)
    model = fit_gbt(flow_features(rows[:400], feats[:400], k), labels[:400], None, max_iter=20)
    proto = flow_trees_onnx(model, k, CLASSES, {"fit": "synthetic"})
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["pktnin.decide"] == "flow" and meta["pktnin.flow_packets"] == str(k)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["probs"], {"rows": rows[400:], "pkt_feats": feats[400:]})[0]
    expected = tree_probabilities(model, flow_features(rows[400:], feats[400:], k), len(CLASSES))
    assert got.shape == (200, len(CLASSES)) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert (got[:, 3] == 0).all() and (expected.argmax(axis=1) == labels[400:]).mean() > 0.9


def test_wrong_k_is_refused():
    rows, feats, labels = synthetic_flows(100, 2)
    model = fit_gbt(flow_features(rows, feats, 2), labels, None, max_iter=2)
    with pytest.raises(ValueError, match="K=3"):
        flow_trees_onnx(model, 3, CLASSES, {})


@pytest.mark.parametrize("features", ["first", "first+flow4", "dir2", "dir2+flow4"])
def test_feature_sets_in_the_graph_equal_numpy(features):
    """Every feature set's graph features equal feature_matrix's, headers of all kinds (random bytes, IP length
    fields of 0 that fall back to the bytes held) and flows shorter than K included."""
    k = feature_rows(features)
    rows, feats, labels = synthetic_flows(300, k)
    rows[::3, :, 2:6] = 0  # no IP length: the length is what the row holds
    rows[1::3, :, 0] = 0x45  # IPv4, 20-byte header
    rows[1::3, :, 9] = np.where(labels[1::3, None] == 0, 6, 17)  # TCP or UDP
    rows[2::3, :, 0] = 0x60  # IPv6
    rows[:, :, 200:] = 0
    feats[:, :, 1] = feats[:, :, 1] > 0.5  # directions
    feats[:, :, 0] = 1.0
    short = np.arange(300) % 4 == 0
    feats[short, k // 2 :] = 0.0  # empty slots: all zero, rows too
    rows[short, k // 2 :] = 0
    x = feature_matrix(features, rows, feats)
    model = TreeCandidate("t", features, "rf", trees=3, max_leaf_nodes=8).fit(x, labels, None, n_jobs=1)
    proto = flow_trees_onnx(model, k, CLASSES, {"fit": "synthetic"}, features)
    np.testing.assert_array_equal(graph_features(proto, rows, feats), x)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["probs"], {"rows": rows, "pkt_feats": feats})[0]
    np.testing.assert_allclose(got, tree_probabilities(model, x, len(CLASSES)), atol=1e-5)


def test_direction_features_pick_each_directions_packets():
    k = 8
    rows = np.zeros((1, k, ROW_LEN), np.uint8)
    rows[0, :, HEADER_LEN] = np.arange(1, k + 1)  # payload byte 0 says which packet it is
    feats = np.zeros((1, k, N_FLOW_FEATURES), np.float32)
    feats[0, :5, 0] = 1.0
    feats[0, :5, 1] = [1, 1, 0, 1, 0]  # forward: packets 1, 2, 4; backward: 3, 5
    x = direction_payload_features(rows, feats, 2)
    width = FIRST_PAYLOAD + 1
    assert [x[0, i * width] for i in range(4)] == [1, 2, 3, 5]


def test_blended_graph_equals_the_weighted_sum_and_takes_the_port(tmp_path):
    """Boosting and a first-packet forest in one graph, then the port table fused in: the numpy fusion's output."""
    from pktnin.engine.port_table import PortTable, fuse_port_onnx

    k, w, beta = 3, 0.3, 0.4
    rows, feats, labels = synthetic_flows(500, k, seed=4)
    gbt = fit_gbt(flow_features(rows[:300], feats[:300], k), labels[:300], None, max_iter=10)
    forest = TreeCandidate("rf", "first", "rf", 5, 1, 16).fit(feature_matrix("first", rows[:300], feats[:300]),
                                                              labels[:300], None, 1)  # fmt: skip
    blended = blend_flow_graphs(
        flow_trees_onnx(gbt, k, CLASSES, {"fit": "synthetic"}),
        flow_trees_onnx(forest, k, CLASSES, {"fit": "synthetic"}, "first"),
        w, "trees_flow3_rf", {"fit": "synthetic"},
    )  # fmt: skip
    meta = {p.key: p.value for p in blended.metadata_props}
    assert meta["pktnin.preset"] == "trees_flow3_rf" and meta["pktnin.flow_packets"] == str(k)
    session = ort.InferenceSession(blended.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["probs"], {"rows": rows[300:], "pkt_feats": feats[300:]})[0]
    y_gbt = tree_probabilities(gbt, flow_features(rows[300:], feats[300:], k), len(CLASSES))
    y_rf = tree_probabilities(forest, feature_matrix("first", rows[300:], feats[300:]), len(CLASSES))
    np.testing.assert_allclose(got, (1 - w) * y_gbt + w * y_rf, atol=1e-5)
    assert not np.allclose(y_gbt, y_rf, atol=1e-3)  # the two members differ: the weights are seen

    import onnx

    table = PortTable.fit(rows[:300, 0, :24], labels[:300], len(CLASSES), 1.0, False)
    onnx.save(blended, str(tmp_path / "blend.onnx"))
    fuse_port_onnx(tmp_path / "blend.onnx", table, beta, tmp_path / "fused.onnx", {"fit": "synthetic"})
    session = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
    fused = session.run(["probs"], {"rows": rows[300:], "pkt_feats": feats[300:]})[0]
    port = table.predict_proba(rows[300:, 0, :24])  # the flow's first row gives the key
    np.testing.assert_allclose(fused, beta * port + (1 - beta) * got, atol=1e-5)
