"""Per-packet features of a flow's first K rows: the one definition training and scoring share.

A flow model sees, for each of a flow's first K payload rows, the row itself and `pkt_feats` float32 [B, K, 4]:
- present: 1.0 for a real packet, 0.0 for an empty slot (flows with fewer than K rows; such slots are all zero);
- direction: 1.0 when the packet's (src_addr, src_port) equals that of the flow's first row, else 0.0;
- length: the IP length read from the row (IPv4 total length, IPv6 payload length + 40; where that field is 0,
  as with segmentation offload, the bytes the row holds), min(length, 1500) / 1500;
- log_iat: log1p(microseconds since the flow's previous row) / 20, 0.0 for the first row.
"""

from __future__ import annotations

import numpy as np

from pktnin.layout import (
    IPPROTO_TCP,
    IPV6_HEADER_LEN,
    NET_LEN,
    ROW_IPV4_PROTOCOL_BYTE,
    ROW_IPV6_NEXT_HEADER_BYTE,
    ROW_LEN,
    ROW_VERSION_BYTE,
    UDP_HEADER_LEN,
)

FLOW_FEATURES = ("present", "direction", "length", "log_iat")
N_FLOW_FEATURES = len(FLOW_FEATURES)
MAX_LENGTH = 1500  # lengths are clipped here, then scaled to [0, 1]
IAT_SCALE = 20.0  # log1p of a day in microseconds is about 25
TCP_OFFSET_BYTE = NET_LEN + 12  # row byte of the TCP data offset (high nibble)


def row_ip_length(rows: np.ndarray) -> np.ndarray:
    """IP length of each layout row (uint8 [..., 1500]) as int64 [...], from the length field the row keeps.

    Where the field is 0 (segmentation offload) the length is what the row holds: up to its last nonzero byte."""
    rows = np.asarray(rows, dtype=np.uint8)
    if rows.shape[-1] != ROW_LEN:
        raise ValueError(f"rows must have {ROW_LEN} bytes in their last axis, got shape {rows.shape}")
    version = rows[..., 0] >> 4
    b2 = rows[..., 2].astype(np.int64) << 8 | rows[..., 3]  # IPv4 total length
    b4 = rows[..., 4].astype(np.int64) << 8 | rows[..., 5]  # IPv6 payload length
    field = np.where(version == 6, np.where(b4 > 0, b4 + IPV6_HEADER_LEN, 0), b2)
    nonzero = rows != 0
    held = np.where(nonzero.any(axis=-1), ROW_LEN - np.argmax(nonzero[..., ::-1], axis=-1), 0)
    return np.where(field > 0, field, held).astype(np.int64)


def payload_length(rows: np.ndarray) -> np.ndarray:
    """Transport payload length per row [F, 1500] from the IP length and the header lengths the row keeps."""
    rows = np.asarray(rows)
    v4 = rows[:, ROW_VERSION_BYTE] >> 4 == 4
    ip_header = np.where(v4, (rows[:, ROW_VERSION_BYTE] & 0x0F).astype(np.int64) * 4, IPV6_HEADER_LEN)
    proto = np.where(v4, rows[:, ROW_IPV4_PROTOCOL_BYTE], rows[:, ROW_IPV6_NEXT_HEADER_BYTE])
    tcp_header = (rows[:, TCP_OFFSET_BYTE] >> 4).astype(np.int64) * 4
    transport = np.where(proto == IPPROTO_TCP, tcp_header, UDP_HEADER_LEN)
    return np.maximum(row_ip_length(rows) - ip_header - transport, 0)


def first_k_index(flow: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of each flow's first k packets, for packets given in arrival order.

    flow: [N] flow id of each packet. Returns (flows [B] in order of first appearance, index int64 [B, k] into
    the packets, -1 for an empty slot)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    flow = np.asarray(flow)
    flows, first, inverse = np.unique(flow, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # flows in order of their first packet
    rank = np.empty(len(flows), dtype=np.int64)
    rank[order] = np.arange(len(flows))
    b = rank[inverse.reshape(-1)]
    by_flow = np.argsort(b, kind="stable")  # packets grouped by flow, arrival order kept inside each
    starts = np.searchsorted(b[by_flow], np.arange(len(flows)))
    slot = np.arange(len(flow)) - np.repeat(starts, np.diff(np.append(starts, len(flow))))
    keep = slot < k
    index = np.full((len(flows), k), -1, dtype=np.int64)
    index[b[by_flow][keep], slot[keep]] = by_flow[keep]
    return flows[order], index


def gather_rows(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows uint8 [B, K, 1500] of the packets index [B, K] points to; empty slots (-1) are zero rows."""
    out = np.asarray(rows)[np.maximum(index, 0)]
    out[index < 0] = 0
    return out


def pkt_feats(
    rows: np.ndarray, ts_ns: np.ndarray, src_addr: np.ndarray, src_port: np.ndarray, index: np.ndarray
) -> np.ndarray:
    """pkt_feats float32 [B, K, 4] (FLOW_FEATURES) of the packets index [B, K] points to.

    rows uint8 [N, 1500], ts_ns int64 [N], src_addr uint8 [N, 16], src_port uint16 [N]: per packet, as the
    layout and pktnin.schema give them. Each line of index holds one flow's packets in arrival order with its
    empty slots (-1) at the end."""
    index = np.asarray(index, dtype=np.int64)
    if index.ndim != 2:
        raise ValueError(f"index must be [flows, K], got shape {index.shape}")
    present = index >= 0
    if (present[:, 1:] & ~present[:, :-1]).any():
        raise ValueError("index has a packet after an empty slot; empty slots go at the end of each flow")
    at = np.maximum(index, 0)
    rows = np.asarray(rows)
    ts = np.asarray(ts_ns, dtype=np.int64)[at]
    addr = np.asarray(src_addr)[at]
    port = np.asarray(src_port)[at]
    forward = (addr == addr[:, :1]).all(axis=-1) & (port == port[:, :1])
    length = np.minimum(row_ip_length(rows[at]), MAX_LENGTH) / MAX_LENGTH
    gap_us = np.zeros(index.shape, dtype=np.float64)
    gap_us[:, 1:] = np.maximum(ts[:, 1:] - ts[:, :-1], 0) / 1000.0  # clock steps back count as no gap
    log_iat = np.log1p(gap_us) / IAT_SCALE
    feats = np.stack([np.ones(index.shape), forward, length, log_iat], axis=-1).astype(np.float32)
    feats[~present] = 0.0
    return feats
