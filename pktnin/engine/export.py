"""Keras checkpoint -> ONE ONNX graph: input `row` [batch,1500], output `probs` [batch,C], dynamic batch.

The fused NIN_parallel model is already one Keras model (the branches slice their bytes inside the graph), so
the export is a single tf2onnx conversion of a tf.function around it. With input_dtype="uint8" the cast and
the /255 normalization go inside the graph (tf2onnx emits Cast + Mul(1/255)), so callers pass raw bytes.
TensorFlow, tf2onnx and onnx are imported inside the functions: they are the `train` extra.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pktnin.atomic import atomic_path
from pktnin.checkpoint import checkpoint_paths, load_checkpoint
from pktnin.engine.cache import cache_dir, content_key
from pktnin.engine.errors import ModelMismatchError
from pktnin.engine.graph_rewrite import simplify_conv1d
from pktnin.engine.model_file import (
    INPUT_DTYPES,
    INPUT_NAME,
    OUTPUT_NAME,
    PROVENANCE_KEY,
    ModelInfo,
    set_model_info,
    set_props,
)
from pktnin.errors import OptionError
from pktnin.layout import LAYOUT_VERSION, ROW_LEN

DEFAULT_OPSET = 17
MAX_OPSET = 18  # tf2onnx 1.17 refuses newer opsets
BATCH_DIM = "batch"
# Bump when the export code changes what it writes for the same checkpoint.
EXPORT_CODE_VERSION = 1


def export_onnx(
    ckpt_path: str | os.PathLike,
    out_path: str | os.PathLike,
    input_dtype: str = "float32",
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a checkpoint (NAME.keras + NAME.json) to ONNX at out_path (written atomically); returns out_path."""
    check_export_args(input_dtype, opset)
    model, meta = load_checkpoint(ckpt_path)
    info = model_info_from_checkpoint_meta(meta, input_dtype, source=str(ckpt_path))
    return export_keras_model(model, out_path, info, opset=opset, provenance=checkpoint_provenance(meta))


def checkpoint_provenance(meta: dict) -> dict:
    """What trained a checkpoint, compactly (no per-file tables): travels inside the ONNX as pktnin.provenance."""
    data = meta.get("data") or {}
    dmeta = data.get("meta") or {}
    keep = ("source_kind", "labels_csv", "label_column", "split_mode", "seed", "mask", "keep_dns", "n_rows", "counts")
    training = meta.get("training") or {}
    return {
        "git_commit": meta.get("git_commit"),
        "created": meta.get("created"),
        "data": {"dir": data.get("dir"), **{k: dmeta[k] for k in keep if k in dmeta}},
        "fit": training.get("fit", "train"),  # "train+val": refit, so no validation score is claimed
        "augment": training.get("augment", "none"),
        "validation_macro_f1": (meta.get("metrics") or {}).get("macro_f1"),
        "branches": {
            name: {
                "checkpoint": b.get("checkpoint"),
                "fit": (b.get("settings") or {}).get("fit", "train"),
                "epochs": (b.get("settings") or {}).get("best_epoch"),
                "augment": (b.get("settings") or {}).get("augment", "none"),
                "validation_macro_f1": (b.get("val_metrics") or {}).get("macro_f1"),
            }
            for name, b in (training.get("branches") or {}).items()
        },
    }


def model_info_from_checkpoint_meta(meta: dict, input_dtype: str, source: str) -> ModelInfo:
    try:
        info = ModelInfo(
            classes=tuple(str(c) for c in meta["classes"]),
            alpha=None if meta.get("alpha") is None else float(meta["alpha"]),
            layout_version=int(meta.get("layout_version", LAYOUT_VERSION)),
            preset=str(meta.get("preset", "unknown")),
            input_dtype=input_dtype,
        )
    except KeyError as exc:
        raise ModelMismatchError(f"{source}: checkpoint metadata lacks {exc.args[0]!r}") from None
    info.check(source)
    return info


def export_keras_model(
    model, out_path: str | os.PathLike, info: ModelInfo, opset: int = DEFAULT_OPSET, provenance: dict | None = None
) -> Path:
    """Convert an in-memory Keras model (input float32 [batch,1500] = bytes/255, output probabilities)."""
    proto = keras_to_onnx(model, info.input_dtype, opset)
    simplify_conv1d(proto)
    num_classes = proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    if num_classes != len(info.classes):
        raise ModelMismatchError(f"the model outputs {num_classes} classes but its metadata lists {len(info.classes)}")
    set_model_info(proto, info)
    if provenance is not None:
        set_props(proto, {PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)})
    return save_onnx(proto, out_path)


def cached_onnx(ckpt_path: str | os.PathLike, input_dtype: str = "float32", opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX export of a checkpoint, made on first use and reused while the checkpoint is unchanged (cached by
    content hash in pktnin.engine.cache)."""
    keras_path, json_path = checkpoint_paths(ckpt_path)
    for path in (keras_path, json_path):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} not found")
    key = content_key(
        [keras_path, json_path], {"input_dtype": input_dtype, "opset": opset, "code": EXPORT_CODE_VERSION}
    )
    target = cache_dir() / "onnx" / f"{keras_path.stem}-{key}.onnx"
    if not target.is_file():
        export_onnx(keras_path, target, input_dtype=input_dtype, opset=opset)
    return target


def save_onnx(proto, out_path: str | os.PathLike) -> Path:
    """Check an ONNX ModelProto (with shape inference) and write it to out_path atomically; returns out_path."""
    import onnx

    onnx.checker.check_model(proto, full_check=True)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save_model(proto, str(tmp))
    return out_path


def keras_to_onnx(model, input_dtype: str = "float32", opset: int = DEFAULT_OPSET):
    """The ONNX ModelProto of `model` with the pktnin input/output names and a symbolic batch dimension."""
    check_export_args(input_dtype, opset)
    import tensorflow as tf
    import tf2onnx

    dtype = tf.uint8 if input_dtype == "uint8" else tf.float32
    spec = tf.TensorSpec([None, ROW_LEN], dtype, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(row):
        x = tf.cast(row, tf.float32) / 255.0 if input_dtype == "uint8" else row
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset)
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(f"expected one input and one output, the graph has {len(graph.input)} and {len(graph.output)}")
    _rename_value(graph, graph.input[0].name, INPUT_NAME)
    _rename_value(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 2:
            raise ValueError(f"{value.name}: expected a 2-D tensor, got {len(dims)} dimensions")
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM
    out_dims = graph.output[0].type.tensor_type.shape.dim
    if not out_dims[1].dim_value:
        raise ValueError("the model's output has no fixed class dimension")
    proto.producer_name = "pktnin"
    return proto


def check_export_args(input_dtype: str, opset: int) -> None:
    if input_dtype not in INPUT_DTYPES:
        raise OptionError(f"input dtype must be one of {', '.join(INPUT_DTYPES)}, got {input_dtype!r}")
    if not 13 <= int(opset) <= MAX_OPSET:
        raise OptionError(f"opset {opset} not supported: use 13..{MAX_OPSET} (tf2onnx refuses newer opsets)")


def _rename_value(graph, old: str, new: str) -> None:
    """Rename a value everywhere it appears (node inputs/outputs, graph inputs/outputs, value_info)."""
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
