"""OpenVINO runner on the CPU (optional extra `pktnin[openvino]`, imported only when this runner is opened).

The model is compiled once with the THROUGHPUT hint; infer() splits a batch across asynchronous infer requests
(as many as the compiled model asks for) that run side by side on the cores, with the GIL released, while the
caller's other threads (read, prep, write) keep going. Precision: fp32; bf16 (inference precision hint,
where the CPU has AVX-512 BF16 or AMX); int8 means a QDQ model from `pktnin quantize`, which OpenVINO runs with
int8 kernels as it stands.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pktnin.engine.errors import EngineUnavailableError, ModelMismatchError
from pktnin.engine.model_file import INPUT_NAME, META_PREFIX, ModelInfo, model_precision
from pktnin.engine.runner_base import DEFAULT_MAX_BATCH, Runner
from pktnin.errors import OptionError
from pktnin.layout import ROW_LEN

PRECISIONS = ("fp32", "bf16", "int8")
MIN_ROWS_PER_REQUEST = 16  # smaller pieces cost more in dispatch than they gain in parallelism


def require_openvino():
    """The openvino module, or EngineUnavailableError with the install hint."""
    try:
        import openvino
    except ImportError:
        raise EngineUnavailableError("OpenVINO is not installed: pip install 'pktnin[openvino]'") from None
    return openvino


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_has_bf16() -> bool:
    """True when OpenVINO's CPU plugin reports native bf16 (AVX-512 BF16 or AMX)."""
    try:
        ov = require_openvino()
    except EngineUnavailableError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        precision: str = "fp32",
        max_batch: int = DEFAULT_MAX_BATCH,
        threads: int | None = None,
        requests: int | None = None,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise OptionError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        for name, value in (("max_batch", max_batch), ("threads", threads), ("requests", requests)):
            if value is not None and value < 1:
                raise OptionError(f"{name} must be >= 1, got {value}")
        self.path = Path(onnx_path)
        self.precision = precision
        self.threads = threads
        self.requests = requests
        self._max_batch = int(max_batch)
        self._compiled = None
        self._requests: list = []

    def load(self) -> OpenVinoRunner:
        if self._compiled is not None:
            return self
        ov = require_openvino()
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} not found")
        core = ov.Core()
        model = core.read_model(str(self.path))
        props = _metadata(model)
        info = ModelInfo.from_metadata(props, str(self.path))
        quantized = model_precision(props) == "int8"
        if (self.precision == "int8") != quantized:
            raise ModelMismatchError(
                f"{self.path}: OpenVINO int8 runs the QDQ model from `pktnin quantize`; "
                f"this model is {'int8' if quantized else 'float32'} and {self.precision} was asked for"
            )
        if self.precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise EngineUnavailableError("this CPU has no native bf16 (AVX-512 BF16 or AMX) for OpenVINO")
        inputs, outputs = model.inputs, model.outputs
        if len(inputs) != 1 or INPUT_NAME not in inputs[0].get_names() or len(outputs) != 1:
            raise ModelMismatchError(f"{self.path}: expected one input {INPUT_NAME!r} and one output")
        shape = inputs[0].get_partial_shape()
        if shape.rank.get_length() != 2 or not shape[1].is_static or shape[1].get_length() != ROW_LEN:
            raise ModelMismatchError(f"{self.path}: expected input [batch, {ROW_LEN}], got {shape}")
        out_type = outputs[0].get_element_type()
        if out_type != ov.Type.f32:
            raise ModelMismatchError(
                f"{self.path}: output is {out_type}, expected float32 class probabilities (tensor(float))"
            )
        config: dict[str, str | int] = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            # int8 graphs take their precision from the QDQ nodes; the float parts stay float32 there.
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        compiled = core.compile_model(model, "CPU", config)
        nreq = self.requests or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        # Plain requests waited on in turn, no completion callbacks: a Python callback needs the GIL in an
        # OpenVINO thread while the caller may hold it waiting for a free request.
        self._requests = [compiled.create_infer_request() for _ in range(max(1, nreq))]
        self._compiled = compiled
        self.info = info
        return self

    def _infer(self, rows: np.ndarray, out: np.ndarray, n: int) -> np.ndarray:
        if rows.dtype == np.uint8 and self.input_dtype == "float32":
            rows = rows.astype(np.float32) * np.float32(1.0 / 255.0)
        nreq = len(self._requests)
        for start in range(0, n, self._max_batch):
            stop = min(n, start + self._max_batch)
            size = max(MIN_ROWS_PER_REQUEST, -(-(stop - start) // nreq))
            running = []
            for request, lo in zip(self._requests, range(start, stop, size)):
                hi = min(stop, lo + size)
                request.start_async({0: np.ascontiguousarray(rows[lo:hi])})
                running.append((request, lo, hi))
            for request, lo, hi in running:
                request.wait()
                out[lo:hi] = request.get_output_tensor(0).data[: hi - lo]
        return out[:n]

    def close(self) -> None:
        for request in self._requests:
            request.wait()
        self._requests = []
        self._compiled = None
        self.info = None


def _metadata(model) -> dict[str, str]:
    """The ONNX metadata_props OpenVINO keeps in the model's rt_info under 'framework'."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    keys = list(info["framework"].keys()) if hasattr(info["framework"], "keys") else []
    return {k: model.get_rt_info(["framework", k]).astype(str) for k in keys if k.startswith(META_PREFIX)}
