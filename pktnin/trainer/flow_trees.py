"""Tree models on flow features: the feature definitions and one ONNX graph that computes them and runs the trees.

The features are read from a flow's first K layout rows and its pkt_feats (pktnin.flow_features) at fixed row byte
offsets (pktnin.layout): `flow_features` computes them with numpy for fitting, `flow_trees_onnx` builds the same
features inside an ONNX graph (Slice/Reshape/Cast/Concat over the same offset table, FLOW_BYTE_BLOCKS) and joins
them with a scikit-learn tree ensemble converted by skl2onnx. The graph has a flow model's inputs and output
(`rows` uint8 [B, K, 1500], `pkt_feats` float32 [B, K, 4] -> `probs` float32 [B, C]), so it ships like the other
flow models. Tree ensembles are ONNX-ML operators: ONNX Runtime runs them; TensorRT does not.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pktnin.engine.port_table import FLOW_FEATS_INPUT as FEATS_INPUT
from pktnin.engine.port_table import FLOW_ROWS_INPUT as ROWS_INPUT
from pktnin.flow_features import N_FLOW_FEATURES, TCP_OFFSET_BYTE, payload_length
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


def first_packet_features(rows: np.ndarray) -> np.ndarray:
    """The first-packet forest's inputs from the flows' first rows [F, 1500]: first payload bytes, TCP flags and
    window, payload length, both ports."""
    first = np.asarray(rows)
    window = first[:, TCP_WINDOW_BYTES[0]].astype(np.int64) << 8 | first[:, TCP_WINDOW_BYTES[1]]
    return np.column_stack([
        first[:, HEADER_LEN : HEADER_LEN + FIRST_PAYLOAD], first[:, TCP_FLAGS_BYTE], window,
        payload_length(first), ports(first),
    ]).astype(np.float32)  # fmt: skip


def direction_payload_features(rows: np.ndarray, feats: np.ndarray, per_direction: int) -> np.ndarray:
    """float32 [F, 2 * per_direction * (FIRST_PAYLOAD + 1) + 3]: for each direction (the first row's, then the
    other) its first `per_direction` packets among the rows [F, K, 1500] (pkt_feats [F, K, 4] say which are
    present and their direction): FIRST_PAYLOAD payload bytes and the payload length, zeros where the direction
    has fewer packets; then both ports of the first row and the lower one."""
    rows, feats = np.asarray(rows), np.asarray(feats)
    f, k = rows.shape[:2]
    payload = rows[:, :, HEADER_LEN : HEADER_LEN + FIRST_PAYLOAD].astype(np.float32)
    lengths = payload_length(rows.reshape(f * k, -1)).reshape(f, k).astype(np.float32)
    parts = []
    for pick in direction_slots(feats, per_direction):  # one-hot [F, K] per selected packet
        parts += [np.einsum("fk,fkb->fb", pick, payload), (pick * lengths).sum(axis=1, keepdims=True)]
    p = ports(rows[:, 0])
    return np.column_stack([*parts, p, p.min(axis=1)]).astype(np.float32)


def direction_slots(feats: np.ndarray, per_direction: int) -> list[np.ndarray]:
    """float32 one-hot [F, K] of each direction's j-th present packet, j < per_direction (all zero where there is
    none): the first row's direction first. The same arithmetic as the ONNX graph (CumSum, Equal, Mul)."""
    present, forward = feats[..., 0], feats[..., 1]
    out = []
    for mask in (present * forward, present * (1 - forward)):
        rank = np.cumsum(mask, axis=1)
        out += [mask * (rank == j + 1) for j in range(per_direction)]
    return [o.astype(np.float32) for o in out]


# Feature sets by name: "first" (first_packet_features), "flowK" (flow_features of K rows), "dirN"
# (direction_payload_features, N packets a direction among the first K_DIRECTION rows), joined with "+".
K_DIRECTION = 8


def feature_rows(spec: str) -> int:
    """How many of a flow's first rows a feature set reads."""
    need = 1
    for part in spec.split("+"):
        if part.startswith("flow"):
            need = max(need, int(part[4:]))
        elif part.startswith("dir"):
            need = max(need, K_DIRECTION)
        elif part != "first":
            raise ValueError(f"unknown flow feature set {part!r} in {spec!r}")
    return need


