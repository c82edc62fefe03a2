"""The server-name cue of a flow model: a table from the registered domain of the name a flow's opening payloads
carry (pktnin.server_names: TLS server_name, HTTP Host) to a class distribution, fit on the training flows, and
its fusion with the flow model's probabilities where the flow has a name the table knows:

    y = g * y_name + (1 - g) * y_flow    (a name the table knows)
    y = y_flow                           (no name, or one never seen in training)

`fuse_names_onnx` appends the table to a flow model's graph behind one more input, `name_id` int64 [batch]
(0: no known name; i: the i-th name of the metadata's list), so the model stays one graph; the runner computes
name_id from the rows it feeds (`NameIndex`). numpy only, except fuse_names_onnx (onnx, the `train` extra).
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
    NAME_INPUT,
    NAME_PROVENANCE_KEY,
    NAME_WEIGHT_KEY,
    NAMES_KEY,
    OUTPUT_NAME,
    PRESET_KEY,
)
from pktnin.engine.output_branch import OutputBranch
from pktnin.server_names import flow_name_keys

NAMES_SUFFIX = "_names"  # preset of a model with the name table: <preset>_names
NAME_NODE_PREFIX = "names/"  # names of the nodes and constants fuse_names_onnx adds


@dataclass
class NameTable:
    """names: sorted registered domains seen in training; probs [len(names), C] float32: each name's class
    distribution, pulled toward the training class frequencies by `smoothing` units of weight; weighting:
    "packets" (a flow weighs its payload packets, as packet macro-F1 counts them) or "flows"."""

    names: list[str]
    probs: np.ndarray
    smoothing: float
    weighting: str

    @classmethod
    def fit(
        cls,
        keys: list[str | None],
        labels: np.ndarray,
        packets: np.ndarray,
        num_classes: int,
        smoothing: float = 10.0,
        weighting: str = "packets",
    ) -> NameTable:
        """keys, labels, packets: per training flow its name_key (None: no name), class and payload packets."""
        if weighting not in ("packets", "flows"):
            raise ValueError(f"weighting must be 'packets' or 'flows', got {weighting!r}")
        labels = np.asarray(labels, dtype=np.int64)
        weight = np.asarray(packets, np.float64) if weighting == "packets" else np.ones(len(labels))
        prior = np.bincount(labels, weights=weight, minlength=num_classes)
        prior = prior / max(prior.sum(), 1e-12)
        named = np.array([k is not None for k in keys], bool)
        names, inverse = np.unique(np.array([k for k in keys if k is not None], dtype=object), return_inverse=True)
        counts = np.zeros((len(names), num_classes))
        np.add.at(counts, (inverse.reshape(-1), labels[named]), weight[named])
        probs = (counts + smoothing * prior) / (counts.sum(axis=1, keepdims=True) + smoothing)
        return cls([str(n) for n in names], probs.astype(np.float32), float(smoothing), weighting)

    def index(self) -> NameIndex:
        return NameIndex(self.names)

    def predict(self, keys: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """([F, C] the table's distribution, zeros where unknown; [F] bool: the name is known)."""
        ids = self.index().ids(keys)
        table = np.vstack([np.zeros((1, self.probs.shape[1]), np.float32), self.probs])
        return table[ids], ids > 0


class NameIndex:
    """name_key -> name_id (1 + its position in the model's list; 0 for None or a name the list lacks)."""

    def __init__(self, names: list[str]) -> None:
        self._ids = {name: i + 1 for i, name in enumerate(names)}

    def ids(self, keys: list[str | None]) -> np.ndarray:
        return np.array([self._ids.get(k, 0) if k is not None else 0 for k in keys], dtype=np.int64)

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """name_id int64 [F] of flows from their rows uint8 [F, K, 1500]."""
        return self.ids(flow_name_keys(rows))


def fuse_names(flow_probs: np.ndarray, table_probs: np.ndarray, known: np.ndarray, weight: float) -> np.ndarray:
    """The fusion fuse_names_onnx builds, in numpy (for choosing the weight and checking the graph)."""
    return np.where(known[:, None], weight * table_probs + (1.0 - weight) * flow_probs, flow_probs)


def fuse_names_onnx(
    model_path: str | os.PathLike, table: NameTable, weight: float, out_path: str | os.PathLike, provenance: dict
) -> Path:
    """Write model_path's flow graph with the name table fused in (weight `weight` on the table where the flow's
    name is known) to out_path (atomically); the graph gains the input `name_id` int64 [batch]."""
    from onnx import TensorProto

    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be within [0, 1], got {weight}")
    branch = OutputBranch(model_path, NAME_NODE_PREFIX, NAME_NODE_PREFIX + "flow_probs")
    props = branch.props
    if props.get(DECIDE_KEY) != "flow":
        raise ValueError(f"{model_path}: the name table joins a flow model (metadata {DECIDE_KEY} = flow)")
    if any(i.name == NAME_INPUT for i in branch.model.graph.input):
        raise ValueError(f"{model_path}: the model has a name table already")
    classes = json.loads(props[CLASSES_KEY])
    if table.probs.shape[1] != len(classes):
        raise ValueError(f"name table has {table.probs.shape[1]} classes, {model_path} has {len(classes)}")
    const, add_node = branch.const, branch.node
    name_id = branch.input(NAME_INPUT, TensorProto.INT64, ["batch"])
    rows = np.vstack([np.zeros((1, table.probs.shape[1]), np.float32), table.probs])  # row 0: no known name
    y_name = add_node("Gather", [const("table", rows), name_id], "y_name")
    known = add_node("Unsqueeze", [add_node("Greater", [name_id, const("zero", np.int64(0))], "known1"),
                                   const("axis1", np.array([1], np.int64))], "known")  # fmt: skip
    mixed = add_node("Sum", [add_node("Mul", [y_name, const("g", np.float32(weight))], "weighted_name"),
                             add_node("Mul", [branch.inner, const("one_minus_g", np.float32(1.0 - weight))],
                                      "weighted_flow")], "mixed")  # fmt: skip
    add_node("Where", [known, mixed, branch.inner], "fuse", out=OUTPUT_NAME)
    return branch.save(out_path, {
        PRESET_KEY: props.get(PRESET_KEY, "unknown") + NAMES_SUFFIX,
        NAMES_KEY: json.dumps(table.names),
        NAME_WEIGHT_KEY: json.dumps(weight),
        NAME_PROVENANCE_KEY: json.dumps({**provenance, "smoothing": table.smoothing, "weighting": table.weighting,
                                         "names": len(table.names)}),
    })  # fmt: skip
