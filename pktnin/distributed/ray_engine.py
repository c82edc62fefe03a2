"""`pktnin score --engine ray`: shards scored by a pool of Ray actors through Ray Data (extra `pktnin[ray]`).

Imported only when the Ray engine is asked for. The driver (distributed.driver) makes the shards, keeps the
resume manifest and assembles the outputs; this module only runs shards:

    ray.data.from_items(shards, one block each)
        .map_batches(ShardScorer, batch_size=1, compute=ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor)

Each ShardScorer actor builds its runner inside the actor (runners hold native sessions that do not pickle),
sets numba's and ONNX Runtime's threads to its CPUs, compiles (or loads from numba's cache) the capture and
prep kernels once in __init__, then scores one shard per call into the shared parts folder and returns only
the shard's small summary (a JSON string): rows never travel through Ray's object store, and Dataset.write_parquet
is not used (its file names change per run; the parts here are named by shard id). Ray Data restarts an actor
that dies and retries its shard; the shard's part is then written again under the same name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pktnin.distributed.shards import Shard
from pktnin.score.options import ScoreOptions


@dataclass(frozen=True)
class RunnerSpec:
    """How an actor opens its runner: picklable, unlike the runner."""

    model_path: str
    backend: str = "auto"
    batch: int = 512
    precision: str = "fp32"  # the driver's resolved choice, so every actor runs the same engine

    def __call__(self, threads: int):
        from pktnin.engine.runners import open_runner
        from pktnin.score.flow_model import FlowModelRunner, is_flow_model

        if is_flow_model(self.model_path):
            return FlowModelRunner(self.model_path, intra_threads=threads, max_batch=self.batch)
        return open_runner(
            self.model_path, self.backend, intra_threads=threads, max_batch=self.batch, precision=self.precision
        )


def warm_kernels() -> None:
    """Compile (or load from numba's cache) the record walks and the CPU prep kernel on a tiny capture.
    numba caches in the package's __pycache__, or in a user-wide folder when that is read-only (an image);
    NUMBA_CACHE_DIR in the workers' environment chooses another (read when numba is first imported)."""
    import struct

    from pktnin.kernels.capture import CaptureReader
    from pktnin.kernels.cpu import transform

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
def build_lock(runner_spec):
    """Held while an actor opens its runner when that may build a TensorRT plan: the first actor of a node
    builds the plan into the node's cache, the others wait and load it (a plan per actor would take minutes).
    ONNX Runtime runners open without it."""
    if getattr(runner_spec, "backend", "auto") == "onnxruntime":
        yield
        return
    import fcntl

    from pktnin.engine.cache import cache_dir

    path = cache_dir() / "runner-build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ShardScorer:
    """The Ray Data actor: one runner per actor, one shard per call."""

    def __init__(self, runner_spec, options: ScoreOptions, parts_dir: str, threads: int) -> None:
        import numba

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
        from pktnin.distributed.worker import score_shard

        summaries = [
            json.dumps(score_shard(Shard.from_dict(json.loads(s)), self.runner, self.options, self.parts_dir))
            for s in batch["shard"]
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


def ray_execute(
    runner_spec,
    options: ScoreOptions,
    actors: int = 1,
    cpus_per_actor: float | None = None,
    num_gpus: float | None = None,
):
    """An `execute(todo, parts_dir)` for distributed.driver.score_sharded that runs shards on Ray Data.
    Ray must be initialized (ray_session)."""

    def execute(todo: list[Shard], parts_dir: Path) -> Iterator[dict]:
        import ray

        if not todo:
            return
        resources = ray.cluster_resources()
        n, cpus, threads = actor_cpus(resources.get("CPU", 1), min(actors, len(todo)), cpus_per_actor)
        gpus = num_gpus
        if gpus is None and resources.get("GPU", 0) and getattr(runner_spec, "backend", "auto") != "onnxruntime":
            gpus = 1  # one GPU per actor: the TensorRT engine and the CUDA prep stay on it
        ds: Any = ray.data.from_items(
            [{"shard": json.dumps(s.to_dict())} for s in todo], override_num_blocks=len(todo)
        )  # one block per shard: shards go to whichever actor is free
        ds = ds.map_batches(
            ShardScorer,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n),
            fn_constructor_args=(runner_spec, options, str(Path(parts_dir).resolve()), threads),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        for row in ds.iter_rows():
            yield json.loads(row["summary"])

    return execute


class ray_session:
    """Connects to (or starts) Ray for one run and always shuts it down: a killed driver otherwise leaves raylet,
    gcs and workers running. Ray already initialized by the caller (tests, notebooks) is used and left alone."""

    def __init__(self, address: str | None = None, **init_kwargs) -> None:
        self.address, self.init_kwargs = address, init_kwargs
        self.owned = False

    def __enter__(self):
        import ray

        if not ray.is_initialized():
            import logging

            import ray.data  # configures its logger on import: quieten it after that

            # Ray's INFO lines (cluster start, dataset plans) would bury pktnin's own progress and summary.
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING, **self.init_kwargs)
            self.owned = True
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # pktnin shows its own progress bar
        return ray

    def __exit__(self, *exc) -> None:
        if self.owned:
            import ray

            ray.shutdown()
