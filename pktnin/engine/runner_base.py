"""The one face every inference backend shows: load, infer a batch into a preallocated output, close; and the
engine choice that comes back beside a runner.

A runner takes rows of the packet layout ([n, 1500], uint8 bytes or float32 bytes/255) and writes class
probabilities into a float32 [>=n, C] array the caller owns, so the scoring loop allocates nothing per batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from pktnin.engine.model_file import ModelInfo
from pktnin.layout import ROW_LEN

# Rows per engine call unless the caller asks otherwise (ONNX Runtime chunks, TensorRT optimization profiles).
DEFAULT_MAX_BATCH = 4096


@dataclass(frozen=True)
class EngineChoice:
    """What runs a model and why, returned beside the runner by runners.open_runner_with_choice."""

    label: str  # e.g. "onnxruntime int8, 2 single-thread sessions"
    reason: str  # e.g. "fastest of 5 measured engines (...)" or "--precision int8"
    # argmax agreement with float32 per check set, as recorded in the model file; {} for float32 itself
    agreement: dict[str, float] = field(default_factory=dict)

    def min_agreement(self) -> float | None:
        return min(self.agreement.values()) if self.agreement else None


class Runner(ABC):
    """Base class of the runners (ONNX Runtime, its session pool, OpenVINO, TensorRT): model metadata, load/close,
    and infer(), which checks state and arrays before the backend's _infer runs.

    What the scoring stages rely on is engine.protocols.ModelRunner (classes, infer), which every Runner
    satisfies. Use as a context manager or call load()/close().
    """

    backend: str = ""
    precision: str = "fp32"  # what the loaded model computes in (fp32, bf16, int8, fp16)

    def __init__(self) -> None:
        self.info: ModelInfo | None = None
        self._max_batch = 0

    # -- the interface -------------------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> Runner:
        """Open the model and allocate every buffer; returns self. Calling it twice does nothing."""

    def infer(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write probabilities for rows [n,1500] into out[:n] (float32 [>=n,C]); returns out[:n].

        Checks that the runner is loaded and the arrays fit, then runs the backend's _infer."""
        n = self._check_io(rows, out)
        if n == 0:
            return out[:0]
        return self._infer(rows, out, n)

    @abstractmethod
    def _infer(self, rows: np.ndarray, out: np.ndarray, n: int) -> np.ndarray:
        """The backend's inference on checked arrays (n >= 1 rows); returns out[:n]."""

    @abstractmethod
    def close(self) -> None:
        """Release the model and buffers. Calling it twice does nothing."""

    # -- shared --------------------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.info is not None

    @property
    def classes(self) -> list[str]:
        return list(self._info().classes)

    @property
    def alpha(self) -> float | None:
        return self._info().alpha

    @property
    def num_classes(self) -> int:
        return len(self._info().classes)

    @property
    def input_dtype(self) -> str:
        return self._info().input_dtype

    @property
    def preset(self) -> str:
        return self._info().preset

    @property
    def max_batch(self) -> int:
        """Rows per engine call; infer() splits larger inputs into chunks of this size."""
        self._info()
        return self._max_batch

    def new_output(self, n: int | None = None) -> np.ndarray:
        """A float32 [n, C] output array (n defaults to max_batch) for infer()."""
        return np.empty((self.max_batch if n is None else n, self.num_classes), dtype=np.float32)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Convenience: probabilities for rows in a new array."""
        return self.infer(rows, self.new_output(len(rows)))

    def __enter__(self) -> Runner:
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    def _info(self) -> ModelInfo:
        if self.info is None:
            raise RuntimeError(f"{type(self).__name__}: call load() first (or use it as a context manager)")
        return self.info

    def _check_io(self, rows: np.ndarray, out: np.ndarray) -> int:
        """Validate shapes and dtypes; returns n."""
        info = self._info()
        if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.shape[1] != ROW_LEN:
            shape = getattr(rows, "shape", type(rows).__name__)
            raise ValueError(f"rows must be a [n, {ROW_LEN}] array, got {shape}")
        if rows.dtype == np.float32:
            if info.input_dtype == "uint8":
                raise ValueError("this model takes uint8 rows (bytes), got float32; pass the bytes")
        elif rows.dtype != np.uint8:
            raise ValueError(f"rows must be uint8 bytes or float32 bytes/255, got {rows.dtype}")
        n = rows.shape[0]
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 2:
            raise ValueError(f"out must be a float32 [>=n, {len(info.classes)}] array")
        if out.shape[0] < n or out.shape[1] != len(info.classes):
            raise ValueError(f"out has shape {out.shape}, needs at least ({n}, {len(info.classes)})")
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        return n
