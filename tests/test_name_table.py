"""The server-name table: its fit, its fusion into a flow model's graph, and the runner that feeds it names."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("onnx")

from onnx_fixtures import tiny_flow_model  # noqa: E402
from packetgen import ethernet, ipv4, tcp  # noqa: E402
from pcapgen import write_pcap  # noqa: E402
from test_server_names import client_hello, rows_of  # noqa: E402

import pktnin  # noqa: E402
from pktnin.engine.errors import ModelMismatchError  # noqa: E402
from pktnin.engine.flow_runner import FlowModelRunner  # noqa: E402
from pktnin.engine.name_table import NameTable, fuse_names, fuse_names_onnx  # noqa: E402
from pktnin.flow_features import N_FLOW_FEATURES  # noqa: E402

CLASSES = ["Web", "VoIP", "Chat", "Video"]


def test_fit_counts_and_smooths_toward_the_training_frequencies():
    keys = ["a.com", None, "a.com", "b.org", "a.com"]
    labels = np.array([0, 1, 2, 1, 0])
    packets = np.array([10, 5, 2, 1, 4])
    table = NameTable.fit(keys, labels, packets, 4, smoothing=2.0, weighting="packets")
    assert table.names == ["a.com", "b.org"]
    prior = np.array([14, 6, 2, 0]) / 22
    np.testing.assert_allclose(table.probs[0], (np.array([14, 0, 2, 0]) + 2 * prior) / 18, rtol=1e-6)
    np.testing.assert_allclose(table.probs[1], (np.array([0, 1, 0, 0]) + 2 * prior) / 3, rtol=1e-6)
    flows = NameTable.fit(keys, labels, packets, 4, smoothing=0.0, weighting="flows")
    np.testing.assert_allclose(flows.probs[0], [2 / 3, 0, 1 / 3, 0], rtol=1e-6)
    probs, known = table.predict(["b.org", None, "c.net"])
    assert known.tolist() == [True, False, False] and (probs[1:] == 0).all()
    with pytest.raises(ValueError, match="weighting"):
        NameTable.fit(keys, labels, packets, 4, weighting="bytes")


def named_flows(k: int):
    """rows [5, k, 1500], pkt_feats: flows opening with a hello for a.com, b.org, an unknown name, no name, and
    an HTTP request for www.a.com."""
    rows = rows_of([
        ethernet(ipv4(tcp(40000, 443, client_hello("x.a.com")))),
        ethernet(ipv4(tcp(40001, 443, client_hello("b.org")))),
        ethernet(ipv4(tcp(40002, 443, client_hello("never.seen.net")))),
        ethernet(ipv4(tcp(40003, 443, b"\x17\x03\x03\x00\x10" + bytes(16)))),
        ethernet(ipv4(tcp(40004, 80, b"GET / HTTP/1.1\r\nHost: www.a.com\r\n\r\n"))),
    ])  # fmt: skip
    flows = np.zeros((5, k, rows.shape[1]), np.uint8)
    flows[:, 0] = rows
    feats = np.zeros((5, k, N_FLOW_FEATURES), np.float32)
    feats[:, 0] = [1.0, 1.0, 0.1, 0.0]
    return flows, feats


def test_fused_graph_equals_the_numpy_fusion(tmp_path):
    k = 2
    base = tiny_flow_model(tmp_path / "flow.onnx", CLASSES, k)
    table = NameTable.fit(["a.com", "a.com", "b.org"], np.array([3, 3, 1]), np.array([5, 5, 5]), len(CLASSES), 1.0)
    fused = fuse_names_onnx(base, table, 0.7, tmp_path / "named.onnx", {"fit": "test"})
    rows, feats = named_flows(k)
    plain = FlowModelRunner(base).infer_flows(rows, feats)
    runner = FlowModelRunner(fused)
    got = runner.infer_flows(rows, feats)
    table_probs, known = table.predict(["a.com", "b.org", None, None, "a.com"])
    assert known.tolist() == [True, True, False, False, True]
    np.testing.assert_allclose(got, fuse_names(plain, table_probs, known, 0.7), atol=1e-6)
    assert got.argmax(axis=1).tolist()[:2] == [3, 1]  # the table decides where it is sure
    np.testing.assert_array_equal(got[2:4], plain[2:4])  # no known name: the flow model's own probabilities
    props = pktnin.engine.model_file.read_props(fused)
    assert json.loads(props["pktnin.server_names"]) == ["a.com", "b.org"] and props["pktnin.name_weight"] == "0.7"
    assert props["pktnin.preset"] == "tiny_flow_names"
    with pytest.raises(ValueError, match="already"):
        fuse_names_onnx(fused, table, 0.5, tmp_path / "twice.onnx", {})
    with pytest.raises(ValueError, match="classes"):
        fuse_names_onnx(base, NameTable.fit(["a.com"], np.array([0]), np.array([1]), 3), 0.5, tmp_path / "c.onnx", {})


def test_runner_refuses_a_name_input_without_names(tmp_path):
    import onnx

    fused = fuse_names_onnx(
        tiny_flow_model(tmp_path / "flow.onnx", CLASSES, 1),
        NameTable.fit(["a.com"], np.array([0]), np.array([1]), len(CLASSES)),
        0.5,
        tmp_path / "named.onnx",
        {},
    )
    model = onnx.load(str(fused))
    kept = [p for p in model.metadata_props if p.key != "pktnin.server_names"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(ModelMismatchError, match="metadata"):
        FlowModelRunner(tmp_path / "broken.onnx")


def test_scoring_with_a_name_table_labels_the_named_flows(tmp_path):
    """Through the whole scorer: every packet of a flow whose hello names a.com gets the table's class when the
    table has all the weight; the other flows get the flow model's own decision."""
    k = 2
    base = tiny_flow_model(tmp_path / "flow.onnx", CLASSES, k)
    table = NameTable.fit(["a.com"], np.array([2]), np.array([1]), len(CLASSES), smoothing=0.0)
    fused = fuse_names_onnx(base, table, 1.0, tmp_path / "named.onnx", {"fit": "test"})
    packets, ts = [], 1_000_000_000
    for port, first in ((40000, client_hello("video.a.com")), (40001, client_hello("b.org"))):
        for i, payload in enumerate([first, b"\x17\x03\x03\x00\x20" + bytes(32), bytes(range(60))]):
            ends = [("192.0.2.1", port), ("198.51.100.2", 443)][:: 1 if i != 1 else -1]  # the reply comes back
            segment = tcp(ends[0][1], ends[1][1], payload)
            packets.append((ts, ethernet(ipv4(segment, src=ends[0][0], dst=ends[1][0]))))
            ts += 1_000_000
    capture = write_pcap(tmp_path / "named.pcap", packets)
    named = pktnin.score_to_files([capture], tmp_path / "named.parquet", fused)
    plain = pktnin.score_to_files([capture], tmp_path / "plain.parquet", base)
    assert named.packets == plain.packets == 6
    got = pq.read_table(tmp_path / "named.parquet").to_pydict()
    want = pq.read_table(tmp_path / "plain.parquet").to_pydict()
    assert got["label"][:3] == ["Chat"] * 3 and want["label"][:3] != ["Chat"] * 3
    assert got["label"][3:] == want["label"][3:]
    assert set(got["decided_by"]) == {"flow"}
