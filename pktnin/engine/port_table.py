"""The port cue as a model: a table from a packet's lower port (and TCP/UDP) to a class distribution, fit on the
training rows, and its fusion with a network's probabilities like the paper's Eq. 3:

    y = beta * y_port + (1 - beta) * y_net

beta is chosen on the validation rows (fusion.search_alpha). The table also gives the plain port-lookup baseline
(the majority class of the training packets per key). `fuse_port_onnx` appends the lookup and the fusion to an
exported model's ONNX graph: the key is computed from the uint8 row (IP version nibble, protocol byte, ports at
row bytes 20..23), a Gather over a dense index of the 2 x 65536 keys picks a row of the table, so the fused model
stays one graph that every runner scores as before (engine.output_branch). numpy only, except fuse_port_onnx (onnx,
the `train` extra).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pktnin.engine.model_file import (
    CLASSES_KEY,
    DECIDE_KEY,
    FLOW_INPUTS,
    INPUT_DTYPE_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    PORT_BETA_KEY,
    PORT_PROVENANCE_KEY,
    PRESET_KEY,
)
from pktnin.engine.output_branch import OutputBranch
from pktnin.layout import ROW_IPV6_NEXT_HEADER_BYTE

N_KEYS = 2 * 65536  # (UDP or not) x lower port
_IPV4_PROTOCOL_BYTE = 9
_UDP = 17
_PORT_BYTES = (20, 21, 22, 23)  # source port, destination port (big-endian) at the start of the transport segment
PORT_SUFFIX = "_port"  # preset of a fused model: <network preset>_port
PORT_NODE_PREFIX = "port/"  # names of the nodes and constants fuse_port_onnx adds
FLOW_ROWS_INPUT, FLOW_FEATS_INPUT = FLOW_INPUTS  # a flow model's rows [batch, K, 1500] and pkt_feats [batch, K, 4]


def port_keys(rows: np.ndarray) -> np.ndarray:
    """Key per row: 65536 * (transport is UDP) + min(source port, destination port), from the row bytes alone.
    Reads only the first 24 bytes of each row."""
    head = np.asarray(rows[:, :24]).astype(np.int64)
    version = head[:, 0] >> 4
    proto = np.where(version == 4, head[:, _IPV4_PROTOCOL_BYTE], head[:, ROW_IPV6_NEXT_HEADER_BYTE])
    a, b, c, d = (head[:, i] for i in _PORT_BYTES)
    return (proto == _UDP).astype(np.int64) * 65536 + np.minimum(a << 8 | b, c << 8 | d)


@dataclass
class PortTable:
    """keys: sorted distinct keys of the training rows; probs [len(keys) + 1, C] float32: the smoothed class
    distribution per key (classes weighted equally unless `balanced` is False), the last row (uniform) for keys
    never seen; majority [len(keys)]: the most common class of the key's training packets; fallback: the most
    common training class (the port-lookup baseline's answer for an unseen key)."""

    keys: np.ndarray
    probs: np.ndarray
    majority: np.ndarray
    fallback: int
    smoothing: float
    balanced: bool = True

    @classmethod
    def fit(
        cls, rows: np.ndarray, labels: np.ndarray, num_classes: int, smoothing: float = 10.0, balanced: bool = True
    ) -> PortTable:
        """Count the training rows per key. With `balanced` each packet weighs N / (C * N_class) (classes equal,
        as the networks train), else 1 (the classes as common as in training); each key's distribution is pulled
        toward uniform by `smoothing` packets' weight: (w_k + smoothing / C) / (W_k + smoothing), so a port seen
        a few times does not speak with certainty."""
        labels = np.asarray(labels).astype(np.int64)
        keys, inverse = np.unique(port_keys(rows), return_inverse=True)
        inverse = inverse.reshape(-1)
        counts = np.zeros((keys.size, num_classes), np.float64)
        np.add.at(counts, (inverse, labels), 1.0)
        per_class = np.bincount(labels, minlength=num_classes).astype(np.float64)
        weight = np.divide(labels.size / num_classes, per_class, out=np.zeros(num_classes), where=per_class > 0)
        weighted = counts * weight if balanced else counts
        probs = (weighted + smoothing / num_classes) / (weighted.sum(axis=1, keepdims=True) + smoothing)
        probs = np.vstack([probs, np.full((1, num_classes), 1.0 / num_classes)]).astype(np.float32)
        return cls(keys, probs, counts.argmax(axis=1), int(per_class.argmax()), float(smoothing), balanced)

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Row of `probs` per packet (len(keys) for a key never seen)."""
        k = port_keys(rows)
        pos = np.searchsorted(self.keys, k)
        seen = (pos < self.keys.size) & (self.keys[np.minimum(pos, self.keys.size - 1)] == k)
        return np.where(seen, pos, self.keys.size)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self.probs[self.positions(rows)]

    def predict_majority(self, rows: np.ndarray) -> np.ndarray:
        """The port-lookup baseline: the majority class of the key's training packets."""
        pos = self.positions(rows)
        return np.where(pos < self.keys.size, np.append(self.majority, self.fallback)[pos], self.fallback)

    def dense_index(self) -> np.ndarray:
        """int32 [N_KEYS]: row of `probs` for every possible key (what the ONNX graph gathers from)."""
        index = np.full(N_KEYS, self.keys.size, np.int32)
        index[self.keys] = np.arange(self.keys.size, dtype=np.int32)
        return index


def predict_rows_in_chunks(table: PortTable, rows: np.ndarray, indices: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """table.predict_proba for rows[indices] (sorted indices), a chunk at a time from a memory-mapped dataset."""
    out = np.empty((indices.size, table.probs.shape[1]), np.float32)
    for start in range(0, indices.size, chunk):
        part = indices[start : start + chunk]
        out[start : start + part.size] = table.predict_proba(rows[part, :24])
    return out


def fuse_port_onnx(
    model_path: str | os.PathLike, table: PortTable, beta: float, out_path: str | os.PathLike, provenance: dict
) -> Path:
    """Write model_path's graph with the port branch fused in (Eq. 3 with weight beta on the port table) to
    out_path (atomically). The model must take the uint8 row, or (a flow model) uint8 rows [batch, K, 1500]:
    then the flow's first row gives the port."""
    from onnx import TensorProto

    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be within [0, 1], got {beta}")
    branch = OutputBranch(model_path, PORT_NODE_PREFIX, "net_probs")
    props = branch.props
    if props.get(INPUT_DTYPE_KEY) != "uint8":
        raise ValueError(f"{model_path}: the port branch reads the uint8 row; export the model with uint8 input")
    classes = json.loads(props[CLASSES_KEY])
    if table.probs.shape[1] != len(classes):
        raise ValueError(f"port table has {table.probs.shape[1]} classes, {model_path} has {len(classes)}")
    const, add_node = branch.const, branch.node

    def column(i: int) -> str:  # int32 [batch]: row byte i
        return add_node("Gather", [head, const(f"byte{i}", np.int64(i))], f"byte{i}", axis=1)

    row = INPUT_NAME
    if props.get(DECIDE_KEY) == "flow":  # a flow model: the port of the flow's first row
        row = add_node("Gather", [FLOW_ROWS_INPUT, const("first", np.int64(0))], "first_row", axis=1)
    head = add_node("Cast", [add_node("Slice", [row, const("s0", [0]), const("s24", [24]), const("ax1", [1])],
                              "head_u8")], "head", to=TensorProto.INT32)  # fmt: skip
    b256, b16 = const("256", np.int32(256)), const("16", np.int32(16))
    version = add_node("Div", [column(0), b16], "version")
    is_v4 = add_node("Equal", [version, const("4", np.int32(4))], "is_v4")
    proto = add_node("Where", [is_v4, column(_IPV4_PROTOCOL_BYTE), column(ROW_IPV6_NEXT_HEADER_BYTE)], "proto")
    udp = add_node(
        "Cast", [add_node("Equal", [proto, const("17", np.int32(_UDP))], "is_udp")], "udp", to=TensorProto.INT32
    )
    sport = add_node("Add", [add_node("Mul", [column(20), b256], "sport_hi"), column(21)], "sport")
    dport = add_node("Add", [add_node("Mul", [column(22), b256], "dport_hi"), column(23)], "dport")
    low = add_node("Min", [sport, dport], "lower_port")
    key = add_node("Add", [add_node("Mul", [udp, const("65536", np.int32(65536))], "udp_off"), low], "key")
    pos = add_node("Gather", [const("index", table.dense_index()), key], "pos", axis=0)
    y_port = add_node("Gather", [const("table", table.probs), pos], "y_port", axis=0)
    add_node("Sum", [add_node("Mul", [y_port, const("beta", np.float32(beta))], "weighted_port"),
                     add_node("Mul", [branch.inner, const("one_minus_beta", np.float32(1.0 - beta))], "weighted_net")],
             "fuse", out=OUTPUT_NAME)  # fmt: skip
    return branch.save(out_path, {
        PRESET_KEY: props.get(PRESET_KEY, "unknown") + PORT_SUFFIX,
        PORT_BETA_KEY: json.dumps(beta),
        PORT_PROVENANCE_KEY: json.dumps(
            {**provenance, "smoothing": table.smoothing, "balanced": table.balanced, "keys_seen": int(table.keys.size)}
        ),
    })  # fmt: skip
