"""ONNX Runtime import and error handling shared by everything that opens a session (runner, metadata reader).

onnxruntime is a base dependency but heavy to import: it is imported here, on first use, with telemetry off.
"""

from __future__ import annotations

import os

from pktnin.engine.errors import ModelMismatchError

# ONNX Runtime's telemetry: its environment, created when the module is first imported, otherwise writes a device
# id and an event store under the user's cache directory (~/.cache/Microsoft/DeveloperTools/.onnxruntime) on every
# run. The variable must be set before that import; a user's explicit setting is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def import_onnxruntime():
    """The onnxruntime module, its telemetry off (the variable above, and the API switch where it exists)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    if hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()
    return ort


def ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception types (InvalidProtobuf, InvalidArgument, NoSuchFile, Fail, ...): they derive
    from Exception directly, not from RuntimeError or ValueError."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def unusable_model(path, exc: BaseException) -> ModelMismatchError:
    """One line for a model file ONNX Runtime cannot load, with the useful end of its message ('[ONNXRuntimeError]
    : 7 : INVALID_PROTOBUF : Load model from m.onnx failed:Protobuf parsing failed.' -> 'INVALID_PROTOBUF:
    Protobuf parsing failed')."""
    text = " ".join(str(exc).split())
    parts = [p.strip() for p in text.split(" : ")]
    code = parts[2] if len(parts) > 3 else type(exc).__name__
    detail = parts[-1].split("failed:", 1)[-1].strip().rstrip(".")
    return ModelMismatchError(f"{path}: not a usable ONNX model (corrupt or truncated?): {code}: {detail}")
