"""Checkpoints: NAME.keras (Keras 3) plus NAME.json metadata beside it, both written atomically.

Metadata keys (docs/architecture.md): preset, classes, layout_version, alpha (fused models, else null),
input ("row1500": float32 [batch,1500] = byte/255), data (dataset dir + its meta), metrics (validation),
git_commit, created; training adds its own keys (e.g. "training").
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from pktnin.atomic import atomic_path
from pktnin.layout import LAYOUT_VERSION

INPUT_ROW1500 = "row1500"
CHECKPOINT_MODE = 0o644  # a checkpoint is meant to be shared


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(NAME.keras, NAME.json) for a path given with or without the .keras suffix."""
    path = Path(path)
    keras_path = path if path.suffix == ".keras" else path.with_name(path.name + ".keras")
    return keras_path, keras_path.with_suffix(".json")


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def make_metadata(
    preset: str,
    classes: list[str],
    data_dir: str | os.PathLike | None,
    data_meta: dict | None,
    metrics: dict | None,
    alpha: float | None = None,
    **extra: Any,
) -> dict:
    meta = {
        "preset": preset,
        "classes": list(classes),
        "layout_version": LAYOUT_VERSION,
        "alpha": alpha,
        "input": INPUT_ROW1500,
        "data": {"dir": str(Path(data_dir).resolve()) if data_dir else None, "meta": data_meta},
        "metrics": metrics,
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(extra)
    return meta


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path, mode=CHECKPOINT_MODE) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def uncompiled_copy(model):
    """The same graph and weights without optimizer state: scoring never needs Adam's moments (2x the weights).

    Rebuilt from the config, since keras.models.clone_model keeps the compiled optimizer. Build fused models
    from such copies too: a compiled sub-model would carry its optimizer into the saved file.
    """
    if getattr(model, "optimizer", None) is None:
        return model
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_checkpoint(model, path: str | os.PathLike, metadata: dict) -> Path:
    """Write NAME.keras and NAME.json atomically; returns the .keras path."""
    keras_path, json_path = checkpoint_paths(path)
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    with atomic_path(keras_path, suffix=".tmp.keras", mode=CHECKPOINT_MODE) as tmp:
        uncompiled_copy(model).save(tmp)
    write_json_atomic(json_path, metadata)
    return keras_path


def load_metadata(path: str | os.PathLike) -> dict:
    _, json_path = checkpoint_paths(path)
    try:
        with open(json_path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"checkpoint metadata {json_path} not found (expected beside the .keras file)"
        ) from None


def load_checkpoint(path: str | os.PathLike):
    """(keras model, metadata dict). Loads in Keras's safe mode; the custom layers register on import."""
    import keras

    import pktnin.keras_layers  # noqa: F401  (registers ByteSlice and AlphaFusion)

    keras_path, _ = checkpoint_paths(path)
    if not keras_path.is_file():
        raise FileNotFoundError(f"checkpoint {keras_path} not found")
    metadata = load_metadata(keras_path)
    model = keras.saving.load_model(keras_path, compile=False)
    return model, metadata
