"""`pktnin score --executor ray`: units of work scored by a pool of Ray actors through Ray Data (extra
`pktnin[ray]`).

Imported only when the Ray executor is asked for. The driver (scoring.run) makes the units, keeps the resume
manifest and assembles the outputs; this module only runs units, each through the same chain as the in-process
executor (scoring.unit_run.score_unit):

    ray.data.from_items(units, one block each)
        .map_batches(UnitScorer, batch_size=1, compute=ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor)

Each UnitScorer actor builds its runner inside the actor (runners hold native sessions that do not pickle),
sets numba's and ONNX Runtime's threads to its CPUs, compiles (or loads from numba's cache) the capture and
prep kernels once in __init__, then scores one unit per call into the shared parts folder and returns only
the unit's small summary (a JSON string): rows never travel through Ray's object store, and Dataset.write_parquet
is not used (its file names change per run; the parts here are named by unit id). Ray Data restarts an actor
that dies and retries its unit; the unit's part is then written again under the same name.
"""

from __future__ import annotations

import fcntl
import json
import logging
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba

from pktnin.engine.cache import cache_dir
from pktnin.engine.runner_base import Runner
from pktnin.engine.runners import open_runner
from pktnin.kernels.capture import CaptureReader
from pktnin.kernels.cpu import transform
from pktnin.scoring.flow_model import FlowModelRunner, is_flow_model
from pktnin.scoring.options import ScoreOptions
from pktnin.scoring.unit_run import score_unit
from pktnin.scoring.units import Unit
from pktnin.stages import Progress


@dataclass(frozen=True)
class RunnerSpec:
    """How an actor opens its runner: picklable, unlike the runner."""

    model_path: str
    backend: str = "auto"
    batch: int = 512
    precision: str = "fp32"  # the driver's resolved choice, so every actor runs the same engine

    def __call__(self, threads: int) -> Runner | FlowModelRunner:
        if is_flow_model(self.model_path):
            return FlowModelRunner(self.model_path, intra_threads=threads, max_batch=self.batch)
        return open_runner(
            self.model_path, self.backend, intra_threads=threads, max_batch=self.batch, precision=self.precision
        )


def warm_kernels() -> None:
    """Compile (or load from numba's cache) the record walks and the CPU prep kernel on a tiny capture.
    numba caches in the package's __pycache__, or in a user-wide folder when that is read-only (an image);
    NUMBA_CACHE_DIR in the workers' environment chooses another (read when numba is first imported)."""
    frame = bytes(12) + b"\x08\x00" + bytes([0x45, 0, 0, 40]) + bytes(4) + bytes([64, 6, 0, 0]) + bytes(8) + bytes(20)
    pcap = (
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        + struct.pack("<IIII", 0, 0, len(frame), len(frame))
        + frame
    )
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 0) + struct.pack("<I", 20)
    body = struct.pack("<IIIII", 0, 0, 0, len(frame), len(frame)) + frame
    epb = struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    for data in (pcap, shb + idb + epb):  # bytes: read-only buffers, like the file windows (one specialization)
        for raw in CaptureReader(data):
            transform(raw)


@contextmanager
def build_lock(runner_spec: RunnerSpec) -> Iterator[None]:
    """Held while an actor opens its runner when that may build a TensorRT plan: the first actor of a node
    builds the plan into the node's cache, the others wait and load it (a plan per actor would take minutes).
    ONNX Runtime runners open without it."""
    if getattr(runner_spec, "backend", "auto") == "onnxruntime":
        yield
        return
    path = cache_dir() / "runner-build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class UnitScorer:
    """The Ray Data actor: one runner per actor, one unit per call."""

    def __init__(self, runner_spec: RunnerSpec, options: ScoreOptions, parts_dir: str, threads: int) -> None:
        cpus = max(1, int(threads))
        numba.set_num_threads(
            min(cpus, getattr(numba.config, "NUMBA_NUM_THREADS"))
        )  # set from the environment at run time
        with build_lock(runner_spec):
            self.runner = runner_spec(cpus)  # ONNX Runtime intra-op threads = the actor's CPUs
        self.options = options
        self.parts_dir = Path(parts_dir)
        warm_kernels()

    def __call__(self, batch: dict) -> dict:
        summaries = [
            json.dumps(score_unit(Unit.from_dict(json.loads(u)), self.runner, self.options, self.parts_dir))
            for u in batch["unit"]
        ]
        return {"summary": summaries}


def actor_cpus(cluster_cpus: float, actors: int, cpus_per_actor: float | None) -> tuple[int, float, int]:
    """(actors, CPUs each actor requests, threads each actor runs). Unless told, the actors share all but one of
    the cluster's CPUs: Ray Data's own tasks (reading the shard list, moving summaries) need a free CPU, else the
    run waits forever. Fewer CPUs than actors: each requests a fraction and runs one thread."""
    actors = max(1, int(actors))
    if cpus_per_actor is None:
        cpus_per_actor = max(cluster_cpus - 1, 0.5) / actors
        if cpus_per_actor >= 1:
            cpus_per_actor = float(int(cpus_per_actor))
    return actors, float(cpus_per_actor), max(1, int(cpus_per_actor))


class RayExecutor:
    """Runs units on Ray Data actors (scoring.run.Executor). Ray must be initialized (ray_session)."""

    live_progress = False  # the driver tells packets per finished unit

    def __init__(
        self,
        runner_spec: RunnerSpec,
        options: ScoreOptions,
        actors: int = 1,
        cpus_per_actor: float | None = None,
        num_gpus: float | None = None,
    ) -> None:
        self.runner_spec, self.options = runner_spec, options
        self.actors, self.cpus_per_actor, self.num_gpus = actors, cpus_per_actor, num_gpus

    def __call__(self, units: Sequence[Unit], parts_dir: Path, progress: Progress | None = None) -> Iterator[dict]:
        import ray

        if not units:
            return
        resources = ray.cluster_resources()
        n, cpus, threads = actor_cpus(resources.get("CPU", 1), min(self.actors, len(units)), self.cpus_per_actor)
        gpus = self.num_gpus
        if gpus is None and resources.get("GPU", 0) and self.runner_spec.backend != "onnxruntime":
            gpus = 1  # one GPU per actor: the TensorRT engine and the CUDA prep stay on it
        ds: Any = ray.data.from_items(
            [{"unit": json.dumps(u.to_dict())} for u in units], override_num_blocks=len(units)
        )  # one block per unit: units go to whichever actor is free
        ds = ds.map_batches(
            UnitScorer,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n),
            fn_constructor_args=(self.runner_spec, self.options, str(Path(parts_dir).resolve()), threads),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        for row in ds.iter_rows():
            yield json.loads(row["summary"])


class ray_session:
    """Connects to (or starts) Ray for one run and always shuts it down: a killed driver otherwise leaves raylet,
    gcs and workers running. Ray already initialized by the caller (tests, notebooks) is used and left alone."""

    def __init__(self, address: str | None = None, **init_kwargs: Any) -> None:
        self.address, self.init_kwargs = address, init_kwargs
        self.owned = False

    def __enter__(self) -> Any:  # the ray module
        import ray

        if not ray.is_initialized():
            import ray.data  # configures its logger on import: quieten it after that

            # Ray's INFO lines (cluster start, dataset plans) would bury pktnin's own progress and summary.
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING, **self.init_kwargs)
            self.owned = True
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # pktnin shows its own progress bar
        return ray

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            import ray

            ray.shutdown()
