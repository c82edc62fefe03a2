"""Bundled models by name, what their metadata says (classes, training provenance, mask), and the speeds that
`pktnin bench` recorded for a model on this machine.

A model option takes either a file or the name of a bundled model (`nin_parallel_small_port`, `nin1_port`), so a user
never needs the site-packages path. The record of measured speeds lives in the cache directory beside the
derived models (pktnin.engine.cache), keyed by the model file's hash: a figure is for one file on one machine.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from pktnin.atomic import atomic_path
from pktnin.engine.bundled import MODELS_DIR, bundled_models, bundled_names, is_bundled, resolve_model
from pktnin.engine.cache import cache_dir, cpu_model, file_sha256
from pktnin.engine.model_file import (
    ALPHA_KEY,
    CLASSES_KEY,
    DECIDE_KEY,
    FLOW_PACKETS_KEY,
    INPUT_DTYPE_KEY,
    NAMES_KEY,
    PRESET_KEY,
    PROVENANCE_KEY,
    agreement_record,
    agreement_rows,
    find_int8,
    json_prop,
    read_props,
)
from pktnin.engine.openvino_runner import openvino_available

SPEEDS_FILE = "bench-speeds.json"
__all__ = ["MODELS_DIR", "bundled_models", "bundled_names", "is_bundled", "resolve_model"]


def model_provenance(path: str | os.PathLike) -> dict | None:
    """What trained a model (data source, split, mask, counts), or None when the file does not say.

    ONNX files carry it as pktnin.provenance; a checkpoint NAME.keras has it in NAME.json ("data").
    """
    path = Path(path)
    try:
        if path.suffix == ".onnx":
            return json_prop(read_props(path), PROVENANCE_KEY)
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
    """One bundled model: name, preset, classes, input, file size, provenance, the agreement of its int8 and
    bf16 engines with float32 per check set, and the speed recorded on this machine."""
    meta = read_props(path)
    provenance = json_prop(meta, PROVENANCE_KEY, {})
    data = provenance.get("data") or {}
    return {
        "name": path.stem,
        "path": str(path),
        "preset": meta.get(PRESET_KEY),
        "alpha": json_prop(meta, ALPHA_KEY),
        "classes": json_prop(meta, CLASSES_KEY, []),
        "input_dtype": meta.get(INPUT_DTYPE_KEY),
        # "flow": one decision per flow from its first flow_packets rows; "packet": every packet alone
        "decide": meta.get(DECIDE_KEY, "packet"),
        "flow_packets": int(meta[FLOW_PACKETS_KEY]) if FLOW_PACKETS_KEY in meta else None,
        # a flow model's table of server names (TLS server_name, HTTP Host): how many registered domains it knows
        "server_names": len(json_prop(meta, NAMES_KEY, [])) if NAMES_KEY in meta else None,
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
        "agreement": int8_agreement(path),
        "speed": recorded_speed(path),
    }


def int8_agreement(path: Path) -> dict:
    """{"engines": {"<backend>:<precision>": {check set: agreement}}, "rows": {check set: rows}} recorded in the
    model's int8 companion ({} without one)."""
    int8 = find_int8(path)
    if int8 is None:
        return {}
    props = read_props(int8)
    return {"engines": agreement_record(props), "rows": agreement_rows(props)}


def _speeds_path() -> Path:
    return cache_dir() / SPEEDS_FILE


def _read_speeds() -> dict:
    try:
        return json.loads(_speeds_path().read_text())
    except (OSError, ValueError):
        return {}


def record_speed(model_path: str | os.PathLike, result: dict) -> Path:
    """Keep the medians of one `pktnin bench` result for this model file (latest per backend wins)."""
    speeds = _read_speeds()
    entry = speeds.setdefault(file_sha256(model_path), {})
    entry[result["backend"]] = {
        "engine_packets_per_s": result["engine"]["packets_per_s"],
        "end_to_end_packets_per_s": result["end_to_end"]["packets_per_s"],
        "batch": result["batch"],
        "rows": result["rows"],
        "cpus": os.cpu_count(),
        "machine": cpu_model(),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = _speeds_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(speeds, indent=2, sort_keys=True) + "\n")
    return path


def recorded_speed(model_path: str | os.PathLike) -> dict | None:
    """{backend: medians} that `pktnin bench --record` recorded for this model file on this CPU, for the backends
    installed here, or None when there are none."""
    entry = _read_speeds().get(file_sha256(model_path)) or {}
    installed = {"onnxruntime", "tensorrt"} | ({"openvino"} if openvino_available() else set())
    here = cpu_model()
    kept = {
        backend: figures
        for backend, figures in entry.items()
        if backend.split()[0] in installed and figures.get("machine") == here
    }
    return kept or None
