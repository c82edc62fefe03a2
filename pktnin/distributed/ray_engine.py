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
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numba

from pktnin.engine.cache import cache_dir
from pktnin.engine.flow_runner import FlowModelRunner, is_flow_model
from pktnin.engine.runner_base import Runner
from pktnin.engine.runners import open_runner
from pktnin.scoring.options import ScoreOptions
from pktnin.scoring.unit_run import score_unit
from pktnin.scoring.units import Unit
from pktnin.scoring.warmup import warm_kernels
from pktnin.stages import Progress
from pktnin.storage import Location, as_path, resolved


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

    def __init__(
        self,
        runner_spec: RunnerSpec,
        options: ScoreOptions,
        parts_dir: str,
        threads: int,
        named: AbstractSet[Location] | None = None,
    ) -> None:
        import ray

        self.node = ray.get_runtime_context().get_node_id()  # kept in each unit's summary: where it was scored
        cpus = max(1, int(threads))
        numba.set_num_threads(
            min(cpus, getattr(numba.config, "NUMBA_NUM_THREADS"))
        )  # set from the environment at run time
        with build_lock(runner_spec):
            self.runner = runner_spec(cpus)  # ONNX Runtime intra-op threads = the actor's CPUs
        self.options = options
        self.parts_dir = as_path(parts_dir)
        self.named = named
        warm_kernels()

    def __call__(self, batch: dict) -> dict:
        summaries = [
            json.dumps(
                score_unit(
                    Unit.from_dict(json.loads(u)),
                    self.runner,
                    self.options,
                    self.parts_dir,
                    named=self.named,
                    node=self.node,
                )
            )  # fmt: skip
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
    scorer: type = UnitScorer  # the actor class (a subclass may time its start: bench/bench_distributed.py)

    def __init__(
        self,
        runner_spec: RunnerSpec,
        options: ScoreOptions,
        actors: int = 1,
        cpus_per_actor: float | None = None,
        num_gpus: float | None = None,
        named: AbstractSet[Location] | None = None,
    ) -> None:
        self.runner_spec, self.options, self.named = runner_spec, options, named
        self.actors, self.cpus_per_actor, self.num_gpus = actors, cpus_per_actor, num_gpus

    def __call__(self, units: Sequence[Unit], parts_dir: Location, progress: Progress | None = None) -> Iterator[dict]:
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
            self.scorer,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n),
            # the parts folder as every node opens it: on storage they all mount, or a URI
            fn_constructor_args=(self.runner_spec, self.options, resolved(parts_dir), threads, self.named),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        for row in ds.iter_rows():
            yield json.loads(row["summary"])


# A line of Ray's native (C++) log, as its core worker writes it to the driver's stderr:
# "[2026-12-07 16:41:50,884 E 16683 16683] core_worker.cc:2465: ...".
NATIVE_LOG_LINE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z] \d+ \d+\] [^\n]*\n")
# Where such a line may start in text not yet ended by a newline: a "[" that opens no terminal escape sequence.
_MAYBE_NATIVE = re.compile(rb"(?<!\x1b)\[(\d|$)")


class NativeLogFilter:
    """File descriptor 2 through a pipe that drops Ray's native log lines: they come from its C++ side, past
    Python's logging. Everything else (the progress bar, warnings, errors) passes at once and in order."""

    def __enter__(self) -> NativeLogFilter:
        sys.stderr.flush()
        self.saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread = threading.Thread(target=self._pump, args=(read_end,), name="pktnin-stderr", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)  # closes the pipe's last write end: the pump reads its end and stops
        self.thread.join(timeout=5)
        os.close(self.saved)

    def _pump(self, read_end: int) -> None:
        pending = b""
        try:
            while chunk := os.read(read_end, 1 << 16):
                pending = NATIVE_LOG_LINE.sub(b"", pending + chunk)
                held = _MAYBE_NATIVE.search(pending)  # a native line may be arriving: wait for its newline
                cut = held.start() if held is not None else len(pending)
                self._write(pending[:cut])
                pending = pending[cut:]
            self._write(pending)
        finally:
            os.close(read_end)

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.saved, data) :]


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

            # Ray's INFO lines (cluster start, dataset plans) and warnings would bury pktnin's own progress and
            # summary; a failure still surfaces as an error of the run.
            logging.getLogger("ray").setLevel(logging.ERROR)
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            self.native_logs = NativeLogFilter().__enter__()  # and its native log lines (actor restarts ...)
            try:
                kwargs = dict(self.init_kwargs)
                if self.address is None:  # a Ray of this run only, gone at its end: no dashboard to start
                    kwargs.setdefault("include_dashboard", False)
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR, **kwargs)
            except BaseException:
                self.native_logs.__exit__()
                raise
            self.owned = True
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # pktnin shows its own progress bar
        return ray

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            import ray

            try:
                ray.shutdown()
            finally:
                self.native_logs.__exit__()
