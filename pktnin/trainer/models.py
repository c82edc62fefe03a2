"""Keras models of the presets in pktnin.trainer.presets (the layer lists and counts live there).

Every model takes the whole normalized row [batch, 1500] float32 (byte / 255) and returns class
probabilities [batch, C]; a branch network slices its bytes inside the graph with ByteSlice, so every
checkpoint is scored the same way.
"""

from __future__ import annotations

import keras

from pktnin.keras_layers import AlphaFusion, ByteSlice
from pktnin.layout import ROW_LEN
from pktnin.trainer import presets as P


def _keras_layer(spec: P.Layer, name: str):
    if isinstance(spec, P.Conv):
        return keras.layers.Conv1D(spec.filters, spec.kernel, strides=spec.stride, padding="same",
                                   activation="relu" if spec.relu else None, name=name)  # fmt: skip
    if isinstance(spec, P.MaxPool):
        return keras.layers.MaxPooling1D(spec.size, strides=spec.stride, padding="same", name=name)
    if isinstance(spec, P.Flatten):
        return keras.layers.Flatten(name=name)
    if isinstance(spec, P.Dense):
        return keras.layers.Dense(spec.units, activation="relu" if spec.relu else None, name=name)
    if isinstance(spec, P.GlobalAvgPool):
        return keras.layers.GlobalAveragePooling1D(name=name)
    if isinstance(spec, P.Dropout):
        return keras.layers.Dropout(spec.rate, name=name)
    if isinstance(spec, P.Softmax):
        # float32 also under a mixed-precision training policy: probabilities and the loss stay exact
        return keras.layers.Softmax(name=name, dtype="float32")
    raise TypeError(f"unknown layer spec {spec!r}")


_LAYER_KINDS = {
    P.Conv: "conv", P.MaxPool: "pool", P.Flatten: "flatten", P.Dense: "dense",
    P.GlobalAvgPool: "gap", P.Dropout: "dropout", P.Softmax: "softmax",
}  # fmt: skip


def _layer_name(spec: P.Layer, counters: dict) -> str:
    """conv1, conv2, pool1, ...: numbered per kind, in graph order."""
    kind = _LAYER_KINDS[type(spec)]
    counters[kind] = counters.get(kind, 0) + 1
    return f"{kind}{counters[kind]}"


def build_model(preset: str, num_classes: int, dropout: float = 0.1, width: float = 1.0) -> keras.Model:
    """The Keras model of `preset` for `num_classes` classes.

    dropout: rate of the Dropout layers (the paper's "ratio of 0.9" read as keep probability 0.9).
    width: factor on every filter and unit count except the classes (e.g. 1/16 for quick tests).
    A fusion (nin_parallel, nin_parallel_small): fresh branches fused with alpha 0.5; after training use
    build_parallel instead.
    """
    spec = P.get_preset(preset)
    P.check_build_args(num_classes, width, dropout)
    if spec.branches:
        header, body = (build_model(b, num_classes, dropout=dropout, width=width) for b in spec.branches)
        return build_parallel(header, body, 0.5, name=preset)
    return build_model_on_bytes(preset, spec.start, spec.stop, num_classes, dropout, width, name=preset)


def build_model_on_bytes(
    preset: str, start: int, stop: int, num_classes: int, dropout: float = 0.1, width: float = 1.0,
    name: str | None = None,
) -> keras.Model:  # fmt: skip
    """The layers of `preset` reading row bytes start:stop (a preset's own bytes, or others: e.g. the NIN_small
    layers on the body bytes as a compact body branch)."""
    P.check_build_args(num_classes, width, dropout)
    rows = keras.Input(shape=(ROW_LEN,), dtype="float32", name="row")
    x = ByteSlice(start, stop, name="bytes")(rows)
    counters: dict = {}
    for layer in P.preset_layers(preset, num_classes, width, dropout):
        x = _keras_layer(layer, _layer_name(layer, counters))(x)
    return keras.Model(rows, x, name=name or f"{preset}_{start}_{stop}")


def build_parallel(
    nin1_model: keras.Model, nin2_model: keras.Model, alpha: float, name: str = P.PARALLEL_PRESET
) -> keras.Model:
    """A fusion as one model: row [batch, 1500] -> alpha * header(row) + (1 - alpha) * body(row) (Eq. 3).

    The two trained models are used as they are (same layers, same weights); each slices its own bytes.
    `name`: the fused preset (nin_parallel; nin_parallel_small for NIN1 + NIN_small on the body).
    """
    for model in (nin1_model, nin2_model):
        if tuple(model.input_shape) != (None, ROW_LEN):
            raise ValueError(f"model {model.name} takes {model.input_shape}, expected whole rows (None, {ROW_LEN})")
    if nin1_model.output_shape != nin2_model.output_shape:
        raise ValueError(f"branch outputs differ: {nin1_model.output_shape} vs {nin2_model.output_shape}")
    if nin1_model.name == nin2_model.name:
        raise ValueError(f"both branch models are named {nin1_model.name!r}; the fused model needs distinct names")
    rows = keras.Input(shape=(ROW_LEN,), dtype="float32", name="row")
    fused = AlphaFusion(alpha, name="alpha_fusion")([nin1_model(rows), nin2_model(rows)])
    return keras.Model(rows, fused, name=name)
