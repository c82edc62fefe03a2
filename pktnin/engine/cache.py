"""Where derived files are cached, and the content hashes that key them (checkpoint -> ONNX in export.py,
ONNX -> TensorRT plan in trt_build.py, int8 companions in model_file.py, engine timings in precision.py).

The cache lives in $PKTNIN_CACHE_DIR, else $XDG_CACHE_HOME/pktnin, else ~/.cache/pktnin. A key hashes the
source bytes together with every setting that changes the result, so an edited checkpoint or a different
TensorRT/GPU gets a new file and nothing is ever rebuilt twice for the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path

CACHE_ENV = "PKTNIN_CACHE_DIR"
# Bump when the build code changes what it writes for the same inputs.
BUILD_CODE_VERSION = 1


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pktnin"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform reports: part of timing keys."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def plan_cache_path(onnx_path: str | os.PathLike, settings: dict) -> Path:
    """Where the plan built from onnx_path with these settings (precision, batches, TensorRT, GPU) lives."""
    key = content_key([onnx_path], {**settings, "code": BUILD_CODE_VERSION})
    return cache_dir() / "tensorrt" / f"{Path(onnx_path).stem}-{key}.plan"
