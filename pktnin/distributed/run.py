"""`pktnin score --executor ray`: the Ray options, checked when made, and the run on a Ray cluster.

No Ray import here until a run starts (pktnin.distributed.ray_engine is the only module that imports Ray).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from pktnin.engine.flow_runner import FlowModelRunner
from pktnin.engine.runner_base import Runner
from pktnin.errors import OptionError
from pktnin.scoring.options import ScoreOptions, ScoreResult
from pktnin.scoring.run import run_units
from pktnin.stages import Progress
from pktnin.storage import Location

EXECUTORS = ("local", "ray")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from '1G', '512M', '64k' or a plain number (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 512M, 1G)") from None
    if value < 1:
        raise ValueError(f"must be at least 1 byte, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class RayOptions:
    """Where and how units are scored on Ray: the cluster address (None: a local Ray), the number of actors,
    and whether the parts stay as a Parquet dataset."""

    address: str | None = None
    actors: int = 1
    keep_parts: bool = False

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise OptionError(f"--actors: must be at least 1, got {self.actors}")
        try:
            import ray  # noqa: F401 - only to say clearly that the extra is missing
        except ImportError:
            raise OptionError("--executor ray needs Ray: pip install 'pktnin[ray]'") from None


def executor_options(executor: str, address: str | None, actors: int, keep_parts: bool) -> RayOptions | None:
    """The command line's executor options checked: RayOptions for --executor ray, None for the local one."""
    if executor not in EXECUTORS:
        raise OptionError(f"--executor: unknown executor {executor!r}; choose local or ray")
    if executor == "local":
        if keep_parts or address is not None:
            raise OptionError("--keep-parts and --ray-address go with --executor ray")
        if actors < 1:
            raise OptionError(f"--actors: must be at least 1, got {actors}")
        return None
    return RayOptions(address, actors, keep_parts)


def score_on_ray(files: Sequence[Location], opts: ScoreOptions, runner: Runner | FlowModelRunner, model_path: Path,
                 backend: str, ray: RayOptions, progress: Progress | None = None, named: AbstractSet[Location] | None = None,
                 timings: dict[str, float] | None = None) -> ScoreResult:  # fmt: skip
    """Score `files` by units on Ray actors, each opening the model the driver opened (same backend and
    precision); returns the ScoreResult. Closes `runner`: the driver only needs its classes. `named`: the
    files the user named (the others that are not captures are no failure, as in this process); `timings`
    gets "ray_start", the seconds Ray took to start or join."""
    from pktnin.distributed.ray_engine import RayExecutor, RunnerSpec, ray_session

    classes = list(runner.classes)
    # The backend as asked: "auto" picks TensorRT on the GPU nodes even when the driver has no GPU.
    spec = RunnerSpec(str(Path(model_path).resolve()), backend, opts.batch, runner.precision)
    runner.close()

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # so that Ray is shut down (ray_session) and finished units stay recorded

    # the CLI turns SIGTERM into an interrupt already (exit 143): keep its handler where it is set
    in_main = (
        threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    previous = signal.signal(signal.SIGTERM, stop) if in_main else None
    try:
        started = time.perf_counter()
        with ray_session(ray.address):
            if timings is not None:
                timings["ray_start"] = time.perf_counter() - started
            executor = RayExecutor(spec, opts, actors=ray.actors, named=named)
            return run_units(files, opts, classes, executor, progress=progress, keep_parts=ray.keep_parts)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
