"""Build a TensorRT plan from a checkpoint or an ONNX file, plus its sidecar JSON.

API names follow the TensorRT 10/11 Python API: Builder.create_network, OnnxParser.parse,
Builder.create_optimization_profile / IOptimizationProfile.set_shape, IBuilderConfig.set_memory_pool_limit
(MemoryPoolType.WORKSPACE), create_timing_cache / set_timing_cache / get_timing_cache().serialize(),
Builder.build_serialized_network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pktnin.atomic import atomic_path
from pktnin.engine import cache
from pktnin.engine.export import cached_onnx
from pktnin.engine.fp16 import FP16_STRATEGY_FLAG, FP16_STRATEGY_ONNX, convert_onnx_to_fp16, fp16_strategy
from pktnin.engine.gpu_env import context_current, gpu_identity, require_pycuda, require_tensorrt
from pktnin.engine.model_file import INPUT_NAME, read_model_info
from pktnin.engine.quantize import check_tensorrt_qdq, is_quantized
from pktnin.engine.runner_base import DEFAULT_MAX_BATCH
from pktnin.engine.sidecar import make_sidecar, sidecar_path, write_sidecar
from pktnin.errors import OptionError
from pktnin.layout import ROW_LEN

PRECISIONS = ("fp32", "fp16", "int8")  # int8: from a QDQ model made by `pktnin quantize --target tensorrt`
DEFAULT_WORKSPACE_MB = 1024
INT8_STRATEGY_FLAG = "int8-builder-flag"  # TensorRT <= 10: QDQ graph + BuilderFlag.INT8
INT8_STRATEGY_TYPED = "int8-strongly-typed"  # TensorRT >= 11: the QDQ graph's types are the precision


def check_build_args(precision: str, max_batch: int, opt_batch: int | None, workspace_mb: int) -> int:
    """Validate the build settings; returns the optimization batch (default: max_batch, capped at 1024)."""
    if precision not in PRECISIONS:
        raise OptionError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if max_batch < 1:
        raise OptionError(f"--max-batch must be >= 1, got {max_batch}")
    opt = min(max_batch, 1024) if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise OptionError(f"--opt-batch must be within 1..{max_batch} (the max batch), got {opt}")
    if workspace_mb < 16:
        raise OptionError(f"--workspace-mb must be >= 16, got {workspace_mb}")
    return opt


def qdq_build_precision(onnx_path: str | os.PathLike, precision: str) -> str:
    """The build precision for onnx_path: int8 for a QDQ model (checked to be one TensorRT takes), else
    `precision`, which may not be int8 for a float model (TensorRT's implicit calibration is not used)."""
    if is_quantized(onnx_path):
        check_tensorrt_qdq(onnx_path)
        return "int8"
    if precision == "int8":
        raise ValueError(
            f"{onnx_path} is a float model: int8 engines are built from the QDQ model of "
            "`pktnin quantize MODEL.onnx --data DATASET --target tensorrt`"
        )
    return precision


def onnx_source(model_path: str | os.PathLike) -> Path:
    """A float32-input ONNX file for a .keras checkpoint (exported once, cached) or an .onnx file as is."""
    model_path = Path(model_path)
    if model_path.suffix == ".keras":
        # The GPU prep kernel writes normalized float rows into the engine input, so plans take float32.
        return cached_onnx(model_path, input_dtype="float32")
    if model_path.suffix == ".onnx":
        if not model_path.is_file():
            raise FileNotFoundError(f"ONNX model {model_path} not found")
        return model_path
    raise OptionError(f"{model_path}: expected a .keras checkpoint or an .onnx file")


def build_engine(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    precision: str = "fp32",
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    device: int = 0,
) -> Path:
    """Build MODEL.plan and MODEL.plan.json from a checkpoint or ONNX file; returns the plan path."""
    opt = check_build_args(precision, max_batch, opt_batch, workspace_mb)
    trt = require_tensorrt()
    require_pycuda()
    src = onnx_source(model_path)
    info = read_model_info(src)
    precision = qdq_build_precision(src, precision)
    strategy = fp16_strategy(trt.__version__) if precision == "fp16" else None
    if precision == "int8":
        strategy = INT8_STRATEGY_FLAG if fp16_strategy(trt.__version__) == FP16_STRATEGY_FLAG else INT8_STRATEGY_TYPED
    with context_current(device), tempfile.TemporaryDirectory(prefix="pktnin-build-") as tmp:
        parse_path = src
        if strategy == FP16_STRATEGY_ONNX:
            parse_path = convert_onnx_to_fp16(src, Path(tmp) / "model_fp16.onnx")
        plan = _build_serialized(trt, parse_path, strategy, max_batch, opt, workspace_mb, timing_cache)
        gpu_name, cc = gpu_identity(device)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp_plan:
        tmp_plan.write_bytes(plan)
    sidecar = make_sidecar(
        info,
        precision,
        trt.__version__,
        gpu_name,
        cc,
        max_batch,
        opt,
        source=str(Path(model_path).resolve()),
        source_sha256=cache.file_sha256(src),
    )
    write_sidecar(out_path, sidecar)
    return out_path


def _build_serialized(
    trt, onnx_path: Path, strategy, max_batch: int, opt_batch: int, workspace_mb: int, timing_cache
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if strategy == FP16_STRATEGY_ONNX and strongly_typed is not None:
        # Accepted and ignored by TensorRT 11 (always strongly typed); on 10.x it makes the float16 graph binding.
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if strategy == FP16_STRATEGY_FLAG:
        config.set_flag(trt.BuilderFlag.FP16)
    if strategy == INT8_STRATEGY_FLAG:
        # TensorRT 10 (weakly typed network): the Q/DQ nodes set the scales, the flag allows int8 kernels.
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, ROW_LEN), (opt_batch, ROW_LEN), (max_batch, ROW_LEN))
    config.add_optimization_profile(profile)
    cache_file = Path(timing_cache) if timing_cache else None
    if cache_file is not None:
        previous = cache_file.read_bytes() if cache_file.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(previous), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine (try a larger --workspace-mb)")
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def cached_plan(
    onnx_path: str | os.PathLike, precision: str = "fp32", max_batch: int = DEFAULT_MAX_BATCH, device: int = 0
) -> Path:
    """The plan for onnx_path on this GPU and TensorRT, built once and then reused from the cache."""
    trt = require_tensorrt()
    with context_current(device):  # raises EngineUnavailableError without pycuda or a GPU
        gpu_name, cc = gpu_identity(device)
    target = cache.plan_cache_path(
        onnx_path,
        {"precision": precision, "max_batch": max_batch, "tensorrt": trt.__version__, "gpu": gpu_name, "cc": list(cc)},
    )
    if not (target.is_file() and sidecar_path(target).is_file()):
        build_engine(
            onnx_path,
            target,
            precision=precision,
            max_batch=max_batch,
            timing_cache=target.parent / "timing.cache",
            device=device,
        )
    return target
