"""The pktnin ONNX model file: its tensor names, its metadata keys, reading and writing them, and where a float32
model's int8 companion lives.

A pktnin model is one ONNX graph, input `row` [batch,1500] (uint8 bytes or float32 bytes/255), output `probs`
[batch,C] float32, with string metadata_props under the `pktnin.` prefix. Every reader and writer of that
metadata goes through this module, so each key is spelled once.

onnx is an optional extra: metadata is read through it when installed, else through ONNX Runtime.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pktnin.engine.cache import cache_dir, file_sha256
from pktnin.engine.errors import ModelMismatchError
from pktnin.engine.ort_session import import_onnxruntime, ort_errors, unusable_model
from pktnin.layout import LAYOUT_VERSION

INPUT_NAME = "row"
OUTPUT_NAME = "probs"
INPUT_DTYPES = ("float32", "uint8")

META_PREFIX = "pktnin."
CLASSES_KEY = META_PREFIX + "classes"  # JSON list of class names, in output order
ALPHA_KEY = META_PREFIX + "alpha"  # JSON number or null: the parallel model's branch weight
LAYOUT_VERSION_KEY = META_PREFIX + "layout_version"
PRESET_KEY = META_PREFIX + "preset"
INPUT_DTYPE_KEY = META_PREFIX + "input_dtype"
PROVENANCE_KEY = META_PREFIX + "provenance"  # JSON: what trained the model
PRECISION_KEY = META_PREFIX + "precision"  # "int8" in a quantized model; absent (float32) otherwise
QUANTIZATION_KEY = META_PREFIX + "quantization"  # JSON: how the int8 model was made, from which float32 file
AGREEMENT_KEY = META_PREFIX + "agreement"  # JSON: argmax agreement with float32 per engine and check set
PORT_BETA_KEY = META_PREFIX + "port_beta"
PORT_PROVENANCE_KEY = META_PREFIX + "port_provenance"
# Flow models (one decision per flow from its first K rows): inputs FLOW_INPUTS, output OUTPUT_NAME.
DECIDE_KEY = META_PREFIX + "decide"  # "flow" in a flow model; absent in a per-packet model
FLOW_PACKETS_KEY = META_PREFIX + "flow_packets"  # K
FLOW_INPUTS = ("rows", "pkt_feats")  # uint8 [batch, K, 1500] and float32 [batch, K, 4]
# A flow model with a name table (pktnin.engine.name_table) takes one more input, computed from its rows.
NAME_INPUT = "name_id"  # int64 [batch]: 0 for no known server name, i for the i-th of NAMES_KEY's list
NAMES_KEY = META_PREFIX + "server_names"  # JSON list of registered domains
NAME_WEIGHT_KEY = META_PREFIX + "name_weight"
NAME_PROVENANCE_KEY = META_PREFIX + "name_provenance"
REQUIRED_KEYS = (CLASSES_KEY, ALPHA_KEY, LAYOUT_VERSION_KEY, PRESET_KEY, INPUT_DTYPE_KEY)

INT8_SUFFIX = ".int8.onnx"  # NAME.int8.onnx: the int8 companion of NAME.onnx


@dataclass(frozen=True)
class ModelInfo:
    """What a runner needs to know about its model besides the graph."""

    classes: tuple[str, ...]
    alpha: float | None
    layout_version: int
    preset: str
    input_dtype: str

    def to_metadata(self) -> dict[str, str]:
        """The ONNX metadata_props (all values are strings there)."""
        return {
            CLASSES_KEY: json.dumps(list(self.classes)),
            ALPHA_KEY: json.dumps(self.alpha),
            LAYOUT_VERSION_KEY: str(self.layout_version),
            PRESET_KEY: self.preset,
            INPUT_DTYPE_KEY: self.input_dtype,
        }

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str) -> ModelInfo:
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise ModelMismatchError(
                f"{source}: not a pktnin model (metadata {', '.join(missing)} missing); "
                "export it with `pktnin export-onnx`"
            )
        alpha = json.loads(props[ALPHA_KEY])
        info = cls(
            classes=tuple(json.loads(props[CLASSES_KEY])),
            alpha=None if alpha is None else float(alpha),
            layout_version=int(props[LAYOUT_VERSION_KEY]),
            preset=props[PRESET_KEY],
            input_dtype=props[INPUT_DTYPE_KEY],
        )
        info.check(source)
        return info

    def check(self, source: str) -> None:
        if self.layout_version != LAYOUT_VERSION:
            raise ModelMismatchError(
                f"{source}: model made for packet layout v{self.layout_version}, "
                f"this pktnin writes layout v{LAYOUT_VERSION}; retrain or use a matching pktnin"
            )
        if self.input_dtype not in INPUT_DTYPES:
            raise ModelMismatchError(f"{source}: unknown input dtype {self.input_dtype!r} (expected uint8 or float32)")
        if not self.classes:
            raise ModelMismatchError(f"{source}: the model lists no classes")


# -- reading and writing -------------------------------------------------------------------------------------
def read_props(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an ONNX file; through onnx when installed (weights not loaded), else ONNX Runtime."""
    try:
        import onnx
    except ImportError:
        return _read_props_ort(path)
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except DecodeError as exc:  # a corrupt or truncated file: one line naming it, not protobuf's own
        raise ModelMismatchError(f"{path}: not a usable ONNX model (corrupt or truncated?): {exc}") from None
    return {p.key: p.value for p in proto.metadata_props}