def feature_matrix(spec: str, rows: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """float32 [F, n] of feature set `spec` from rows [F, >=feature_rows(spec), 1500] and pkt_feats."""
    parts = []
    for part in spec.split("+"):
        if part == "first":
            parts.append(first_packet_features(rows[:, 0]))
        elif part.startswith("flow"):
            parts.append(flow_features(rows, feats, int(part[4:])))
        elif part.startswith("dir"):
            parts.append(direction_payload_features(rows[:, :K_DIRECTION], feats[:, :K_DIRECTION], int(part[3:])))
        else:
            raise ValueError(f"unknown flow feature set {part!r} in {spec!r}")
    return np.column_stack(parts).astype(np.float32)


@dataclass(frozen=True)
class TreeCandidate:
    """A tree model on a flow feature set: kind rf (random forest), et (extra trees) or gbt (flow-feature trees'
    boosting, fit_gbt); forests take trees, min_samples_leaf and max_leaf_nodes (None: no limit)."""

    name: str
    features: str
    kind: str
    trees: int = 100
    min_samples_leaf: int = 2
    max_leaf_nodes: int | None = None

    @property
    def k(self) -> int:
        return feature_rows(self.features)

    def fit(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, n_jobs: int = 2):
        """The fitted model, on at most n_jobs threads (boosting's OpenMP threads too: on a loaded machine more
        threads than free cores make its barriers wait on threads that are not running)."""
        if self.kind == "gbt":
            from threadpoolctl import threadpool_limits

            with threadpool_limits(n_jobs):
                return fit_gbt(x, y, weights)
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

        forest = {"rf": RandomForestClassifier, "et": ExtraTreesClassifier}[self.kind]
        model = forest(n_estimators=self.trees, min_samples_leaf=self.min_samples_leaf,
                       max_leaf_nodes=self.max_leaf_nodes, n_jobs=n_jobs, random_state=0)  # fmt: skip
        return model.fit(x, y, sample_weight=weights)


def tree_leaves(model) -> int:
    """Leaves of a fitted forest or boosting model (what its ONNX graph's size grows with)."""
    if hasattr(model, "estimators_"):
        return int(sum(tree.tree_.n_leaves for tree in model.estimators_))
    return int(sum(int(p.nodes["is_leaf"].sum()) for stage in model._predictors for p in stage))


def fit_gbt(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, max_iter: int = 150):
    """The flow-feature trees: scikit-learn's histogram gradient boosting with the settings chosen on validation."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=0.1, max_leaf_nodes=31, random_state=0)
    return model.fit(x, y, sample_weight=weights)


def tree_probabilities(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 [F, num_classes] of a fitted tree classifier (classes the model never saw get 0)."""
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


class _Graph:
    """Nodes and constants of the feature part of a flow trees graph."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.consts: list = []
        self.cache: dict[str, str] = {}

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def row_bytes(self, n: int, start: int, end: int, name: str) -> str:
        """rows[:, :n, start:end] as float [B, n * (end - start)]."""
        from onnx import TensorProto

        cut = self.node("Slice", [ROWS_INPUT, self.const(f"{name}_starts", [0, start]),
                                  self.const(f"{name}_ends", [n, end]), self.const(f"{name}_axes", [1, 2])],
                        f"{name}_u8")  # fmt: skip
        flat = self.node("Reshape", [cut, self.const(f"{name}_shape", [-1, n * (end - start)])], f"{name}_flat")
        return self.node("Cast", [flat], name, to=TensorProto.FLOAT)

    def ports(self) -> tuple[str, str]:
        """Both ports of the first row [B, 2] and the lower one [B, 1] (as `ports`)."""
        if "ports" not in self.cache:
            port_bytes = self.row_bytes(1, PORT_BYTES[0], PORT_BYTES[1], "port_bytes")
            to_ports = np.array([[256, 0], [1, 0], [0, 256], [0, 1]], np.float32)  # big-endian byte pairs
            self.cache["ports"] = self.node("MatMul", [port_bytes, self.const("to_ports", to_ports)], "ports")
            self.cache["min_port"] = self.node("ReduceMin", [self.cache["ports"]], "min_port", axes=[1], keepdims=1)
        return self.cache["ports"], self.cache["min_port"]

    def feats(self, k: int, name: str) -> str:
        """pkt_feats[:, :k] [B, k, 4]."""
        return self.node("Slice", [FEATS_INPUT, self.const(f"{name}_starts", [0]), self.const(f"{name}_ends", [k]),
                                   self.const(f"{name}_axes", [1])], name)  # fmt: skip

    def payload_length(self, k: int) -> str:
        """Payload length [B, k] of the first k rows, as `payload_length` computes it (all exact in float32)."""
        from onnx import TensorProto

        name = f"paylen{k}"
        if name in self.cache:
            return self.cache[name]
        c = self.const
        rows = self.node("Cast", [self.node("Slice", [ROWS_INPUT, c(f"{name}_s", [0]), c(f"{name}_e", [k]),
                                                      c(f"{name}_a", [1])], f"{name}_u8")], f"{name}_rows",
                         to=TensorProto.FLOAT)  # fmt: skip

        def byte(i: int) -> str:
            return self.node("Gather", [rows, c(f"{name}_at{i}", np.int64(i))], f"{name}_byte{i}", axis=2)

        def arith(op: str, a: str, b, out: str) -> str:
            return self.node(op, [a, b if isinstance(b, str) else c(f"{name}_{out}_c", np.float32(b))], f"{name}_{out}")

        b0 = byte(ROW_VERSION_BYTE)
        version = self.node("Floor", [arith("Div", b0, 16, "v16")], f"{name}_version")
        v4 = arith("Equal", version, 4, "is4")
        ihl = arith("Sub", b0, arith("Mul", version, 16, "vx16"), "ihl")
        ip_header = self.node("Where", [v4, arith("Mul", ihl, 4, "ihl4"), c(f"{name}_v6h", np.float32(IPV6_HEADER_LEN))],
                              f"{name}_iph")  # fmt: skip
        proto = self.node("Where", [v4, byte(ROW_IPV4_PROTOCOL_BYTE), byte(ROW_IPV6_NEXT_HEADER_BYTE)], f"{name}_proto")
        tcp = arith("Mul", self.node("Floor", [arith("Div", byte(TCP_OFFSET_BYTE), 16, "off16")], f"{name}_off"), 4,
                    "tcph")  # fmt: skip
        transport = self.node("Where", [arith("Equal", proto, IPPROTO_TCP, "istcp"), tcp,
                                        c(f"{name}_udph", np.float32(UDP_HEADER_LEN))], f"{name}_trh")  # fmt: skip
        b2 = arith("Add", arith("Mul", byte(2), 256, "b2hi"), byte(3), "b2")
        b4 = arith("Add", arith("Mul", byte(4), 256, "b4hi"), byte(5), "b4")
        v6_length = self.node("Where", [arith("Greater", b4, 0, "b4pos"), arith("Add", b4, IPV6_HEADER_LEN, "b4h"),
                                        c(f"{name}_zero", np.float32(0))], f"{name}_v6len")  # fmt: skip
        field = self.node("Where", [arith("Equal", version, 6, "is6"), v6_length, b2], f"{name}_field")
        nonzero = self.node("Cast", [arith("Greater", rows, 0, "nz")], f"{name}_nzf", to=TensorProto.FLOAT)
        position = c(f"{name}_pos", np.arange(1, ROW_LEN + 1, dtype=np.float32))
        held = self.node("ReduceMax", [arith("Mul", nonzero, position, "nzpos")], f"{name}_held", axes=[2], keepdims=0)
        ip_length = self.node("Where", [arith("Greater", field, 0, "fpos"), field, held], f"{name}_iplen")
        payload = arith("Sub", arith("Sub", ip_length, ip_header, "l1"), transport, "l2")
        self.cache[name] = arith("Max", payload, 0, "len")
        return self.cache[name]

    def first_packet(self) -> list[str]:
        """first_packet_features."""
        window = self.node("MatMul", [self.row_bytes(1, TCP_WINDOW_BYTES[0], TCP_WINDOW_BYTES[1] + 1, "window_bytes"),
                                      self.const("to_window", np.array([[256], [1]], np.float32))], "window")  # fmt: skip
        port_pair, _ = self.ports()
        length = self.node("Slice", [self.payload_length(1), self.const("len0_s", [0]), self.const("len0_e", [1]),
                                     self.const("len0_a", [1])], "first_length")  # fmt: skip
        return [self.row_bytes(1, HEADER_LEN, HEADER_LEN + FIRST_PAYLOAD, "first_payload"),
                self.row_bytes(1, TCP_FLAGS_BYTE, TCP_FLAGS_BYTE + 1, "first_flags"), window, length, port_pair]  # fmt: skip

    def flow(self, k: int) -> list[str]:
        """flow_features of k rows."""
        parts = [self.node("Reshape", [self.feats(k, f"feats{k}"), self.const(f"feats{k}_shape", [-1, k * N_FLOW_FEATURES])],
                           f"feats{k}_flat")]  # fmt: skip
        parts += [
            self.row_bytes(n, start, end, f"flow{k}_bytes{i}") for i, (n, start, end) in enumerate(flow_byte_blocks(k))
        ]
        return parts + list(self.ports())

    def directions(self, per_direction: int) -> list[str]:
        """direction_payload_features: one-hot picks (CumSum, Equal, Mul) applied with MatMul."""
        from onnx import TensorProto

        k, name = K_DIRECTION, f"dir{per_direction}"
        feats = self.feats(k, f"{name}_feats")
        at = self.const(f"{name}_axis", np.int64(1))  # CumSum takes a scalar axis, the others a vector
        axes = self.const(f"{name}_axes", np.array([1], np.int64))

        def channel(i: int) -> str:
            return self.node("Gather", [feats, self.const(f"{name}_ch{i}", np.int64(i))], f"{name}_ch{i}_v", axis=2)

        present, forward = channel(0), channel(1)
        backward = self.node("Sub", [self.const(f"{name}_one", np.float32(1)), forward], f"{name}_back")
        payload = self.node("Reshape", [self.row_bytes(k, HEADER_LEN, HEADER_LEN + FIRST_PAYLOAD, f"{name}_payload"),
                                        self.const(f"{name}_pshape", [-1, k, FIRST_PAYLOAD])], f"{name}_p3")  # fmt: skip
        lengths = self.payload_length(k)
        parts = []
        for d, direction in enumerate((forward, backward)):
            mask = self.node("Mul", [present, direction], f"{name}_mask{d}")
            rank = self.node("CumSum", [mask, at], f"{name}_rank{d}")
            for j in range(per_direction):
                tag = f"{name}_d{d}_{j}"
                hit = self.node("Cast", [self.node("Equal", [rank, self.const(f"{tag}_j", np.float32(j + 1))], f"{tag}_eq")],
                                f"{tag}_hit", to=TensorProto.FLOAT)  # fmt: skip
                pick = self.node("Mul", [mask, hit], f"{tag}_pick")
                picked = self.node(
                    "MatMul", [self.node("Unsqueeze", [pick, axes], f"{tag}_pick3"), payload], f"{tag}_bytes3"
                )
                parts.append(self.node("Squeeze", [picked, axes], f"{tag}_bytes"))
                parts.append(self.node("ReduceSum", [self.node("Mul", [pick, lengths], f"{tag}_lens"), axes],
                                       f"{tag}_len", keepdims=1))  # fmt: skip
        return parts + list(self.ports())


def flow_trees_onnx(model, k: int, classes: list[str], provenance: dict, features: str | None = None):
    """ONNX ModelProto: `rows` uint8 [B, k, 1500] and `pkt_feats` float32 [B, k, 4] -> feature set `features`
    (feature_matrix's; default flow features of k rows) -> the fitted tree classifier -> `probs` float32
    [B, len(classes)].

    Metadata: the pktnin.* keys of the other models plus pktnin.decide = flow, pktnin.flow_packets = k."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from pktnin.engine.export import DEFAULT_OPSET
    from pktnin.engine.model_file import OUTPUT_NAME, set_flow_model_info

    features = features or f"flow{k}"
    if feature_rows(features) > k:
        raise ValueError(f"feature set {features!r} reads {feature_rows(features)} rows; the graph takes K={k}")
    probe = np.zeros((1, k, ROW_LEN), np.uint8), np.zeros((1, k, N_FLOW_FEATURES), np.float32)
    n_features = feature_matrix(features, *probe).shape[1]
    if model.n_features_in_ != n_features:
        raise ValueError(f"the model reads {model.n_features_in_} features; {features} of K={k} are {n_features}")
    with _missing_flags_as_ints():
        trees = convert_sklearn(
            model,
            initial_types=[("features", FloatTensorType([None, n_features]))],
            options={id(model): {"zipmap": False}},
            target_opset={"": DEFAULT_OPSET, "ai.onnx.ml": 3},
        )
    proba = next(o.name for o in trees.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT)

    g = _Graph()
    parts: list[str] = []
    for part in features.split("+"):
        if part == "first":
            parts += g.first_packet()
        elif part.startswith("flow"):
            parts += g.flow(int(part[4:]))
        else:
            parts += g.directions(int(part[3:]))
    g.nodes.append(helper.make_node("Concat", parts, ["features"], name="features", axis=1))

    # The trees' classes_ are label indices; spread their columns over all classes (unseen classes get 0).
    spread = np.zeros((len(model.classes_), len(classes)), np.float32)
    spread[np.arange(len(model.classes_)), np.asarray(model.classes_, dtype=np.int64)] = 1.0
    spread_node = helper.make_node("MatMul", [proba, g.const("spread_classes", spread)], [OUTPUT_NAME], name="spread")

    graph = helper.make_graph(
        [*g.nodes, *trees.graph.node, spread_node],
        "trees_flow",
        [
            helper.make_tensor_value_info(ROWS_INPUT, TensorProto.UINT8, ["batch", k, ROW_LEN]),
            helper.make_tensor_value_info(FEATS_INPUT, TensorProto.FLOAT, ["batch", k, N_FLOW_FEATURES]),
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(classes)])],
        initializer=g.consts + list(trees.graph.initializer),
    )
    proto = helper.make_model(graph, opset_imports=list(trees.opset_import), producer_name="pktnin")
    proto.ir_version = trees.ir_version
    preset = f"{TREES_PRESET}{k}" if features == f"flow{k}" else f"trees_{features.replace('+', '_')}"
    set_flow_model_info(proto, classes, preset, k, provenance)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_flow_trees(
    model, k: int, classes: list[str], provenance: dict, out_path: str | os.PathLike, features: str | None = None
) -> Path:
    """flow_trees_onnx written atomically to out_path."""
    from pktnin.engine.export import save_onnx

    return save_onnx(flow_trees_onnx(model, k, classes, provenance, features), out_path)


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


