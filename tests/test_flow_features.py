"""pktnin.flow_features: per-packet features of a flow's first K rows, checked against hand-computed values."""

import math

import numpy as np
import pytest
from packetgen import ethernet, ipv4, ipv6, tcp, udp
from pcapgen import write_pcap

from pktnin.flow_features import FLOW_FEATURES, first_k_index, gather_rows, pkt_feats, row_ip_length
from pktnin.layout import ROW_LEN
from pktnin.packets import iter_packets


def _read(path):
    rows, meta = [], []
    for batch in iter_packets([path], threads=1):
        rows.append(batch.rows.copy())
        meta.append({k: v.copy() for k, v in batch.meta.items()})
    return np.concatenate(rows), {k: np.concatenate([m[k] for m in meta]) for k in meta[0]}


def test_feature_names_fix_the_column_order():
    assert FLOW_FEATURES == ("present", "direction", "length", "log_iat")


def test_ip_length_of_ipv4_ipv6_and_zero_length_field():
    rows = np.zeros((4, ROW_LEN), dtype=np.uint8)
    rows[0, 0], rows[0, 2:4] = 0x45, (0x02, 0x1C)  # IPv4 total length 540
    rows[1, 0], rows[1, 4:6] = 0x60, (0x01, 0x00)  # IPv6 payload length 256 -> 296
    rows[2, 0], rows[2, 40:100] = 0x45, 7  # IPv4 length 0 (offload): 100 bytes held
    rows[3, 0], rows[3, 4:6], rows[3, 1499] = 0x60, (0, 0), 1  # IPv6 length 0, row full
    assert row_ip_length(rows).tolist() == [540, 296, 100, 1500]
    assert row_ip_length(rows.reshape(2, 2, ROW_LEN)).tolist() == [[540, 296], [100, 1500]]


def test_first_k_index_keeps_arrival_order_and_pads():
    flow = np.array([7, 3, 7, 7, 3, 9, 7])
    flows, index = first_k_index(flow, 3)
    assert flows.tolist() == [7, 3, 9]
    assert index.tolist() == [[0, 2, 3], [1, 4, -1], [5, -1, -1]]
    with pytest.raises(ValueError):
        first_k_index(flow, 0)


def test_gather_rows_zeroes_empty_slots():
    rows = np.arange(3, dtype=np.uint8)[:, None].repeat(ROW_LEN, axis=1) + 1
    out = gather_rows(rows, np.array([[2, 0], [1, -1]]))
    assert out.shape == (2, 2, ROW_LEN)
    assert out[:, :, 0].tolist() == [[3, 1], [2, 0]]
    assert not out[1, 1].any()


def test_features_by_hand_on_rows_and_metadata():
    rows = np.zeros((4, ROW_LEN), dtype=np.uint8)
    rows[:, 0] = 0x45
    rows[0, 2:4] = (0, 100)
    rows[1, 2:4] = (0x07, 0xD0)  # 2000: clipped to 1500
    rows[2, 2:4] = (0, 0)  # offload: row holds 40 + 20 bytes
    rows[2, 40:60] = 1
    rows[3, 2:4] = (0, 60)
    addr = np.zeros((4, 16), dtype=np.uint8)
    addr[:, :4] = [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 1], [10, 0, 0, 1]]
    port = np.array([1000, 443, 1000, 1001], dtype=np.uint16)  # row 3: same address, other port
    ts = np.array([0, 1_000, 1_000, 500], dtype=np.int64) * 1000 + 5  # the last steps back in time
    feats = pkt_feats(rows, ts, addr, port, np.array([[0, 1, 2, 3, -1], [1, -1, -1, -1, -1]]))
    assert feats.dtype == np.float32 and feats.shape == (2, 5, 4)
    expect = [
        [1, 1, 100 / 1500, 0],
        [1, 0, 1.0, math.log1p(1000) / 20],
        [1, 1, 60 / 1500, 0],
        [1, 0, 60 / 1500, 0],
        [0, 0, 0, 0],
    ]
    np.testing.assert_allclose(feats[0], expect, rtol=1e-6)
    np.testing.assert_allclose(feats[1], [[1, 1, 1.0, 0]] + [[0, 0, 0, 0]] * 4, rtol=1e-6)


def test_index_with_packet_after_empty_slot_is_refused():
    rows = np.zeros((2, ROW_LEN), dtype=np.uint8)
    with pytest.raises(ValueError, match="empty slot"):
        pkt_feats(rows, np.zeros(2), np.zeros((2, 16)), np.zeros(2), np.array([[0, -1, 1]]))


def test_features_from_captured_ipv4_and_ipv6_flows(tmp_path):
    c4, s4 = "192.0.2.1", "198.51.100.2"
    c6, s6 = "2001:db8::1", "2001:db8::2"
    packets = [
        (1_000_000_000, ethernet(ipv4(tcp(40000, 443, b"A" * 100), src=c4, dst=s4))),
        (1_000_500_000, ethernet(ipv6(udp(5000, 4500, b"B" * 30), next_header=17, src=c6, dst=s6))),
        (1_002_000_000, ethernet(ipv4(tcp(443, 40000, b"C" * 1000), src=s4, dst=c4))),
        (1_002_000_000, ethernet(ipv6(udp(4500, 5000, b"D" * 10), next_header=17, src=s6, dst=c6))),
        # segmentation offload: payload length 0, the row holds 40 header bytes + 50 payload bytes
        (1_003_000_000, ethernet(ipv6(udp(5000, 4500, b"E" * 50), next_header=17, src=c6, dst=s6, payload_length=0))),
    ]
    path = write_pcap(tmp_path / "f.pcap", packets)
    rows, meta = _read(path)
    assert len(rows) == 5
    flows, index = first_k_index(meta["flow_key"], 4)
    assert index.tolist() == [[0, 2, -1, -1], [1, 3, 4, -1]]
    feats = pkt_feats(rows, meta["ts_ns"], meta["src_addr"], meta["src_port"], index)
    np.testing.assert_allclose(feats[:, :, 0], [[1, 1, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_allclose(feats[:, :, 1], [[1, 0, 0, 0], [1, 0, 1, 0]])
    np.testing.assert_allclose(feats[0, :, 2], [140 / 1500, 1040 / 1500, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(feats[1, :, 2], [(40 + 38) / 1500, (40 + 18) / 1500, 90 / 1500, 0], rtol=1e-6)
    np.testing.assert_allclose(feats[0, :, 3], [0, math.log1p(2000) / 20, 0, 0], rtol=1e-6)
    iat = [0, math.log1p(1500) / 20, math.log1p(1000) / 20, 0]
    np.testing.assert_allclose(feats[1, :, 3], iat, rtol=1e-6)
