"""Lazy access to TensorRT, pycuda and the CUDA primary context, with one-line errors when they are missing.

pycuda always works in the device's PRIMARY context (retain_primary_context), never one of its own
(autoinit/make_context): numba-CUDA only runs in the primary context, and the prep kernel must share the
engine's buffers and stream.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pktnin.engine.errors import EngineUnavailableError

TENSORRT_MISSING = "TensorRT is not installed (pip install 'pktnin[gpu]' on a machine with an NVIDIA GPU)"
PYCUDA_MISSING = (
    "pycuda is not installed (pip install 'pktnin[gpu]' on a machine with an NVIDIA GPU and the CUDA toolkit)"
)
NO_GPU = "no NVIDIA GPU found"

_lock = threading.Lock()
_primary: dict[int, object] = {}


def require_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise EngineUnavailableError(
            TENSORRT_MISSING if isinstance(exc, ImportError) else f"TensorRT cannot load: {exc}"
        ) from None
    return tensorrt


def require_pycuda():
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError) as exc:
        raise EngineUnavailableError(
            PYCUDA_MISSING if isinstance(exc, ImportError) else f"pycuda cannot load: {exc}"
        ) from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError when there is no driver
        raise EngineUnavailableError(
            f"{NO_GPU} (CUDA driver: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    if count == 0:
        raise EngineUnavailableError(NO_GPU)
    return cuda


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT, pycuda and a GPU are all present, else the one-line reason."""
    try:
        require_tensorrt()
        require_pycuda()
    except EngineUnavailableError as exc:
        return str(exc)
    return None


def primary_context(device: int = 0):
    """The retained primary context of `device` (retained once per process)."""
    cuda = require_pycuda()
    with _lock:
        if device not in _primary:
            _primary[device] = cuda.Device(device).retain_primary_context()
        return _primary[device]


@contextmanager
def context_current(device: int = 0) -> Iterator[object]:
    """Make the primary context current in this thread for the duration (pycuda's stack is per thread)."""
    ctx = primary_context(device)
    ctx.push()
    try:
        yield ctx
    finally:
        ctx.pop()


def gpu_identity(device: int = 0) -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of `device`."""
    cuda = require_pycuda()
    dev = cuda.Device(device)
    return dev.name(), tuple(dev.compute_capability())
