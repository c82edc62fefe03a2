"""The flow-context network (beyond the paper): one decision per flow from its first K packets.

Per packet, an encoder reads the layout row the way the paper's parallel network does, in two branches sliced
inside the graph: NIN1's modules (narrower) on the 40 header bytes and a compact NIN on the first BODY_BYTES
payload bytes. Each packet's encoding is joined with its flow features (pktnin.flow_features: present,
direction, length, log inter-arrival time) and a shared dense layer; the K packets are then combined by masked
pooling (the first packet's vector, the mean and the max over the real packets) and a small head gives the
class probabilities. The port branch is fused afterwards like the per-packet models' (engine.port_table,
on the flow's first row).

Inputs: `rows` float32 [B, K, 1500] (byte / 255; the ONNX graph takes uint8 and divides inside) and
`pkt_feats` float32 [B, K, 4]; output `probs` [B, C]. Exported as one ONNX graph with metadata
pktnin.decide = "flow" and pktnin.flow_packets = K.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

from pktnin.engine.port_table import FLOW_FEATS_INPUT as FEATS_INPUT
from pktnin.engine.port_table import FLOW_ROWS_INPUT as ROWS_INPUT
from pktnin.flow_features import N_FLOW_FEATURES
from pktnin.keras_layers import ByteSlice
from pktnin.layout import HEADER_LEN, ROW_LEN
from pktnin.trainer import presets as P
from pktnin.trainer.models import _keras_layer, _layer_name

FLOW_PRESET = "nin_flow"
BODY_BYTES = 256  # payload bytes the body branch reads: the handshake records, not the bulk


def header_layers(width: float, dropout: float) -> list:
    """NIN1's two MLP-conv modules (W1=3, H1=2), max pooling (3, 2) after the second, then one dense layer."""
    n = P.scaled(200, width)
    out: list = []
    for module in (1, 2):
        out += [P.Conv(n, 3, 2), P.Conv(n, 1), P.Conv(n, 1)]
        if module == 2:
            out.append(P.MaxPool(3, 2))
        out.append(P.Dropout(dropout))
    return out + [P.Flatten(), P.Dense(P.scaled(512, width))]


def body_layers(width: float, dropout: float) -> list:
    """Two NIN modules (kernel 7 stride 3, then 3 stride 1, each with a 1x1 conv and max pooling 3)."""
    n1, n2 = P.scaled(200, width), P.scaled(400, width)
    return [
        P.Conv(n1, 7, 3), P.Conv(n1, 1), P.MaxPool(3, 3), P.Dropout(dropout),
        P.Conv(n2, 3, 1), P.Conv(n2, 1), P.MaxPool(3, 3), P.Dropout(dropout),
        P.Flatten(), P.Dense(P.scaled(512, width)),
    ]  # fmt: skip


def packet_encoder(width: float = 0.16, dropout: float = 0.1) -> keras.Model:
    """row [batch, 1500] -> the concatenated header and body encodings."""
    row = keras.Input(shape=(ROW_LEN,), dtype="float32", name="row")
    outs = []
    for branch, start, stop, layers in (
        ("header", 0, HEADER_LEN, header_layers(width, dropout)),
        ("body", HEADER_LEN, HEADER_LEN + BODY_BYTES, body_layers(width, dropout)),
    ):
        x = ByteSlice(start, stop, name=f"{branch}_bytes")(row)
        counters: dict = {}
        for spec in layers:
            x = _keras_layer(spec, f"{branch}_{_layer_name(spec, counters)}")(x)
        outs.append(x)
    return keras.Model(row, keras.layers.Concatenate(name="packet_code")(outs), name="packet_encoder")


@keras.saving.register_keras_serializable(package="pktnin")
class FlowPool(keras.layers.Layer):
    """[h [B, K, D], pkt_feats [B, K, F]] -> [B, 3D]: the first packet's h, the mean and the max of h over the
    packets present (feature 0 of pkt_feats). h is non-negative (ReLU), so zeroing absent ones leaves the max."""

    def call(self, inputs):
        h, feats = inputs
        present = feats[:, :, :1]
        h = h * present
        mean = keras.ops.sum(h, axis=1) / keras.ops.maximum(keras.ops.sum(present, axis=1), 1.0)
        return keras.ops.concatenate([h[:, 0], mean, keras.ops.max(h, axis=1)], axis=-1)

    def compute_output_shape(self, input_shape):
        h_shape = input_shape[0]
        return (h_shape[0], 3 * h_shape[2])


