"""The optional extras, spelled once: which `pip install 'pktnin[...]'` brings a module the base install lacks,
so that a missing one is reported as one line naming what to install instead of a bare ModuleNotFoundError."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pktnin.errors import UsageError

# Top-level module -> the extra that installs it (pyproject.toml [project.optional-dependencies]).
EXTRA_OF = {
    "tensorflow": "train",
    "keras": "train",
    "tf2onnx": "train",
    "onnxconverter_common": "train",
    "matplotlib": "train",
    "sklearn": "train",
    "onnx": "quantize",
    "openvino": "openvino",
    "ray": "ray",
    "zstandard": "zstd",
    "tensorrt": "gpu",
    "pycuda": "gpu",
    "numba_cuda": "gpu",
    "pandas": "pandas",
}


class MissingExtraError(UsageError, ImportError):
    """What was asked for needs an optional extra that is not installed (the message names the pip command)."""


def missing_extra(
    exc: ModuleNotFoundError, what: str | None = None, extra: str | None = None
) -> MissingExtraError | None:
    """The one-line error for a module of an extra that failed to import (`extra`: the one to name instead of
    the module's own), or None for any other module."""
    module = (exc.name or "").split(".")[0]
    if module not in EXTRA_OF:
        return None
    extra = extra or EXTRA_OF[module]
    needs = f"{what} needs {module}" if what else f"{module} is not installed"
    return MissingExtraError(f"{needs}: pip install 'pktnin[{extra}]'")


def check_model_file(path: str | os.PathLike) -> None:
    """A model file that does not exist is reported as missing, before anything asks for the engine it needs."""
    if not Path(path).is_file():
        raise FileNotFoundError(errno.ENOENT, "model file not found", str(path))
