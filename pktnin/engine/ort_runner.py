"""ONNX Runtime runner (CPU by default): IO binding straight into the caller's preallocated output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pktnin.engine.errors import ModelMismatchError
from pktnin.engine.model_file import INPUT_NAME, OUTPUT_NAME, ModelInfo, model_precision
from pktnin.engine.ort_session import import_onnxruntime, ort_errors, unusable_model
from pktnin.engine.runner_base import DEFAULT_MAX_BATCH, Runner
from pktnin.errors import OptionError
from pktnin.layout import ROW_LEN

GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        intra_threads: int | None = None,
        inter_threads: int | None = None,
        graph_opt: str = "all",
        max_batch: int = DEFAULT_MAX_BATCH,
        providers: list | None = None,
        spin: bool = False,
    ) -> None:
        super().__init__()
        if graph_opt not in GRAPH_OPT_LEVELS:
            raise OptionError(f"graph_opt must be one of {', '.join(GRAPH_OPT_LEVELS)}, got {graph_opt!r}")
        for name, value in (("intra_threads", intra_threads), ("inter_threads", inter_threads)):
            if value is not None and value < 1:
                raise OptionError(f"{name} must be >= 1, got {value}")
        if max_batch < 1:
            raise OptionError(f"max_batch must be >= 1, got {max_batch}")
        self.path = Path(onnx_path)
        self.intra_threads = intra_threads
        self.inter_threads = inter_threads
        self.graph_opt = graph_opt
        self.spin = spin
        self.providers = providers or ["CPUExecutionProvider"]
        self._max_batch = int(max_batch)
        self._session: Any | None = None  # onnxruntime ships no type hints
        self._binding: Any | None = None
        self._scratch: np.ndarray | None = None  # float32 rows when the model takes float32 and rows come as bytes

    def load(self) -> OnnxRuntimeRunner:
        if self._session is not None:
            return self
        ort = import_onnxruntime()

        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} not found")
        if self.path.stat().st_size == 0:
            raise ModelMismatchError(f"{self.path}: not an ONNX model: the file is empty")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's notes on graph clean-up are not the user's business
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_opt]
        if self.intra_threads:
            options.intra_op_num_threads = self.intra_threads
        if not self.spin:
            # Idle intra-op threads otherwise spin between runs, taking the cores the pipeline's read, prep and
            # writer threads need (measured in docs/engine.md).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.inter_threads:
            options.inter_op_num_threads = self.inter_threads
            if self.inter_threads > 1:  # inter-op threads only matter when independent nodes may run in parallel
                options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        try:
            session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except ort_errors() as exc:
            raise unusable_model(self.path, exc) from None
        props = session.get_modelmeta().custom_metadata_map
        info = ModelInfo.from_metadata(props, str(self.path))
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise ModelMismatchError(
                f"{self.path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got "
                f"{[i.name for i in inputs]} and {[o.name for o in outputs]}"
            )
        expected_type = "tensor(uint8)" if info.input_dtype == "uint8" else "tensor(float)"
        if inputs[0].type != expected_type or inputs[0].shape[1] != ROW_LEN:
            raise ModelMismatchError(
                f"{self.path}: input is {inputs[0].type} {inputs[0].shape}, metadata says {info.input_dtype} [batch,{ROW_LEN}]"
            )
        if outputs[0].type != "tensor(float)":
            raise ModelMismatchError(
                f"{self.path}: output {OUTPUT_NAME!r} is {outputs[0].type}, expected float32 class probabilities "
                "(tensor(float))"
            )
        if len(outputs[0].shape) != 2 or outputs[0].shape[1] != len(info.classes):
            raise ModelMismatchError(
                f"{self.path}: output shape {outputs[0].shape}, expected [batch, {len(info.classes)}] "
                f"(one column per class)"
            )
        self._session = session
        self._binding = session.io_binding()
        if info.input_dtype == "float32":
            self._scratch = np.empty((self._max_batch, ROW_LEN), dtype=np.float32)
        self.precision = model_precision(props)
        self.info = info
        return self

    def _infer(self, rows: np.ndarray, out: np.ndarray, n: int) -> np.ndarray:
        assert self._session is not None and self._binding is not None  # infer() checked: loaded
        num_classes = out.shape[1]
        for start in range(0, n, self._max_batch):
            stop = min(n, start + self._max_batch)
            chunk = rows[start:stop]
            if self._scratch is not None and chunk.dtype == np.uint8:
                # Normalize on the host into a buffer allocated once: byte / 255 as float32.
                x = self._scratch[: stop - start]
                np.multiply(chunk, np.float32(1.0 / 255.0), out=x)
            else:
                x = np.ascontiguousarray(chunk)
            target = out[start:stop]
            self._binding.bind_cpu_input(INPUT_NAME, x)
            self._binding.bind_output(
                OUTPUT_NAME, "cpu", 0, np.float32, (stop - start, num_classes), target.ctypes.data
            )
            self._session.run_with_iobinding(self._binding)
        return out[:n]

    def close(self) -> None:
        if self._binding is not None:
            self._binding.clear_binding_inputs()
            self._binding.clear_binding_outputs()
        self._session = None
        self._binding = None
        self._scratch = None
        self.info = None
