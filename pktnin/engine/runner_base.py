"""The one face every inference backend shows: load, infer a batch into a preallocated output, close.

A runner takes rows of the packet layout ([n, 1500], uint8 bytes or float32 bytes/255) and writes class
probabilities into a float32 [>=n, C] array the caller owns, so the scoring loop allocates nothing per batch.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from pktnin.errors import UsageError
from pktnin.layout import LAYOUT_VERSION, ROW_LEN

INPUT_NAME = "row"
OUTPUT_NAME = "probs"
INPUT_DTYPES = ("float32", "uint8")
META_PREFIX = "pktnin."
# Rows per engine call unless the caller asks otherwise (ONNX Runtime chunks, TensorRT optimization profiles).
DEFAULT_MAX_BATCH = 4096


class EngineUnavailableError(UsageError, RuntimeError):
    """A backend cannot run on this machine (library or GPU missing). The message is one line."""


class ModelMismatchError(UsageError, RuntimeError):
    """A model or engine file does not fit this pktnin, this TensorRT or this GPU."""


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
            META_PREFIX + "classes": json.dumps(list(self.classes)),
            META_PREFIX + "alpha": json.dumps(self.alpha),
            META_PREFIX + "layout_version": str(self.layout_version),
            META_PREFIX + "preset": self.preset,
            META_PREFIX + "input_dtype": self.input_dtype,
        }

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str) -> ModelInfo:
        missing = [
            k for k in ("classes", "alpha", "layout_version", "preset", "input_dtype") if META_PREFIX + k not in props
        ]
        if missing:
            raise ModelMismatchError(
                f"{source}: not a pktnin model (metadata {', '.join(META_PREFIX + k for k in missing)} missing); "
                "export it with `pktnin export-onnx`"
            )
        alpha = json.loads(props[META_PREFIX + "alpha"])
        info = cls(
            classes=tuple(json.loads(props[META_PREFIX + "classes"])),
            alpha=None if alpha is None else float(alpha),
            layout_version=int(props[META_PREFIX + "layout_version"]),
            preset=props[META_PREFIX + "preset"],
            input_dtype=props[META_PREFIX + "input_dtype"],
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


class Runner(ABC):
    """Base class of the ONNX Runtime and TensorRT runners: model metadata, buffers' checks, load/close.

    What the scoring stages rely on is engine.protocols.ModelRunner (classes, infer), which every Runner
    satisfies. Use as a context manager or call load()/close().
    """

    backend: str = ""
    precision: str = "fp32"
    engine_label: str = ""  # what runs, e.g. "onnxruntime int8, 2 single-thread sessions" (set by open_runner)
    engine_reason: str = ""  # why that engine was chosen (set by open_runner)

    def __init__(self) -> None:
        self.info: ModelInfo | None = None
        self._max_batch = 0

    # -- the interface -------------------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> Runner:
        """Open the model and allocate every buffer; returns self. Calling it twice does nothing."""

    @abstractmethod
    def infer(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write probabilities for rows [n,1500] into out[:n] (float32 [>=n,C]); returns out[:n]."""

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