FOREST_PREFIX = "forest/"  # names of the blended-in graph's nodes, constants and values


def blend_flow_graphs(trees, forest, w: float, preset: str, provenance: dict):
    """One flow graph: (1 - w) * trees' probs + w * forest's probs, two flow_trees_onnx graphs of the same K reading
    the same `rows` and `pkt_feats`. Every name of the forest's graph but its inputs takes FOREST_PREFIX, so the two
    never clash."""
    import onnx
    from onnx import helper, numpy_helper

    from pktnin.engine.model_file import CLASSES_KEY, FLOW_PACKETS_KEY, OUTPUT_NAME, set_flow_model_info

    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w must be within [0, 1], got {w}")
    props = [{p.key: p.value for p in m.metadata_props} for m in (trees, forest)]
    for key in (CLASSES_KEY, FLOW_PACKETS_KEY):
        if props[0][key] != props[1][key]:
            raise ValueError(f"the two graphs differ in {key}: {props[0][key]} and {props[1][key]}")
    merged = type(trees)()
    merged.CopyFrom(trees)
    graph = merged.graph
    trees_out, forest_inputs = "trees/probs", {i.name for i in forest.graph.input}

    def rename(name: str) -> str:
        return name if not name or name in forest_inputs else FOREST_PREFIX + name

    for node in graph.node:
        node.output[:] = [trees_out if o == OUTPUT_NAME else o for o in node.output]
    for node in forest.graph.node:
        copy = graph.node.add()
        copy.CopyFrom(node)
        copy.name, copy.input[:], copy.output[:] = rename(node.name), map(rename, node.input), map(rename, node.output)
    for init in forest.graph.initializer:
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(init), rename(init.name)))
    weights = [numpy_helper.from_array(np.float32(v), f"blend/{n}") for n, v in (("trees", 1 - w), ("forest", w))]
    graph.initializer.extend(weights)
    graph.node.extend([
        helper.make_node("Mul", [trees_out, "blend/trees"], ["blend/weighted_trees"], name="blend/weighted_trees"),
        helper.make_node("Mul", [rename(OUTPUT_NAME), "blend/forest"], ["blend/weighted_forest"],
                         name="blend/weighted_forest"),
        helper.make_node("Sum", ["blend/weighted_trees", "blend/weighted_forest"], [OUTPUT_NAME], name="blend/sum"),
    ])  # fmt: skip
    opsets = {o.domain: o.version for o in trees.opset_import}
    for o in forest.opset_import:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    set_flow_model_info(merged, json.loads(props[0][CLASSES_KEY]), preset, int(props[0][FLOW_PACKETS_KEY]), provenance)
    onnx.checker.check_model(merged, full_check=True)
    return merged
