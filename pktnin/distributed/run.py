"""`pktnin score --engine ray`: the Ray options, checked when made, and the run on a Ray cluster.

No Ray import here until a run starts (pktnin.distributed.ray_engine is the only module that imports Ray).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from pktnin.errors import OptionError

ENGINES = ("local", "ray")
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
    """Where and how shards are scored on Ray: the cluster address (None: a local Ray), the number of actors,
    the size above which a file is cut into shards, and whether the parts stay as a Parquet dataset."""

    address: str | None = None
    actors: int = 1
    split_bytes: int = 1 << 30
    keep_parts: bool = False

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise OptionError(f"--actors: must be at least 1, got {self.actors}")
        if self.split_bytes < 1:
            raise OptionError(f"--split-bytes: must be at least 1 byte, got {self.split_bytes}")
        try:
            import ray  # noqa: F401 - only to say clearly that the extra is missing
        except ImportError:
            raise OptionError("--engine ray needs Ray: pip install 'pktnin[ray]'") from None


def engine_options(engine: str, address: str | None, actors: int, split_bytes: str,
                   keep_parts: bool) -> RayOptions | None:  # fmt: skip
    """The command line's engine options checked: RayOptions for --engine ray, None for the local engine."""
    if engine not in ENGINES:
        raise OptionError(f"--engine: unknown engine {engine!r}; choose local or ray")
    try:
        split = parse_size(split_bytes)
    except ValueError as exc:
        raise OptionError(f"--split-bytes: {exc}") from None
    if engine == "local":
        if keep_parts or address is not None:
            raise OptionError("--keep-parts and --ray-address go with --engine ray")
        if actors < 1:
            raise OptionError(f"--actors: must be at least 1, got {actors}")
        return None
    return RayOptions(address, actors, split, keep_parts)


def score_on_ray(files: list[Path], opts, runner, model_path: Path, backend: str, ray: RayOptions, progress=None):
    """Score `files` by shards on Ray actors, each opening the model the driver opened (same backend and
    precision); returns the ScoreResult. Closes `runner`: the driver only needs its classes."""
    from pktnin.distributed.driver import score_sharded
    from pktnin.distributed.ray_engine import RunnerSpec, ray_execute, ray_session

    classes = list(runner.classes)
    # The backend as asked: "auto" picks TensorRT on the GPU nodes even when the driver has no GPU.
    spec = RunnerSpec(str(Path(model_path).resolve()), backend, opts.batch, runner.precision)
    runner.close()

    def stop(_signum, _frame):
        raise KeyboardInterrupt  # so that Ray is shut down (ray_session) and finished shards stay recorded

    # the CLI turns SIGTERM into an interrupt already (exit 143): keep its handler where it is set
    in_main = (
        threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    previous = signal.signal(signal.SIGTERM, stop) if in_main else None
    try:
        with ray_session(ray.address):
            execute = ray_execute(spec, opts, actors=ray.actors)
            return score_sharded(files, opts, classes, execute, split_bytes=ray.split_bytes, progress=progress,
                                 keep_parts=ray.keep_parts)  # fmt: skip
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
