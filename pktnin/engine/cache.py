"""Derived model files cached by content hash: checkpoint -> ONNX, ONNX -> TensorRT plan.

The cache lives in $PKTNIN_CACHE_DIR, else $XDG_CACHE_HOME/pktnin, else ~/.cache/pktnin. A key hashes the
source bytes together with every setting that changes the result, so an edited checkpoint or a different
TensorRT/GPU gets a new file and nothing is ever rebuilt twice for the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

CACHE_ENV = "PKTNIN_CACHE_DIR"
# Bump when the export or build code changes what it writes for the same inputs.
EXPORT_CODE_VERSION = 1
BUILD_CODE_VERSION = 1


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pktnin"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_key(paths: Sequence[str | os.PathLike], settings: dict) -> str:
    """Hash of the files' bytes (in order) and the settings."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(file_sha256(path).encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def cached_onnx(ckpt_path: str | os.PathLike, input_dtype: str = "float32", opset: int | None = None) -> Path:
    """The ONNX export of a checkpoint, made on first use and reused while the checkpoint is unchanged."""
    from pktnin.engine import export
    from pktnin.trainer.checkpoint import checkpoint_paths

    opset = export.DEFAULT_OPSET if opset is None else opset
    keras_path, json_path = checkpoint_paths(ckpt_path)
    for path in (keras_path, json_path):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} not found")
    key = content_key(
        [keras_path, json_path],
        {"input_dtype": input_dtype, "opset": opset, "code": EXPORT_CODE_VERSION},
    )
    target = cache_dir() / "onnx" / f"{keras_path.stem}-{key}.onnx"
    if not target.is_file():
        export.export_onnx(keras_path, target, input_dtype=input_dtype, opset=opset)
    return target


def plan_cache_path(onnx_path: str | os.PathLike, settings: dict) -> Path:
    """Where the plan built from onnx_path with these settings (precision, batches, TensorRT, GPU) lives."""
    key = content_key([onnx_path], {**settings, "code": BUILD_CODE_VERSION})
    return cache_dir() / "tensorrt" / f"{Path(onnx_path).stem}-{key}.plan"
