"""open_runner(): any model file (checkpoint, ONNX, plan, or the bundled model) -> a loaded Runner;
open_runner_with_choice(): the same, with the EngineChoice (what runs and why) beside it.

backend "auto" picks TensorRT when it imports, pycuda imports and a GPU is present, else the CPU engines
(pktnin.engine.precision: ONNX Runtime, or OpenVINO when installed, at the precision asked for). A checkpoint is
exported to ONNX once and cached by content hash; with TensorRT the ONNX is built into a plan once per
GPU/TensorRT and cached the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pktnin.engine.bundled import default_packet_model_path
from pktnin.engine.errors import EngineUnavailableError
from pktnin.engine.export import cached_onnx
from pktnin.engine.gpu_env import tensorrt_unavailable_reason
from pktnin.engine.model_file import find_int8, model_precision, read_props
from pktnin.engine.ort_runner import OnnxRuntimeRunner
from pktnin.engine.precision import open_cpu_runner
from pktnin.engine.runner_base import DEFAULT_MAX_BATCH, EngineChoice, Runner
from pktnin.engine.trt_build import cached_plan, onnx_source
from pktnin.engine.trt_runner import TensorRTRunner
from pktnin.errors import OptionError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino")
# The input the CPU engine gets for checkpoints: measured as fast as float32 rows normalized on the host
# (docs/engine.md) while skipping that pass and its buffer; the CPU kernel already produces uint8 rows.
ORT_INPUT_DTYPE = "uint8"


def resolve_backend(backend: str = "auto", model_path: str | os.PathLike | None = None) -> str:
    """'tensorrt', 'onnxruntime' or 'openvino' (auto without a GPU: onnxruntime, the CPU engine always there);
    raises EngineUnavailableError (one line) when tensorrt is asked for but missing."""
    if backend not in BACKENDS:
        raise OptionError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    suffix = Path(model_path).suffix if model_path is not None else ""
    if suffix == ".plan":
        if backend in ("onnxruntime", "openvino"):
            raise OptionError(f"{model_path}: a TensorRT plan runs only with the tensorrt backend")
        backend = "tensorrt"
    if backend in ("onnxruntime", "openvino"):
        return backend
    reason = tensorrt_unavailable_reason()
    if reason is None:
        return "tensorrt"
    if backend == "tensorrt":
        raise EngineUnavailableError(reason)
    return "onnxruntime"


def open_runner(model_path: str | os.PathLike | None = None, backend: str = "auto", **options: Any) -> Runner:
    """A loaded runner (open_runner_with_choice without the choice)."""
    return open_runner_with_choice(model_path, backend, **options)[0]


def open_runner_with_choice(
    model_path: str | os.PathLike | None = None,
    backend: str = "auto",
    *,
    intra_threads: int | None = None,
    inter_threads: int | None = None,
    graph_opt: str = "all",
    max_batch: int | None = None,
    precision: str = "fp32",
    device: int = 0,
    engine_workers: int | None = 1,
) -> tuple[Runner, EngineChoice]:
    """A loaded runner for a .keras checkpoint, an .onnx file, a .plan file or (None) the bundled per-packet model, and
    the engine choice: what runs, why, and its recorded agreement with float32.

    On the CPU, precision is fp32, bf16 (OpenVINO), int8 (the model's `pktnin quantize` output) or auto
    (pktnin.engine.precision); engine_workers is 1 (one session), N (N single-thread ONNX Runtime sessions) or
    None (measure both). TensorRT takes fp32, fp16 or int8 (a QDQ model); auto means fp32 there.
    """
    path = Path(model_path) if model_path is not None else default_packet_model_path()
    if path.suffix not in (".keras", ".onnx", ".plan"):
        raise OptionError(f"{path}: expected a .keras checkpoint, an .onnx model or a .plan engine")
    chosen = resolve_backend(backend, path)
    if not path.is_file():
        raise FileNotFoundError(f"model {path} not found")
    if chosen == "tensorrt":
        trt_precision = "fp32" if precision == "auto" else precision
        runner: Runner = TensorRTRunner(_plan(path, trt_precision, max_batch, device), device=device).load()
        reason = "a GPU and TensorRT are here" if backend == "auto" else "--backend tensorrt"
        return runner, EngineChoice(f"tensorrt {runner.precision}", reason)
    if path.suffix == ".keras":
        path = cached_onnx(path, input_dtype=ORT_INPUT_DTYPE)
    if chosen == "onnxruntime" and precision == "fp32" and engine_workers == 1:
        runner = OnnxRuntimeRunner(
            path,
            intra_threads=intra_threads,
            inter_threads=inter_threads,
            graph_opt=graph_opt,
            max_batch=DEFAULT_MAX_BATCH if max_batch is None else max_batch,
        ).load()
        return runner, EngineChoice("onnxruntime fp32, one session", "--precision fp32")
    cpu_backend = "auto" if backend == "auto" else chosen
    runner, choice = open_cpu_runner(
        path, cpu_backend, precision, max_batch=max_batch, threads=intra_threads, workers=engine_workers
    )
    return runner, choice.engine_choice()


def _plan(path: Path, precision: str, max_batch: int | None, device: int) -> Path:
    """The TensorRT plan to run: a .plan as given, else built (once, cached) from the model or its int8 form."""
    if path.suffix == ".plan":
        return path
    source = onnx_source(path)
    if precision == "int8" and model_precision(read_props(source)) != "int8":
        int8_path = find_int8(source)
        if int8_path is None:
            raise FileNotFoundError(f"no int8 model of {path}: make one with `pktnin quantize --target tensorrt`")
        source = int8_path
    return cached_plan(source, precision=precision, max_batch=max_batch or DEFAULT_MAX_BATCH, device=device)