def _read_props_ort(path: str | os.PathLike) -> dict[str, str]:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ort_errors() as exc:
        raise unusable_model(path, exc) from None
    return dict(session.get_modelmeta().custom_metadata_map)


def set_props(proto, props: dict[str, str]) -> None:
    """Replace or add metadata_props entries of an ONNX ModelProto."""
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def set_model_info(proto, info: ModelInfo) -> None:
    """Replace every pktnin.* entry of proto's metadata with info's."""
    keep = [p for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    set_props(proto, info.to_metadata())


def set_flow_model_info(proto, classes: list[str], preset: str, flow_packets: int, provenance: dict) -> None:
    """Replace proto's pktnin.* metadata with a flow model's: uint8 rows, no alpha, DECIDE_KEY "flow" and K."""
    set_model_info(proto, ModelInfo(tuple(classes), None, LAYOUT_VERSION, preset, "uint8"))
    props = {
        DECIDE_KEY: "flow",
        FLOW_PACKETS_KEY: str(flow_packets),
        PROVENANCE_KEY: json.dumps(provenance, sort_keys=True),
    }
    set_props(proto, props)


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """ModelInfo from an ONNX file's metadata."""
    return ModelInfo.from_metadata(read_props(path), str(path))


def model_precision(props: dict[str, str]) -> str:
    return props.get(PRECISION_KEY, "fp32")


def json_prop(props: dict[str, str], key: str, default=None):
    """A JSON-valued metadata entry, or default when absent or empty."""
    raw = props.get(key)
    return json.loads(raw) if raw else default


# -- the int8 companion --------------------------------------------------------------------------------------
def int8_beside(fp32_path: str | os.PathLike) -> Path:
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(fp32_path.stem + INT8_SUFFIX)


def int8_cache_path(fp32_path: str | os.PathLike) -> Path:
    """Where `pktnin quantize` puts the int8 model of a float32 model it may not write beside (the bundled one)."""
    return cache_dir() / "int8" / f"{Path(fp32_path).stem}-{file_sha256(fp32_path)[:24]}{INT8_SUFFIX}"


def find_int8(fp32_path: str | os.PathLike) -> Path | None:
    """The int8 model quantized from exactly this float32 file (checked by hash): beside it, else in the cache."""
    sha = file_sha256(fp32_path)
    for candidate in (int8_beside(fp32_path), int8_cache_path(fp32_path)):
        if candidate.is_file():
            quant = json_prop(read_props(candidate), QUANTIZATION_KEY, {})
            if quant.get("source_sha256") == sha:
                return candidate
    return None


# -- agreement with float32 ----------------------------------------------------------------------------------
# pktnin.agreement of an int8 model: {"format": 2, "rows": {check set: rows}, "engines": {"<backend>:<precision>":
# {check set: argmax agreement with float32}}}. Check set "selection" holds the rows that chose the quantization;
# the others are held out (e.g. "test:corpus", "synthetic"). Older files held {"<backend>:<precision>": value}
# measured on the selection rows only.
AGREEMENT_FORMAT = 2
SELECTION_SET = "selection"


def agreement_record(props: dict[str, str]) -> dict[str, dict[str, float]]:
    """{"<backend>:<precision>": {check set: agreement}} from a model's metadata ({} when none)."""
    raw = json_prop(props, AGREEMENT_KEY, {})
    if "engines" in raw:
        return {key: {name: float(v) for name, v in sets.items()} for key, sets in raw["engines"].items()}
    return {key: {SELECTION_SET: float(v)} for key, v in raw.items() if ":" in key}


def agreement_rows(props: dict[str, str]) -> dict[str, int]:
    """{check set: rows} the agreement was measured on."""
    raw = json_prop(props, AGREEMENT_KEY, {})
    rows = raw.get("rows")
    return {str(k): int(v) for k, v in rows.items()} if isinstance(rows, dict) else {}


def agreement_json(engines: dict[str, dict[str, float]], rows: dict[str, int]) -> str:
    return json.dumps(
        {"format": AGREEMENT_FORMAT, "rows": rows, "engines": {k: dict(sorted(v.items())) for k, v in engines.items()}},
        sort_keys=True,
    )
