"""A branch appended behind an exported model's output, the way the port table and the name table are fused in.

The graph's `probs` is renamed (`inner`) so that the new nodes can read it and write a new `probs`; their
constants and nodes are named under one prefix; `save` sets the new metadata, checks the model and writes it
atomically. onnx is imported here only (the `train` extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pktnin.atomic import atomic_path
from pktnin.engine.model_file import OUTPUT_NAME, set_props


class OutputBranch:
    """model_path's graph opened for appending: `props` its metadata, `inner` the name its output now has."""

    def __init__(self, model_path: str | os.PathLike, prefix: str, inner: str) -> None:
        import onnx

        self.model = onnx.load(str(model_path))
        self.props = {p.key: p.value for p in self.model.metadata_props}
        self.prefix, self.inner = prefix, inner
        for node in self.model.graph.node:
            node.output[:] = [inner if o == OUTPUT_NAME else o for o in node.output]
            node.input[:] = [inner if i == OUTPUT_NAME else i for i in node.input]

    def input(self, name: str, elem_type: int, shape: list) -> str:
        from onnx import helper

        self.model.graph.input.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        full = f"{self.prefix}const/{name}"
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def node(self, op: str, inputs: list[str], name: str, out: str | None = None, **attrs) -> str:
        """Append one node named prefix + name; its output is `out` (OUTPUT_NAME for the last) or the same name."""
        from onnx import helper

        out = out or f"{self.prefix}{name}"
        self.model.graph.node.append(helper.make_node(op, inputs, [out], name=f"{self.prefix}{name}", **attrs))
        return out

    def save(self, out_path: str | os.PathLike, meta: dict[str, str]) -> Path:
        import onnx

        set_props(self.model, meta)
        onnx.checker.check_model(self.model)
        out_path = Path(out_path)
        with atomic_path(out_path) as tmp:
            onnx.save(self.model, str(tmp))
        return out_path
