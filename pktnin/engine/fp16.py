"""float16 ONNX with float32 (or uint8) inputs and float32 outputs kept, for strongly typed TensorRT builds.

TensorRT 10 builds fp16 engines from a float32 graph with BuilderFlag.FP16. TensorRT 11 removed the precision
flags (every network is strongly typed), so the precision has to be in the graph itself: the weights and
activations become float16 and Cast nodes at the edges keep the model's interface unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from pktnin.engine.export import save_onnx

FP16_STRATEGY_FLAG = "builder-flag"  # TensorRT <= 10: float32 graph + BuilderFlag.FP16
FP16_STRATEGY_ONNX = "onnx-fp16"  # TensorRT >= 11: float16 graph, strongly typed network


def fp16_strategy(tensorrt_version: str) -> str:
    """How to get an fp16 engine from this TensorRT version."""
    try:
        major = int(str(tensorrt_version).split(".")[0])
    except ValueError:
        raise ValueError(f"cannot read TensorRT version {tensorrt_version!r}") from None
    return FP16_STRATEGY_FLAG if major <= 10 else FP16_STRATEGY_ONNX


def convert_model_to_fp16(proto):
    """A float16 copy of an ONNX ModelProto with its input/output types and metadata kept."""
    import onnx
    from onnx import TensorProto
    from onnxconverter_common import float16

    # A Cast from a non-float graph input (the uint8 rows) keeps its float32 output type after conversion
    # but gets a float16 value_info, which the checker rejects; keep such casts in float32 (the converter
    # then inserts a float32 -> float16 cast after them).
    non_float_inputs = {
        value.name
        for value in proto.graph.input
        if value.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16)
    }
    input_casts = [
        node.name for node in proto.graph.node if node.op_type == "Cast" and set(node.input) & non_float_inputs
    ]
    original = proto
    proto = onnx.ModelProto()
    proto.CopyFrom(original)  # the converter edits its argument in place
    converted = float16.convert_float_to_float16(
        proto,
        keep_io_types=True,
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST),
        node_block_list=input_casts,
    )
    # The converter keeps metadata_props in current versions; restore them in case a version drops them.
    if {p.key for p in converted.metadata_props} != {p.key for p in original.metadata_props}:
        del converted.metadata_props[:]
        converted.metadata_props.extend(original.metadata_props)
    return converted


def convert_onnx_to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the float16 version of the ONNX file src to dst (atomically); returns dst."""
    import onnx

    return save_onnx(convert_model_to_fp16(onnx.load_model(str(src))), dst)
