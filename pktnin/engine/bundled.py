"""The models shipped in pktnin/models: which are there, the default, a model option's name -> file, and where an
int8 companion of a model goes when it cannot be written beside it."""

from __future__ import annotations

import os
from pathlib import Path

from pktnin.engine.model_file import INT8_SUFFIX, int8_beside, int8_cache_path
from pktnin.errors import UsageError

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
# What `pktnin score` runs: one decision per flow from its first 8 rows (boosting, forest and port table fused).
DEFAULT_MODEL_NAME = "trees_first_flow8_rf_port_names.onnx"
# The default of what takes one row per call (the per-packet runners, TensorRT): the paper's kind of model.
PACKET_MODEL_NAME = "nin_parallel_small_port.onnx"


def bundled_models() -> list[Path]:
    """The float32 .onnx models shipped in pktnin/models, by name (an int8 companion, NAME.int8.onnx, is the
    same model in another precision: `--precision` picks it, not `--model`)."""
    return sorted(p for p in MODELS_DIR.glob("*.onnx") if not p.name.endswith(INT8_SUFFIX))


def bundled_names() -> list[str]:
    return [p.stem for p in bundled_models()]


def is_bundled(path: str | os.PathLike) -> bool:
    return Path(path).resolve().parent == MODELS_DIR.resolve()


def default_model_path(name: str = DEFAULT_MODEL_NAME) -> Path:
    """The default bundled model: pktnin/models/`name`, else the only .onnx file there."""
    if (MODELS_DIR / name).is_file():
        return MODELS_DIR / name
    found = bundled_models()
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no bundled model in {MODELS_DIR}; pass a model file")
    raise FileNotFoundError(f"several models in {MODELS_DIR} ({', '.join(p.name for p in found)}); pass one")


def default_packet_model_path() -> Path:
    """The default bundled per-packet model (one row in, one probability vector out)."""
    return default_model_path(PACKET_MODEL_NAME)


def resolve_model(spec: str | os.PathLike | None) -> Path:
    """The model file for a model option: None -> the default bundled model; an existing path -> itself; a bare
    name (no folder, no suffix or .onnx) -> the bundled model of that name, unless a file of that name is here.

    Raises UsageError naming the bundled models when a bare name matches neither a file nor a bundled model.
    """
    if spec is None:
        return default_model_path()
    path = Path(spec)
    if path.is_file():
        return path
    bare = str(spec) == path.name and path.suffix in ("", ".onnx")
    if bare and (MODELS_DIR / f"{path.stem}.onnx").is_file():
        return MODELS_DIR / f"{path.stem}.onnx"
    if path.suffix == "":
        names = ", ".join(bundled_names()) or "none"
        raise UsageError(f"{spec}: no such model file and no bundled model of that name (bundled: {names})")
    return path  # a file name that does not exist: the runner reports it with the usual message


def default_int8_path(fp32_path: str | os.PathLike) -> Path:
    """Where `pktnin quantize` writes: NAME.int8.onnx beside the model when that folder is writable and not the
    installed package's, else the cache path (model_file.find_int8 looks in both)."""
    if is_bundled(fp32_path) or not os.access(Path(fp32_path).parent, os.W_OK):
        return int8_cache_path(fp32_path)
    return int8_beside(fp32_path)
