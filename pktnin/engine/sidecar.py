"""The JSON file beside a TensorRT plan (MODEL.plan.json): what the plan classifies and where it can run.

A serialized TensorRT plan only loads with the TensorRT version that built it and on the GPU model it was
tuned for, so the sidecar records both and check_plan_compatible() refuses a mismatch with a message that
says how to rebuild, instead of TensorRT's deserialization error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pktnin.atomic import atomic_path
from pktnin.engine.errors import ModelMismatchError
from pktnin.engine.model_file import ModelInfo

SIDECAR_FORMAT = 1
REQUIRED_KEYS = (
    "format",
    "classes",
    "alpha",
    "layout_version",
    "preset",
    "input_dtype",
    "precision",
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "max_batch",
    "opt_batch",
    "source",
)


def sidecar_path(plan_path: str | os.PathLike) -> Path:
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


def make_sidecar(
    info: ModelInfo,
    precision: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    max_batch: int,
    opt_batch: int,
    source: str,
    source_sha256: str | None = None,
) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "classes": list(info.classes),
        "alpha": info.alpha,
        "layout_version": info.layout_version,
        "preset": info.preset,
        "input_dtype": info.input_dtype,
        "precision": precision,
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}",
        "max_batch": int(max_batch),
        "opt_batch": int(opt_batch),
        "source": source,
        "source_sha256": source_sha256,
    }


def write_sidecar(plan_path: str | os.PathLike, sidecar: dict) -> Path:
    path = sidecar_path(plan_path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def read_sidecar(plan_path: str | os.PathLike) -> dict:
    path = sidecar_path(plan_path)
    try:
        sidecar = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelMismatchError(
            f"{path} not found: a plan needs the sidecar written by `pktnin build-engine` beside it"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelMismatchError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if k not in sidecar]
    if missing:
        raise ModelMismatchError(f"{path}: missing {', '.join(missing)}; rebuild with `pktnin build-engine`")
    return sidecar


def sidecar_model_info(sidecar: dict, source: str) -> ModelInfo:
    info = ModelInfo(
        classes=tuple(sidecar["classes"]),
        alpha=sidecar["alpha"],
        layout_version=int(sidecar["layout_version"]),
        preset=sidecar["preset"],
        input_dtype=sidecar["input_dtype"],
    )
    info.check(source)
    return info


def check_plan_compatible(
    sidecar: dict,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    plan_path: str | os.PathLike,
) -> None:
    """Raise ModelMismatchError (one line) unless the plan was built by this TensorRT for this GPU model."""
    here_cc = f"{compute_capability[0]}.{compute_capability[1]}"
    problems = []
    if sidecar["tensorrt_version"] != tensorrt_version:
        problems.append(f"TensorRT {sidecar['tensorrt_version']} (this machine has {tensorrt_version})")
    if sidecar["gpu_name"] != gpu_name or sidecar["compute_capability"] != here_cc:
        problems.append(
            f"GPU {sidecar['gpu_name']} sm {sidecar['compute_capability']} (this machine has {gpu_name} sm {here_cc})"
        )
    if problems:
        raise ModelMismatchError(
            f"{plan_path} was built for {' and '.join(problems)}; rebuild it here with "
            f"`pktnin build-engine {sidecar.get('source') or 'MODEL.onnx'} --out {plan_path}`"
        )
