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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pktnin.distributed.shards import Shard
from pktnin.score.options import ScoreOptions


@dataclass(frozen=True)
class RunnerSpec:
    """How an actor opens its runner: picklable, unlike the runner."""

    model_path: str
    backend: str = "auto"
    batch: int = 512

    def __call__(self, threads: int):
        from pktnin.engine.runners import open_runner

        return open_runner(self.model_path, self.backend, intra_threads=threads, max_batch=self.batch)


def warm_kernels() -> None:
    """Compile (or load from numba's cache) the record walks and the CPU prep kernel on a tiny capture."""
    import struct

    import numpy as np

    from pktnin.kernels.capture import CaptureReader
    from pktnin.kernels.cpu import transform

    frame = bytes(12) + b"\x08\x00" + bytes([0x45, 0, 0, 40]) + bytes(4) + bytes([64, 6, 0, 0]) + bytes(8) + bytes(20)
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 0) + struct.pack("<I", 20)
    body = struct.pack("<IIIII", 0, 0, 0, len(frame), len(frame)) + frame
    epb = struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    for data in (pcap, shb + idb + epb):
        for raw in CaptureReader(np.frombuffer(data, dtype=np.uint8)):
            transform(raw)


class ShardScorer:
    """The Ray Data actor: one runner per actor, one shard per call."""

    def __init__(self, runner_spec, options: ScoreOptions, parts_dir: str, cpus: int) -> None:
        import numba

        from pktnin.engine.cache import CACHE_ENV, cache_dir

        cpus = max(1, int(cpus))
        # numba's cache beside the model cache when the package folder is read-only (a container image).
        os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))
        os.environ.setdefault(CACHE_ENV, str(cache_dir()))
        numba.set_num_threads(min(cpus, numba.config.NUMBA_NUM_THREADS))
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


def actor_cpus(cluster_cpus: float, actors: int, cpus_per_actor: float | None) -> tuple[int, float]:
    """(actors, CPUs each). Unless told, the actors share all but one of the cluster's CPUs, at least one each:
    Ray Data's own tasks (reading the shard list, moving summaries) need a free CPU, else the run hangs."""
    actors = max(1, int(actors))
    if cpus_per_actor is None:
        cpus_per_actor = max(1.0, (cluster_cpus - 1) // actors)
    return actors, float(cpus_per_actor)


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
        n, cpus = actor_cpus(ray.cluster_resources().get("CPU", 1), min(actors, len(todo)), cpus_per_actor)
        ds = ray.data.from_items(
            [{"shard": json.dumps(s.to_dict())} for s in todo], override_num_blocks=len(todo)
        )  # one block per shard: shards go to whichever actor is free
        ds = ds.map_batches(
            ShardScorer,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n),
            fn_constructor_args=(runner_spec, options, str(Path(parts_dir).resolve()), int(cpus)),
            num_cpus=cpus,
            num_gpus=num_gpus,
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
            # The package's code reaches the workers from the driver's environment (same install on every node).
            ray.init(address=self.address, log_to_driver=False, **self.init_kwargs)
            self.owned = True
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # pktnin shows its own progress bar
        return ray

    def __exit__(self, *exc) -> None:
        if self.owned:
            import ray

            ray.shutdown()
