"""Flow models: ONNX graphs that label a flow from its first K rows at once.

Inputs `rows` uint8 [B, K, 1500] (layout rows; the graph normalizes) and `pkt_feats` float32 [B, K, 4]
(pktnin.flow_features), output `probs` float32 [B, C]; metadata `pktnin.decide` = "flow" and
`pktnin.flow_packets` = K beside the other pktnin.* keys. A model with a name table (pktnin.engine.name_table)
takes a third input, `name_id`, which the runner computes from the rows it is given, so every caller feeds rows and
pkt_feats alone. They run on ONNX Runtime in float32 on the CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pktnin.engine.errors import ModelMismatchError
from pktnin.engine.model_file import (
    CLASSES_KEY,
    DECIDE_KEY,
    FLOW_INPUTS,
    FLOW_PACKETS_KEY,
    NAME_INPUT,
    NAMES_KEY,
    read_props,
)
from pktnin.engine.name_table import NameIndex
from pktnin.engine.ort_runner import import_onnxruntime, ort_errors, unusable_model
from pktnin.layout import ROW_LEN


def is_flow_model(path: str | os.PathLike) -> bool:
    """Whether the model file is a flow model (an .onnx whose metadata says it decides per flow)."""
    path = Path(path)
    if path.suffix != ".onnx" or not path.is_file():
        return False
    return read_props(path).get(DECIDE_KEY) == "flow"


class FlowModelRunner:
    """A flow model on ONNX Runtime (CPU, float32): infer_flows(rows [F,K,1500], feats [F,K,4]) -> [F,C]."""

    backend = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: str | os.PathLike, intra_threads: int | None = None, max_batch: int = 512) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model {self.path} not found")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_threads:
            options.intra_op_num_threads = intra_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # the pipeline needs the cores
        try:
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except ort_errors() as exc:
            raise unusable_model(self.path, exc) from None
        props = session.get_modelmeta().custom_metadata_map
        inputs = {i.name: i for i in session.get_inputs()}
        with_names = NAME_INPUT in inputs
        expected = sorted(FLOW_INPUTS + ((NAME_INPUT,) if with_names else ()))
        if sorted(inputs) != expected or [o.name for o in session.get_outputs()] != ["probs"]:
            raise ModelMismatchError(
                f"{self.path}: a flow model takes inputs {list(FLOW_INPUTS)} (and {NAME_INPUT!r} with a name table) "
                f"and gives 'probs', got {sorted(inputs)} and {[o.name for o in session.get_outputs()]}"
            )
        try:
            self._classes = list(json.loads(props[CLASSES_KEY]))
            self.flow_packets = int(props[FLOW_PACKETS_KEY])
            self._names = NameIndex(list(json.loads(props[NAMES_KEY]))) if with_names else None
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelMismatchError(f"{self.path}: flow model metadata missing or unreadable: {exc}") from None
        shape = inputs["rows"].shape
        k_dim = shape[1] if len(shape) == 3 else None
        if (
            inputs["rows"].type != "tensor(uint8)"
            or len(shape) != 3
            or shape[2] != ROW_LEN
            or (isinstance(k_dim, int) and k_dim != self.flow_packets)
        ):
            raise ModelMismatchError(
                f"{self.path}: input rows is {inputs['rows'].type} {shape}, expected uint8 "
                f"[batch,{self.flow_packets},{ROW_LEN}]"
            )
        self._session: Any = session
        self.max_batch = max_batch
        self.engine_label = "onnxruntime fp32 (flow model)"
        self.engine_reason = "flow models run in float32 on ONNX Runtime"

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    def infer_flows(self, rows: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Probabilities [F, C] of F flows from their rows uint8 [F, K, 1500] and pkt_feats float32 [F, K, 4]."""
        if self._session is None:
            raise RuntimeError(f"{self.path}: the model is closed")
        out = np.empty((len(rows), len(self._classes)), dtype=np.float32)
        for lo in range(0, len(rows), self.max_batch):
            hi = min(len(rows), lo + self.max_batch)
            feed = {"rows": np.ascontiguousarray(rows[lo:hi]), "pkt_feats": np.ascontiguousarray(feats[lo:hi])}
            if self._names is not None:
                feed[NAME_INPUT] = self._names.of_rows(feed["rows"])
            out[lo:hi] = self._session.run(["probs"], feed)[0]
        return out

    def close(self) -> None:
        self._session = None