def build_flow_model(num_classes: int, k: int, width: float = 0.16, dropout: float = 0.1, units: int = 96):
    """The flow network for `num_classes` classes on the first `k` packets of a flow."""
    P.check_build_args(num_classes, width, dropout)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rows = keras.Input(shape=(k, ROW_LEN), dtype="float32", name=ROWS_INPUT)
    feats = keras.Input(shape=(k, N_FLOW_FEATURES), dtype="float32", name=FEATS_INPUT)
    codes = keras.layers.TimeDistributed(packet_encoder(width, dropout), name="per_packet")(rows)
    h = keras.layers.Concatenate(name="packet_and_features")([codes, feats])
    h = keras.layers.Dense(units, activation="relu", name="packet_dense")(h)
    x = FlowPool(name="flow_pool")([h, feats])
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    x = keras.layers.Dense(units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dense(num_classes, name="classes")(x)
    probs = keras.layers.Softmax(name="probs", dtype="float32")(x)
    return keras.Model([rows, feats], probs, name=f"{FLOW_PRESET}_k{k}")


class FlowBatches(keras.utils.PyDataset):
    """Batches ((rows / 255, pkt_feats), labels, weights) of flows, shuffled per epoch when `shuffle`."""

    def __init__(self, rows, feats, labels=None, weights=None, batch=128, shuffle=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.feats, self.labels, self.weights = rows, feats, labels, weights
        self.batch, self.shuffle = batch, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(rows)) if shuffle else np.arange(len(rows))

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch)

    def __getitem__(self, i: int):
        at = np.sort(self.order[i * self.batch : (i + 1) * self.batch])
        x = (self.rows[at].astype(np.float32) / 255.0, self.feats[at])
        if self.labels is None:
            return (x,)
        return x, self.labels[at], self.weights[at]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.rows))


def predict_flows(model, rows: np.ndarray, feats: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities [F, C] of a Keras flow model for uint8 rows [F, K, 1500] and pkt_feats [F, K, 4]."""
    k = model.input_shape[0][1]
    out = [
        model(((rows[s : s + batch, :k].astype(np.float32) / 255.0), feats[s : s + batch, :k]), training=False)
        for s in range(0, len(rows), batch)
    ]
    return np.concatenate([np.asarray(o) for o in out]).astype(np.float32)


def export_flow_onnx(model, out_path: str | os.PathLike, classes: list[str], provenance: dict) -> Path:
    """One ONNX graph: `rows` uint8 [batch, K, 1500] (/255 inside), `pkt_feats` float32 [batch, K, 4] ->
    `probs` [batch, C], with the pktnin.* metadata of the other models plus pktnin.decide and flow_packets."""
    import tensorflow as tf
    import tf2onnx

    from pktnin.engine.export import DEFAULT_OPSET, _rename_value, save_onnx
    from pktnin.engine.model_file import OUTPUT_NAME, set_flow_model_info

    k = model.input_shape[0][1]
    specs = [
        tf.TensorSpec([None, k, ROW_LEN], tf.uint8, name=ROWS_INPUT),
        tf.TensorSpec([None, k, N_FLOW_FEATURES], tf.float32, name=FEATS_INPUT),
    ]

    @tf.function(input_signature=specs)
    def serve(rows, pkt_feats):
        return model((tf.cast(rows, tf.float32) / 255.0, pkt_feats), training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=specs, opset=DEFAULT_OPSET)
    graph = proto.graph
    for value, name in zip(graph.input, (ROWS_INPUT, FEATS_INPUT)):
        _rename_value(graph, value.name, name)
    _rename_value(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (*graph.input, graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    proto.producer_name = "pktnin"
    set_flow_model_info(proto, classes, FLOW_PRESET, k, provenance)
    return save_onnx(proto, out_path)
