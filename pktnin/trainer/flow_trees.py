"""Tree models on flow features: the feature definitions and one ONNX graph that computes them and runs the trees.

The features are read from a flow's first K layout rows and its pkt_feats (pktnin.flow_features) at fixed row byte
offsets (pktnin.layout): `flow_features` computes them with numpy for fitting, `flow_trees_onnx` builds the same
features inside an ONNX graph (Slice/Reshape/Cast/Concat over the same offset table, FLOW_BYTE_BLOCKS) and joins
them with a scikit-learn tree ensemble converted by skl2onnx. The graph has a flow model's inputs and output
(`rows` uint8 [B, K, 1500], `pkt_feats` float32 [B, K, 4] -> `probs` float32 [B, C]), so it ships like the other
flow models. Tree ensembles are ONNX-ML operators: ONNX Runtime runs them; TensorRT does not.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pktnin.engine.port_table import FLOW_FEATS_INPUT as FEATS_INPUT
from pktnin.engine.port_table import FLOW_ROWS_INPUT as ROWS_INPUT
from pktnin.flow_features import N_FLOW_FEATURES, row_ip_length
from pktnin.layout import (
    HEADER_LEN,
    IPPROTO_TCP,
    IPV6_HEADER_LEN,
    NET_LEN,
    ROW_IPV4_PROTOCOL_BYTE,
    ROW_IPV6_NEXT_HEADER_BYTE,
    ROW_LEN,
    ROW_VERSION_BYTE,
    UDP_HEADER_LEN,
)

# Row bytes of the transport segment (it starts at NET_LEN; TCP header offsets).
PORT_BYTES = (NET_LEN, NET_LEN + 4)  # source port, destination port, big-endian
TCP_OFFSET_BYTE = NET_LEN + 12  # data offset in the high nibble
TCP_FLAGS_BYTE = NET_LEN + 13
TCP_WINDOW_BYTES = (NET_LEN + 14, NET_LEN + 15)
FIRST_PAYLOAD = 64  # payload bytes of the first packet the first-packet forest reads
HANDSHAKE_BYTES, HANDSHAKE_PACKETS = 16, 4  # payload bytes per packet, packets, the flow-feature trees read
TREES_PRESET = "trees_flow"


def flow_byte_blocks(k: int) -> list[tuple[int, int, int]]:
    """The raw row bytes among the flow features: (packets, first byte, end byte) per block, in feature order."""
    return [
        (k, TCP_FLAGS_BYTE, TCP_FLAGS_BYTE + 1),
        (min(k, HANDSHAKE_PACKETS), HEADER_LEN, HEADER_LEN + HANDSHAKE_BYTES),
    ]


def flow_feature_count(k: int) -> int:
    return k * N_FLOW_FEATURES + sum(n * (end - start) for n, start, end in flow_byte_blocks(k)) + 3


def ports(rows: np.ndarray) -> np.ndarray:
    """int64 [F, 2]: source and destination port from each row's transport segment (rows [F, 1500])."""
    r = np.asarray(rows[:, PORT_BYTES[0] : PORT_BYTES[1]]).astype(np.int64)
    return np.stack([r[:, 0] << 8 | r[:, 1], r[:, 2] << 8 | r[:, 3]], axis=1)


def flow_features(rows: np.ndarray, feats: np.ndarray, k: int) -> np.ndarray:
    """float32 [F, flow_feature_count(k)] from the first k rows [F, >=k, 1500] and pkt_feats [F, >=k, 4]:
    the k packets' pkt_feats, then the FLOW_BYTE_BLOCKS bytes, both ports of the first row and the lower one."""
    f = len(rows)
    blocks = [np.asarray(rows[:, :n, start:end]).reshape(f, -1) for n, start, end in flow_byte_blocks(k)]
    p = ports(rows[:, 0])
    return np.column_stack([np.asarray(feats[:, :k]).reshape(f, -1), *blocks, p, p.min(axis=1)]).astype(np.float32)


def payload_length(rows: np.ndarray) -> np.ndarray:
    """Transport payload length per row [F, 1500] from the IP length and the header lengths the row keeps."""
    rows = np.asarray(rows)
    v4 = rows[:, ROW_VERSION_BYTE] >> 4 == 4
    ip_header = np.where(v4, (rows[:, ROW_VERSION_BYTE] & 0x0F).astype(np.int64) * 4, IPV6_HEADER_LEN)
    proto = np.where(v4, rows[:, ROW_IPV4_PROTOCOL_BYTE], rows[:, ROW_IPV6_NEXT_HEADER_BYTE])
    tcp_header = (rows[:, TCP_OFFSET_BYTE] >> 4).astype(np.int64) * 4
    transport = np.where(proto == IPPROTO_TCP, tcp_header, UDP_HEADER_LEN)
    return np.maximum(row_ip_length(rows) - ip_header - transport, 0)


def first_packet_features(rows: np.ndarray) -> np.ndarray:
    """The first-packet forest's inputs from the flows' first rows [F, 1500]: first payload bytes, TCP flags and
    window, payload length, both ports."""
    first = np.asarray(rows)
    window = first[:, TCP_WINDOW_BYTES[0]].astype(np.int64) << 8 | first[:, TCP_WINDOW_BYTES[1]]
    return np.column_stack([
        first[:, HEADER_LEN : HEADER_LEN + FIRST_PAYLOAD], first[:, TCP_FLAGS_BYTE], window,
        payload_length(first), ports(first),
    ]).astype(np.float32)  # fmt: skip


