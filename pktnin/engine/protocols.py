"""What the scoring stages need from a runner, stated once.

ModelRunner is the plain face every backend shows (runner_base.Runner implements it for ONNX Runtime, its
session pool, OpenVINO and TensorRT). DeviceRunner is the device face of TensorRTRunner: packets are prepared on the GPU straight into
the engine's input buffer of one of `num_slots` slots, submitted, and collected in submission order; the
GPU scoring stage (pktnin.score.gpu_stages) uses exactly these members.

Both are runtime_checkable, so `isinstance(runner, DeviceRunner)` picks the GPU path; like every runtime
protocol check it looks at the members' presence, not their signatures, and reads the data members: use it on
a loaded runner.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ModelRunner(Protocol):
    """Class probabilities for rows of the packet layout."""

    @property
    def classes(self) -> list[str]: ...

    def infer(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write probabilities for rows [n,1500] (uint8) into out[:n] (float32 [>=n,C]); returns out[:n]."""
        ...


@runtime_checkable
class DeviceRunner(Protocol):
    """A runner whose input buffers live on the GPU, filled by the CUDA prep kernel (kernels.cuda)."""

    @property
    def classes(self) -> list[str]: ...

    @property
    def max_batch(self) -> int:
        """Rows per engine call: the size of each slot's device input."""
        ...

    @property
    def num_slots(self) -> int:
        """Input buffers that can be in flight at once."""
        ...

    def prep_stream(self) -> Any:
        """The numba-CUDA stream to run the prep kernel on (in the runner's device context)."""
        ...

    def device_context(self) -> AbstractContextManager:
        """Makes the runner's device context current: launch the prep kernel inside it."""
        ...

    def device_input(self, slot: int) -> Any:
        """The slot's device input [max_batch,1500] as a numba device array; the slot must not be in flight."""
        ...

    def submit(self, slot: int, n: int, rows: np.ndarray | None = None) -> None:
        """Queue the first n rows of the slot's device input (or `rows` from the host) on the engine."""
        ...

    def collect(self, slot: int, out: np.ndarray) -> np.ndarray:
        """Wait for the slot's batch; its probabilities into out[:n]; returns out[:n]; frees the slot."""
        ...
