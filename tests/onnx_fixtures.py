"""Tiny pktnin-shaped ONNX models built with onnx.helper, so scoring tests run without TensorFlow.

tiny_model(path, classes, seed=0, input_dtype="uint8") -> Path
    Graph: row [batch,1500] (uint8, or float32 bytes/255) -> (Cast, /255 for uint8) -> MatMul with fixed random
    weights [1500,C] -> Add bias -> Softmax -> probs [batch,C]. metadata_props carry pktnin.classes (JSON list)
    and the other keys the engine reads, so the engine's own loader accepts it.
reference_probs(path, rows) -> np.ndarray
    Probabilities computed by ONNX Runtime directly on the model: the oracle tests compare outputs against.
tiny_flow_model(path, classes, k, seed=0) -> Path
    A flow model (rows [batch,k,1500] uint8, pkt_feats [batch,k,4]): the rows' mean /255 and the flattened
    pkt_feats through fixed random matrices, added, softmax; the weights are saved beside it (.npz).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROW_LEN = 1500


def tiny_model(path, classes, seed: int = 0, input_dtype: str = "uint8") -> Path:
    path = Path(path)
    rng = np.random.default_rng(seed)
    n_classes = len(classes)
    # Logits of a few units: rows get different argmaxes and probabilities stay away from 0 and 1.
    weights = rng.normal(0.0, 0.1, size=(ROW_LEN, n_classes)).astype(np.float32)
    bias = rng.normal(0.0, 0.5, size=(n_classes,)).astype(np.float32)
    inits = [
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(bias, "b"),
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
    ]
    nodes = []
    if input_dtype == "uint8":
        in_type = TensorProto.UINT8
        nodes.append(helper.make_node("Cast", ["row"], ["row_f"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Div", ["row_f", "scale"], ["x"]))
    elif input_dtype == "float32":
        in_type = TensorProto.FLOAT
        nodes.append(helper.make_node("Identity", ["row"], ["x"]))
    else:
        raise ValueError(f"input_dtype must be uint8 or float32, got {input_dtype!r}")
    nodes += [
        helper.make_node("MatMul", ["x", "w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_pktnin",
        [helper.make_tensor_value_info("row", in_type, ["batch", ROW_LEN])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pktnin-tests")
    model.ir_version = 8
    props = {
        "pktnin.classes": json.dumps(list(classes)),
        "pktnin.alpha": "null",
        "pktnin.layout_version": "1",
        "pktnin.preset": "tiny",
        "pktnin.input_dtype": input_dtype,
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def reference_probs(path, rows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = sess.get_inputs()[0].type
    x = rows if "uint8" in dtype else (rows.astype(np.float32) / np.float32(255.0))
    return sess.run(["probs"], {"row": x})[0]


def tiny_flow_model(path: Path, classes: list[str], k: int, seed: int = 0) -> Path:
    """A two-input flow model: mean of the K rows (/255) and the flattened pkt_feats, each through a fixed
    random matrix, added, softmax. Returns the path; its weights are in the metadata for the test's numpy copy."""
    rng = np.random.default_rng(seed)
    c = len(classes)
    w_rows = rng.normal(0, 0.2, (1500, c)).astype(np.float32)
    w_feats = rng.normal(0, 1.0, (k * 4, c)).astype(np.float32)
    inits = [numpy_helper.from_array(w_rows, "w_rows"), numpy_helper.from_array(w_feats, "w_feats"),
             numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
             numpy_helper.from_array(np.array([0, k * 4], np.int64), "flat")]  # fmt: skip
    nodes = [
        helper.make_node("Cast", ["rows"], ["rows_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["rows_f", "scale"], ["x"]),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "w_rows"], ["a"]),
        helper.make_node("Reshape", ["pkt_feats", "flat"], ["feats"]),
        helper.make_node("MatMul", ["feats", "w_feats"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_flow",
        [helper.make_tensor_value_info("rows", TensorProto.UINT8, ["batch", k, 1500]),
         helper.make_tensor_value_info("pkt_feats", TensorProto.FLOAT, ["batch", k, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", c])], initializer=inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, {"pktnin.classes": json.dumps(classes), "pktnin.alpha": "null",
                               "pktnin.layout_version": "1", "pktnin.preset": "tiny_flow",
                               "pktnin.input_dtype": "uint8", "pktnin.decide": "flow",
                               "pktnin.flow_packets": str(k)})  # fmt: skip
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    np.savez(path.with_suffix(".npz"), w_rows=w_rows, w_feats=w_feats)
    return path