def fit_gbt(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, max_iter: int = 150):
    """The flow-feature trees: scikit-learn's histogram gradient boosting with the settings chosen on validation."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=0.1, max_leaf_nodes=31, random_state=0)
    return model.fit(x, y, sample_weight=weights)


def gbt_probabilities(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 [F, num_classes] (classes the model never saw get 0)."""
    out = np.zeros((len(x), num_classes), np.float32)
    out[:, model.classes_] = model.predict_proba(x)
    return out


@contextmanager
def _missing_flags_as_ints():
    """skl2onnx 1.20 passes a histogram-boosting leaf's missing-value flag as a Python bool, which onnx >= 1.23
    refuses in an INTS attribute; give it the same flag as an int while converting."""
    from skl2onnx.common import tree_ensemble

    add_node = tree_ensemble.add_node

    def add_node_int_flag(*args, nodes_missing_value_tracks_true=0, **kwargs):
        return add_node(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node_int_flag
    try:
        yield
    finally:
        tree_ensemble.add_node = add_node


def flow_trees_onnx(model, k: int, classes: list[str], provenance: dict):
    """ONNX ModelProto: `rows` uint8 [B, k, 1500] and `pkt_feats` float32 [B, k, 4] -> the flow features (as
    flow_features computes them) -> the fitted tree classifier -> `probs` float32 [B, len(classes)].

    Metadata: the pktnin.* keys of the other models plus pktnin.decide = flow, pktnin.flow_packets = k."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from pktnin.engine.export import DEFAULT_OPSET
    from pktnin.engine.model_file import OUTPUT_NAME, set_flow_model_info

    n_features = flow_feature_count(k)
    if model.n_features_in_ != n_features:
        raise ValueError(f"the model reads {model.n_features_in_} features; flow features of K={k} are {n_features}")
    with _missing_flags_as_ints():
        trees = convert_sklearn(
            model,
            initial_types=[("features", FloatTensorType([None, n_features]))],
            options={id(model): {"zipmap": False}},
            target_opset={"": DEFAULT_OPSET, "ai.onnx.ml": 3},
        )
    proba = next(o.name for o in trees.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT)

    consts: list = []

    def const(name: str, value) -> str:
        consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    nodes = []

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def row_bytes(n: int, start: int, end: int, name: str) -> str:
        """rows[:, :n, start:end] as float [B, n * (end - start)]."""
        cut = node("Slice", [ROWS_INPUT, const(f"{name}_starts", [0, start]), const(f"{name}_ends", [n, end]),
                             const(f"{name}_axes", [1, 2])], f"{name}_u8")  # fmt: skip
        flat = node("Reshape", [cut, const(f"{name}_shape", [-1, n * (end - start)])], f"{name}_flat")
        return node("Cast", [flat], name, to=TensorProto.FLOAT)

    parts = [node("Reshape", [FEATS_INPUT, const("feats_shape", [-1, k * N_FLOW_FEATURES])], "feats_flat")]
    parts += [row_bytes(n, start, end, f"bytes{i}") for i, (n, start, end) in enumerate(flow_byte_blocks(k))]
    port_bytes = row_bytes(1, PORT_BYTES[0], PORT_BYTES[1], "port_bytes")
    to_ports = np.array([[256, 0], [1, 0], [0, 256], [0, 1]], np.float32)  # big-endian byte pairs -> ports
    port_pair = node("MatMul", [port_bytes, const("to_ports", to_ports)], "ports")
    parts += [port_pair, node("ReduceMin", [port_pair], "min_port", axes=[1], keepdims=1)]
    nodes.append(helper.make_node("Concat", parts, ["features"], name="features", axis=1))

    # The trees' classes_ are label indices; spread their columns over all classes (unseen classes get 0).
    spread = np.zeros((len(model.classes_), len(classes)), np.float32)
    spread[np.arange(len(model.classes_)), np.asarray(model.classes_, dtype=np.int64)] = 1.0
    spread_node = helper.make_node("MatMul", [proba, const("spread_classes", spread)], [OUTPUT_NAME], name="spread")

    graph = helper.make_graph(
        [*nodes, *trees.graph.node, spread_node],
        "trees_flow",
        [
            helper.make_tensor_value_info(ROWS_INPUT, TensorProto.UINT8, ["batch", k, ROW_LEN]),
            helper.make_tensor_value_info(FEATS_INPUT, TensorProto.FLOAT, ["batch", k, N_FLOW_FEATURES]),
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(classes)])],
        initializer=consts + list(trees.graph.initializer),
    )
    proto = helper.make_model(graph, opset_imports=list(trees.opset_import), producer_name="pktnin")
    proto.ir_version = trees.ir_version
    set_flow_model_info(proto, classes, f"{TREES_PRESET}{k}", k, provenance)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_flow_trees(model, k: int, classes: list[str], provenance: dict, out_path: str | os.PathLike) -> Path:
    """flow_trees_onnx written atomically to out_path."""
    from pktnin.engine.export import save_onnx

    return save_onnx(flow_trees_onnx(model, k, classes, provenance), out_path)


def graph_features(proto, rows: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """The flow features a flow_trees_onnx graph computes for rows and pkt_feats, through ONNX Runtime (to check
    them against flow_features)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = type(proto)()
    probe.CopyFrom(proto)
    probe.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["features"], {ROWS_INPUT: rows, FEATS_INPUT: feats})[0]
