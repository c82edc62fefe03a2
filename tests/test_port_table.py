"""The port table (keys from the row bytes, smoothed class distributions, the majority baseline) and its fusion
into an ONNX graph (Eq. 3 with the port branch)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx_fixtures import reference_probs, tiny_model
from packetgen import ethernet, ipv4, ipv6, tcp, udp
from pcapgen import write_pcap

from pktnin.engine.port_table import PortTable, fuse_port_onnx, port_keys, predict_rows_in_chunks
from pktnin.layout import ROW_LEN
from pktnin.packets import iter_packets

CLASSES = ["a", "b", "c"]


def real_rows(tmp_path):
    frames = [
        ethernet(ipv4(tcp(sport=40000, dport=443, payload=b"x" * 10), src="10.0.0.1", dst="10.0.0.2")),
        ethernet(ipv4(tcp(sport=443, dport=40000, payload=b"y" * 10), src="10.0.0.2", dst="10.0.0.1")),
        ethernet(ipv4(udp(sport=5000, dport=3478, payload=b"z" * 10), proto=17, src="10.0.0.1", dst="10.0.0.3")),
        ethernet(ipv6(tcp(sport=40008, dport=8443, payload=b"w" * 10), src="2001:db8::1", dst="2001:db8::2")),
        ethernet(ipv6(udp(sport=123, dport=50000, payload=b"v" * 10), src="2001:db8::1", dst="2001:db8::2",
                      next_header=17)),
    ]  # fmt: skip
    write_pcap(tmp_path / "k.pcap", frames)
    return np.concatenate([b.rows for b in iter_packets([tmp_path / "k.pcap"])])


def synthetic_rows(keys: list[int]) -> np.ndarray:
    """IPv4 rows whose key is `key` (>= 65536: UDP), the lower port as the destination."""
    rows = np.zeros((len(keys), ROW_LEN), np.uint8)
    rows[:, 0] = 0x45
    for i, k in enumerate(keys):
        rows[i, 9] = 17 if k >= 65536 else 6
        port = k % 65536
        rows[i, 20:22] = [0xFF, 0xFF]
        rows[i, 22:24] = [port >> 8, port & 0xFF]
    return rows


def test_port_keys_from_real_rows(tmp_path):
    rows = real_rows(tmp_path)
    assert port_keys(rows).tolist() == [443, 443, 65536 + 3478, 8443, 65536 + 123]


def test_fit_smoothed_distribution_and_majority():
    # key 80: 3 of class a, 1 of class b; key 65536+53: 2 of class c; class sizes a 3, b 2, c 2
    keys = [80, 80, 80, 80, 65536 + 53, 65536 + 53, 9999]
    labels = np.array([0, 0, 0, 1, 2, 2, 1])
    table = PortTable.fit(synthetic_rows(keys), labels, 3, smoothing=2.0)
    assert table.keys.tolist() == [80, 9999, 65536 + 53]
    w = 7 / 3 / np.array([3, 2, 2])  # balanced weight per class
    counts80 = np.array([3, 1, 0]) * w
    expected80 = (counts80 + 2.0 / 3) / (counts80.sum() + 2.0)
    probs = table.predict_proba(synthetic_rows([80, 65536 + 80, 1]))
    np.testing.assert_allclose(probs[0], expected80, rtol=1e-6)
    np.testing.assert_allclose(probs[1:], 1 / 3)  # UDP 80 and port 1 were never seen
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert table.predict_majority(synthetic_rows([80, 65536 + 53, 9999, 7])).tolist() == [0, 2, 1, 0]
    frequencies = PortTable.fit(synthetic_rows(keys), labels, 3, smoothing=2.0, balanced=False)
    np.testing.assert_allclose(frequencies.predict_proba(synthetic_rows([80]))[0], (np.array([3, 1, 0]) + 2.0 / 3) / 6.0,
                               rtol=1e-6)  # fmt: skip
    index = table.dense_index()
    assert index.shape == (2 * 65536,) and index[80] == 0 and index[65536 + 53] == 2 and index[81] == 3
    rows = synthetic_rows(keys * 3)
    idx = np.array([0, 4, 7, 12, 20])
    np.testing.assert_array_equal(predict_rows_in_chunks(table, rows, idx, chunk=2), table.predict_proba(rows[idx]))


def test_fused_onnx_is_eq3(tmp_path):
    import onnxruntime as ort

    base = tiny_model(tmp_path / "tiny.onnx", CLASSES, seed=3)
    rng = np.random.default_rng(0)
    train = synthetic_rows(rng.choice([80, 443, 65536 + 53, 65536 + 3478], 200).tolist())
    table = PortTable.fit(train, rng.integers(0, 3, 200), 3)
    rows = np.vstack([train[:50], real_rows(tmp_path), rng.integers(0, 256, (20, ROW_LEN), dtype=np.uint8)])
    out = fuse_port_onnx(base, table, 0.3, tmp_path / "fused.onnx", {"data": "test"})
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(["probs"], {"row": rows})[0]
    want = 0.3 * table.predict_proba(rows) + 0.7 * reference_probs(base, rows)
    np.testing.assert_allclose(got, want, atol=1e-6)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["pktnin.preset"] == "tiny_port" and json.loads(props["pktnin.port_beta"]) == 0.3
    assert json.loads(props["pktnin.classes"]) == CLASSES

    with pytest.raises(ValueError, match="uint8"):
        fuse_port_onnx(tiny_model(tmp_path / "f.onnx", CLASSES, input_dtype="float32"), table, 0.3,
                       tmp_path / "x.onnx", {})  # fmt: skip
    with pytest.raises(ValueError, match="classes"):
        fuse_port_onnx(base, PortTable.fit(train, rng.integers(0, 2, 200), 2), 0.3, tmp_path / "x.onnx", {})
    with pytest.raises(ValueError, match="beta"):
        fuse_port_onnx(base, table, 1.5, tmp_path / "x.onnx", {})
    assert not (tmp_path / "x.onnx").exists()
