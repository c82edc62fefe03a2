"""Bundled models by name, what their metadata says (classes, training provenance, mask), and the speeds that
`pktnin bench` recorded for a model on this machine.

A model option takes either a file or the name of a bundled model (`nin_parallel_small_port`, `nin1_port`), so a user
never needs the site-packages path. The record of measured speeds lives in the cache directory beside the
derived models (pktnin.engine.cache), keyed by the model file's hash: a figure is for one file on one machine.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from pktnin.engine.runners import MODELS_DIR, default_model_path
from pktnin.errors import UsageError

SPEEDS_FILE = "bench-speeds.json"


def bundled_models() -> list[Path]:
    """The float32 .onnx models shipped in pktnin/models, by name (an int8 companion, NAME.int8.onnx, is the
    same model in another precision: `--precision` picks it, not `--model`)."""
    from pktnin.engine.precision import INT8_SUFFIX

    return sorted(p for p in MODELS_DIR.glob("*.onnx") if not p.name.endswith(INT8_SUFFIX))


def bundled_names() -> list[str]:
    return [p.stem for p in bundled_models()]


def is_bundled(path: str | os.PathLike) -> bool:
    return Path(path).resolve().parent == MODELS_DIR.resolve()


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


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key/value metadata of an ONNX file: through onnx when installed, else ONNX Runtime (a plain
    `pip install pktnin` has no onnx)."""
    from pktnin.engine.precision import model_props

    return model_props(path)


def model_provenance(path: str | os.PathLike) -> dict | None:
    """What trained a model (data source, split, mask, counts), or None when the file does not say.

    ONNX files carry it as pktnin.provenance; a checkpoint NAME.keras has it in NAME.json ("data").
    """
    path = Path(path)
    try:
        if path.suffix == ".onnx":
            raw = onnx_metadata(path).get("pktnin.provenance")
            return json.loads(raw) if raw else None
        if path.suffix == ".keras":
            meta = json.loads(path.with_suffix(".json").read_text())
            return {"data": meta.get("data", {}), "created": meta.get("created")}
    except (OSError, ValueError):
        return None
    return None


def trained_mask(path: str | os.PathLike) -> str | None:
    """The masking profile the model's training rows were made with, when its metadata records it."""
    provenance = model_provenance(path) or {}
    mask = (provenance.get("data") or {}).get("mask")
    return str(mask) if mask else None


def mask_warning(path: str | os.PathLike, mask: str) -> str | None:
    """A one-line warning when `mask` differs from the mask the model was trained with, else None."""
    trained = trained_mask(path)
    if trained is None or trained == mask:
        return None
    return (
        f"--mask {mask} differs from the mask {Path(path).name} was trained with ({trained}): rows will not look "
        f"like its training rows and its predictions will be off; use --mask {trained}"
    )


def describe_bundled(path: Path) -> dict:
    """One bundled model: name, preset, classes, input, file size, provenance and the recorded speed."""
    meta = onnx_metadata(path)
    provenance = json.loads(meta["pktnin.provenance"]) if meta.get("pktnin.provenance") else {}
    data = provenance.get("data") or {}
    return {
        "name": path.stem,
        "path": str(path),
        "preset": meta.get("pktnin.preset"),
        "alpha": json.loads(meta.get("pktnin.alpha", "null")),
        "classes": json.loads(meta.get("pktnin.classes", "[]")),
        "input_dtype": meta.get("pktnin.input_dtype"),
        "size_bytes": path.stat().st_size,
        "trained": {
            "created": provenance.get("created"),
            "fit": provenance.get("fit"),
            "rows": data.get("n_rows"),
            "split": data.get("split_mode"),
            "mask": data.get("mask"),
            "keep_dns": data.get("keep_dns"),
            "labels": data.get("label_column"),
            "source": data.get("source_kind"),
        },
        "speed": recorded_speed(path),
    }


def _speeds_path() -> Path:
    from pktnin.engine.cache import cache_dir

    return cache_dir() / SPEEDS_FILE


def _read_speeds() -> dict:
    try:
        return json.loads(_speeds_path().read_text())
    except (OSError, ValueError):
        return {}


def record_speed(model_path: str | os.PathLike, result: dict) -> Path:
    """Keep the medians of one `pktnin bench` result for this model file (latest per backend wins)."""
    from pktnin.atomic import atomic_path
    from pktnin.engine.cache import file_sha256

    speeds = _read_speeds()
    entry = speeds.setdefault(file_sha256(model_path), {})
    entry[result["backend"]] = {
        "engine_packets_per_s": result["engine"]["packets_per_s"],
        "end_to_end_packets_per_s": result["end_to_end"]["packets_per_s"],
        "batch": result["batch"],
        "rows": result["rows"],
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = _speeds_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(speeds, indent=2, sort_keys=True) + "\n")
    return path


def recorded_speed(model_path: str | os.PathLike) -> dict | None:
    """{backend: medians} that `pktnin bench` recorded for this model file, or None when never measured."""
    from pktnin.engine.cache import file_sha256

    speeds = _read_speeds()
    if not speeds:
        return None
    return speeds.get(file_sha256(model_path))
