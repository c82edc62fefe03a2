"""TensorRT runner: a deserialized plan, two slots of pinned host and device buffers, one engine stream.

Everything runs in the device's primary context (see gpu_env), pushed around every call, so any thread can
use the runner. Buffers are allocated once at the plan's max batch. Each slot has pinned host input/output,
device input/output and an event marking its copy-out done; a slot is in flight from submit() to collect().

Two ways to fill a slot:
- infer(rows, out) (the Runner face): host rows are normalized or copied into the slot's pinned input and
  copied in on the engine stream; chunks of max_batch alternate between the slots, so the host prepares
  chunk k+1 while the GPU runs chunk k.
- the DeviceRunner face (engine.protocols, used by score.gpu_stages): device_input(slot) is the slot's device
  input as a numba device array (zero copy), which the CUDA prep kernel fills on prep_stream(), a second
  stream of the same context, so its host syncs do not wait for the engine batch queued on the engine stream;
  submit(slot, n) then queues engine + copy-out, and collect(slot, out) waits for that slot only.
On the engine stream per batch: [copy-in] -> set_input_shape / set_tensor_address -> execute_async_v3 ->
copy-out -> event record. Not run on a GPU here: checked against stand-ins for tensorrt and pycuda only.

TensorRT calls used (TensorRT 10/11 Python API): Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_dtype / get_tensor_profile_shape, create_execution_context,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pktnin.engine.errors import ModelMismatchError
from pktnin.engine.gpu_env import context_current, gpu_identity, require_pycuda, require_tensorrt
from pktnin.engine.model_file import INPUT_NAME, OUTPUT_NAME
from pktnin.engine.runner_base import Runner
from pktnin.engine.sidecar import check_plan_compatible, read_sidecar, sidecar_model_info
from pktnin.layout import ROW_LEN

NUM_SLOTS = 2


class _Slot:
    """One buffer set: pinned host input/output, device input/output, an event marking its copy-out done."""

    def __init__(self, cuda, max_batch: int, in_dtype: np.dtype, num_classes: int) -> None:
        self.host_in = cuda.pagelocked_empty((max_batch, ROW_LEN), in_dtype)
        self.host_out = cuda.pagelocked_empty((max_batch, num_classes), np.float32)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
        self.done = cuda.Event()
        self.n = 0  # rows in flight; 0 when the slot is free

    def free(self) -> None:
        for dev in (self.dev_in, self.dev_out):
            dev.free()
        for host in (self.host_in, self.host_out):
            allocation = getattr(host, "base", None)  # pycuda's HostAllocation behind the array
            if allocation is not None and hasattr(allocation, "free"):
                allocation.free()


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, plan_path: str | os.PathLike, device: int = 0) -> None:
        super().__init__()
        self.path = Path(plan_path)
        self.device = device
        # tensorrt, pycuda and numba-cuda ship no type hints
        self._engine: Any | None = None
        self._context: Any | None = None
        self._runtime: Any | None = None
        self._stream: Any | None = None
        self._prep_stream: Any | None = None
        self._slots: list[_Slot] = []
        self._in_dtype: np.dtype | None = None

    def load(self) -> TensorRTRunner:
        if self._engine is not None:
            return self
        trt = require_tensorrt()
        cuda = require_pycuda()
        if not self.path.is_file():
            raise FileNotFoundError(f"TensorRT plan {self.path} not found")
        sidecar = read_sidecar(self.path)
        info = sidecar_model_info(sidecar, str(self.path))
        with context_current(self.device):
            gpu_name, cc = gpu_identity(self.device)
            check_plan_compatible(sidecar, trt.__version__, gpu_name, cc, self.path)
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if engine is None:
                raise ModelMismatchError(
                    f"{self.path}: TensorRT could not deserialize the plan; rebuild it with `pktnin build-engine`"
                )
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if n not in inputs]
            if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
                raise ModelMismatchError(
                    f"{self.path}: expected tensors {INPUT_NAME!r} -> {OUTPUT_NAME!r}, got {inputs} -> {outputs}"
                )
            max_batch = int(engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0])
            self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(INPUT_NAME)))
            out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(OUTPUT_NAME)))
            if out_dtype != np.float32:
                raise ModelMismatchError(f"{self.path}: output is {out_dtype}, expected float32")
            self._engine = engine
            self._context = engine.create_execution_context()
            self._stream = cuda.Stream()
            self._slots = [_Slot(cuda, max_batch, self._in_dtype, len(info.classes)) for _ in range(NUM_SLOTS)]
        self._max_batch = max_batch
        self.precision = sidecar["precision"]
        self.info = info
        return self

    # -- the DeviceRunner face (engine.protocols) -----------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return NUM_SLOTS

    def prep_stream(self):
        """A second numba-CUDA stream in the runner's context, for the prep kernel: transform_to_device's host
        syncs on it wait for the prep only, not for the engine batch queued on the runner's stream."""
        if self._prep_stream is None:
            from numba import cuda as ncuda

            with context_current(self.device):
                self._prep_stream = ncuda.stream()
        return self._prep_stream

    def device_context(self):
        """Context manager making the runner's device context current: launch the prep kernel inside it."""
        self._info()
        return context_current(self.device)

    def device_input(self, slot: int):
        """The slot's device input buffer [max_batch,1500] as a numba device array (zero copy, no sync)."""
        from numba import cuda as ncuda

        s = self._slot(slot)
        if s.n:
            raise RuntimeError(f"slot {slot} is still in flight: collect() it first")
        assert self._in_dtype is not None  # _slot: loaded
        desc = {
            "shape": (self._max_batch, ROW_LEN),
            "typestr": self._in_dtype.str,
            "data": (int(s.dev_in), False),
            "strides": None,
            "version": 3,
        }
        with context_current(self.device):
            return ncuda.from_cuda_array_interface(desc, owner=s.dev_in, sync=False)

    def submit(self, slot: int, n: int, rows: np.ndarray | None = None) -> None:
        """Queue rows [n,1500] (or, with rows=None, the n rows already written to device_input(slot)) on the
        stream: copy-in, engine, copy-out. Returns at once; collect(slot, out) waits for the result."""
        import pycuda.driver as cuda

        s = self._slot(slot)
        if s.n:
            raise RuntimeError(f"slot {slot} is still in flight: collect() it first")
        if not 1 <= n <= self._max_batch:
            raise ValueError(f"n must be within 1..{self._max_batch}, got {n}")
        with context_current(self.device):
            if rows is not None:
                if rows.shape != (n, ROW_LEN):
                    raise ValueError(f"rows has shape {rows.shape}, expected ({n}, {ROW_LEN})")
                staged = s.host_in[:n]
                if rows.dtype == np.uint8 and self._in_dtype != np.uint8:
                    np.multiply(rows, np.float32(1.0 / 255.0), out=staged, casting="same_kind")
                else:
                    np.copyto(staged, rows, casting="same_kind")
                cuda.memcpy_htod_async(s.dev_in, staged, self._stream)
            assert self._context is not None and self._stream is not None  # _slot: loaded
            self._context.set_input_shape(INPUT_NAME, (n, ROW_LEN))
            self._context.set_tensor_address(INPUT_NAME, int(s.dev_in))
            self._context.set_tensor_address(OUTPUT_NAME, int(s.dev_out))
            if not self._context.execute_async_v3(self._stream.handle):
                raise RuntimeError(f"{self.path}: TensorRT failed to enqueue a batch of {n}")
            cuda.memcpy_dtoh_async(s.host_out[:n], s.dev_out, self._stream)
            s.done.record(self._stream)
        s.n = n

    def collect(self, slot: int, out: np.ndarray) -> np.ndarray:
        """Wait for the slot's batch and copy its probabilities into out[:n]; returns out[:n]."""
        s = self._slot(slot)
        n = s.n
        if not n:
            raise RuntimeError(f"slot {slot} has nothing in flight")
        with context_current(self.device):
            s.done.synchronize()
        out[:n] = s.host_out[:n]
        s.n = 0
        return out[:n]

    # -- the Runner interface ---------------------------------------------------------------------------------
    def _infer(self, rows: np.ndarray, out: np.ndarray, n: int) -> np.ndarray:
        in_flight: list[tuple[int, int, int]] = []  # (slot, start, stop)
        for k, start in enumerate(range(0, n, self._max_batch)):
            stop = min(n, start + self._max_batch)
            slot = k % NUM_SLOTS
            if self._slots[slot].n:
                done_slot, a, b = in_flight.pop(0)
                self.collect(done_slot, out[a:b])
            self.submit(slot, stop - start, rows[start:stop])
            in_flight.append((slot, start, stop))
        for slot, a, b in in_flight:
            self.collect(slot, out[a:b])
        return out[:n]

    def close(self) -> None:
        if self._engine is None:
            return
        assert self._stream is not None  # load() makes it with the engine
        with context_current(self.device):
            self._stream.synchronize()
            for s in self._slots:
                s.free()
            self._slots = []
            self._prep_stream = None
            self._context = None
            self._engine = None
            self._runtime = None
            self._stream = None
        self.info = None

    def _slot(self, slot: int) -> _Slot:
        self._info()
        if not 0 <= slot < NUM_SLOTS:
            raise ValueError(f"slot must be 0..{NUM_SLOTS - 1}, got {slot}")
        return self._slots[slot]
