"""open_runner(): any model file (checkpoint, ONNX, plan, or the bundled model) -> a loaded Runner.

backend "auto" picks TensorRT when it imports, pycuda imports and a GPU is present, else the CPU engines
(pktnin.engine.precision: ONNX Runtime, or OpenVINO when installed, at the precision asked for). A checkpoint is exported to ONNX once and cached by content hash; with TensorRT the ONNX is built into a
plan once per GPU/TensorRT and cached the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from pktnin.engine.gpu_env import tensorrt_unavailable_reason
from pktnin.engine.ort_runner import OnnxRuntimeRunner
from pktnin.engine.runner_base import DEFAULT_MAX_BATCH, EngineUnavailableError, Runner
from pktnin.errors import OptionError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino")
# The input the CPU engine gets for checkpoints: measured as fast as float32 rows normalized on the host
# (docs/engine.md) while skipping that pass and its buffer; the CPU kernel already produces uint8 rows.
ORT_INPUT_DTYPE = "uint8"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL_NAMES = ("nin_parallel_small_port.onnx",)


def default_model_path() -> Path:
    """The default bundled model: pktnin/models/nin_parallel_small_port.onnx, else the only .onnx file there."""
    for name in DEFAULT_MODEL_NAMES:
        if (MODELS_DIR / name).is_file():
            return MODELS_DIR / name
    from pktnin.engine.catalog import bundled_models  # the float32 models, without their int8 companions

    found = bundled_models()
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no bundled model in {MODELS_DIR}; pass a model file")
    raise FileNotFoundError(f"several models in {MODELS_DIR} ({', '.join(p.name for p in found)}); pass one")


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


def open_runner(
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
) -> Runner:
    """A loaded runner for a .keras checkpoint, an .onnx file, a .plan file or (None) the bundled model.

    On the CPU, precision is fp32, bf16 (OpenVINO), int8 (the model's `pktnin quantize` output) or auto
    (pktnin.engine.precision); engine_workers is 1 (one session), N (N single-thread ONNX Runtime sessions) or
    None (measure both). TensorRT takes fp32, fp16 or int8 (a QDQ model); auto means fp32 there.
    The runner's engine_label and engine_reason say what runs and why.
    """
    path = Path(model_path) if model_path is not None else default_model_path()
    if path.suffix not in (".keras", ".onnx", ".plan"):
        raise OptionError(f"{path}: expected a .keras checkpoint, an .onnx model or a .plan engine")
    chosen = resolve_backend(backend, path)
    if not path.is_file():
        raise FileNotFoundError(f"model {path} not found")
    if chosen == "tensorrt":
        from pktnin.engine.trt_build import cached_plan, onnx_source
        from pktnin.engine.trt_runner import TensorRTRunner

        trt_precision = "fp32" if precision == "auto" else precision
        source = path
        if trt_precision == "int8" and path.suffix != ".plan":
            from pktnin.engine.precision import find_int8, model_precision, model_props

            onnx_path = onnx_source(path)
            if model_precision(model_props(onnx_path)) != "int8":
                int8_path = find_int8(onnx_path)
                if int8_path is None:
                    raise FileNotFoundError(
                        f"no int8 model of {path}: make one with `pktnin quantize --target tensorrt`"
                    )
                source = int8_path
        plan = (
            path
            if path.suffix == ".plan"
            else cached_plan(
                onnx_source(source), precision=trt_precision, max_batch=max_batch or DEFAULT_MAX_BATCH, device=device
            )
        )
        return TensorRTRunner(plan, device=device).load()
    if path.suffix == ".keras":
        from pktnin.engine.cache import cached_onnx

        path = cached_onnx(path, input_dtype=ORT_INPUT_DTYPE)
    if chosen == "onnxruntime" and precision == "fp32" and engine_workers == 1:
        return OnnxRuntimeRunner(
            path,
            intra_threads=intra_threads,
            inter_threads=inter_threads,
            graph_opt=graph_opt,
            max_batch=DEFAULT_MAX_BATCH if max_batch is None else max_batch,
        ).load()
    from pktnin.engine.precision import open_cpu_runner

    cpu_backend = "auto" if backend == "auto" else chosen
    runner, choice = open_cpu_runner(
        path, cpu_backend, precision, max_batch=max_batch, threads=intra_threads, workers=engine_workers
    )
    runner.engine_reason = choice.reason
    return runner
