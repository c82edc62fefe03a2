"""Which CPU engine runs a model: backend (ONNX Runtime or OpenVINO), precision (fp32, bf16, int8) and, for ONNX
Runtime, one multi-thread session or several single-thread ones.

int8 runs the QDQ model made by `pktnin quantize` from this float32 model: the file beside it
(NAME.int8.onnx) or the one in the cache (made for the bundled model). Its metadata records the argmax agreement
of each quantized engine with float32 per check set (model_file.agreement_record): the rows that chose the
quantization, and held-out sets it never saw (each source's test files; synthetic, odd and unusual-port traffic).

`auto` keeps the engines whose agreement is at least AUTO_MIN_AGREEMENT on every held-out set (float32 always
qualifies; an engine measured only on the rows that chose it does not), checks each on this machine against the
first (float32 on ONNX Runtime) and times those that pass at the run's batch size, and opens the fastest; with
nothing else qualifying it is float32 on ONNX Runtime. The check (check_against_reference) is there because a
backend's kernels differ from CPU to CPU: an engine recorded as agreeing on one machine, or a float32 engine of
another backend, can give other labels on another, and that must leave it out rather than change the labels.
OpenVINO float32 is not among auto's engines (only with --backend openvino): end to end it ran at 0.94x ONNX
Runtime's float32 (bench/results/cpu-precision.md), and in one run of the test suite on another machine, where it
was the only other engine auto could open, auto's labels were float32's on 92 % of the packets of the test's
unseen captures (here a stress run once found rows off by 0.27 in a probability, never again in over a thousand
calls): a risk for no speed.
Timings and checks are cached (cache.cache_dir()/engine-timings) keyed by what they measured: pktnin and backend
versions, CPU model, cores and threads, the model files' hashes, batch; a record older than the installed pktnin
or backends, or one whose repeats spread more than NOISY_SPREAD, is measured again.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pktnin.atomic import atomic_path
from pktnin.engine import cache
from pktnin.engine.bundled import default_int8_path
from pktnin.engine.check_rows import synthetic_rows
from pktnin.engine.errors import EngineUnavailableError, ModelMismatchError
from pktnin.engine.model_file import SELECTION_SET, agreement_record, find_int8, model_precision, read_props
from pktnin.engine.openvino_runner import OpenVinoRunner, cpu_has_bf16, openvino_available
from pktnin.engine.ort_runner import OnnxRuntimeRunner
from pktnin.engine.ort_session import import_onnxruntime
from pktnin.engine.runner_base import DEFAULT_MAX_BATCH, EngineChoice, Runner
from pktnin.engine.workers import SessionPoolRunner
from pktnin.errors import OptionError
from pktnin.layout import ROW_LEN
from pktnin.version import __version__

PRECISIONS = ("auto", "fp32", "bf16", "int8")
CPU_BACKENDS = ("onnxruntime", "openvino")
AUTO_MIN_AGREEMENT = 0.995
TIMING_SECONDS = 0.25  # per engine and repeat when auto measures (at least one batch)
TIMING_REPEATS = 3
TIMING_BATCH = 128  # rows per timed call: enough to rank engines, small enough to time a large model quickly
TIMING_CODE_VERSION = 3  # 3: records carry the local check of each engine
FP32_MAX_DIFF = 1e-3  # largest probability difference between two float32 engines of one model (rounding: ~1e-6)
CHECK_PACKETS = 600  # synthetic packets per check set (pktnin.engine.check_rows): about 1,800 rows in all
NOISY_SPREAD = 0.25  # (max - min) / median of an engine's repeats above which a cached timing is not trusted


@dataclass(frozen=True)
class Engine:
    """One way to run the model on this CPU."""

    backend: str  # onnxruntime | openvino
    precision: str  # fp32 | bf16 | int8
    path: str  # the ONNX file it runs
    workers: int = 1  # ONNX Runtime: 1 = one session with intra-op threads; N = N single-thread sessions
    # argmax agreement with float32 per check set, recorded in the int8 model ({} for float32 itself)
    agreement: tuple[tuple[str, float], ...] = ()

    def label(self) -> str:
        layout = ""
        if self.backend == "onnxruntime":
            layout = f", {self.workers} single-thread sessions" if self.workers > 1 else ", one session"
        return f"{self.backend} {self.precision}{layout}"

    def held_out_agreement(self) -> float:
        """The lowest agreement over the held-out check sets (1.0 for float32; nan when none was measured)."""
        if self.precision == "fp32":
            return 1.0
        held_out = [v for name, v in self.agreement if name != SELECTION_SET]
        return min(held_out) if held_out else float("nan")

    def qualifies(self, bound: float) -> bool:
        value = self.held_out_agreement()
        return not math.isnan(value) and value >= bound


@dataclass
class Choice:
    engine: Engine
    reason: str
    timings: dict[str, float] | None = None  # engine label -> rows/s, when measured

    def engine_choice(self) -> EngineChoice:
        return EngineChoice(self.engine.label(), self.reason, dict(self.engine.agreement))


def recorded_agreement(int8_path: str | os.PathLike | None) -> dict[str, tuple[tuple[str, float], ...]]:
    """{"<backend>:<precision>": ((check set, agreement), ...)} recorded in an int8 model ({} for None)."""
    if int8_path is None:
        return {}
    record = agreement_record(read_props(int8_path))
    return {key: tuple(sorted(sets.items())) for key, sets in record.items()}


# -- candidates ----------------------------------------------------------------------------------------------
def candidate_engines(
    model_path: str | os.PathLike,
    backend: str = "auto",
    min_agreement: float = AUTO_MIN_AGREEMENT,
    workers: int | None = None,
) -> list[Engine]:
    """Engines `auto` may pick for this model: float32 first, then those whose recorded agreement qualifies.

    backend "auto" considers both CPU backends (OpenVINO only when installed); workers None considers one
    session and one single-thread session per core for ONNX Runtime, a number fixes it.
    """
    model_path = Path(model_path)
    if model_precision(read_props(model_path)) == "int8":
        # Given the int8 model itself: it runs as asked on the backend given (ONNX Runtime for auto); OpenVINO
        # joins under auto only where its own run of the file agreed.
        agree = recorded_agreement(model_path)
        own = "onnxruntime" if backend == "auto" else backend
        engines = [Engine(own, "int8", str(model_path), agreement=agree.get(f"{own}:int8", ()))]
        ov = Engine("openvino", "int8", str(model_path), agreement=agree.get("openvino:int8", ()))
        if backend == "auto" and openvino_available() and ov.qualifies(min_agreement):
            engines.append(ov)
        return _with_layouts(engines, workers)
    int8 = find_int8(model_path)
    agree = recorded_agreement(int8)
    engines = [Engine("onnxruntime", "fp32", str(model_path))]
    wanted = []
    if int8 is not None:
        wanted.append(Engine("onnxruntime", "int8", str(int8), agreement=agree.get("onnxruntime:int8", ())))
    if backend in ("auto", "openvino") and openvino_available():
        if backend == "openvino":
            # Not under auto: no faster than ONNX Runtime's float32, and its labels once differed (module doc).
            engines.append(Engine("openvino", "fp32", str(model_path)))
        if cpu_has_bf16():
            wanted.append(Engine("openvino", "bf16", str(model_path), agreement=agree.get("openvino:bf16", ())))
        if int8 is not None:
            wanted.append(Engine("openvino", "int8", str(int8), agreement=agree.get("openvino:int8", ())))
    engines += [e for e in wanted if e.qualifies(min_agreement)]
    if backend != "auto":
        engines = [e for e in engines if e.backend == backend]
    return _with_layouts(engines, workers)


def _with_layouts(engines: list[Engine], workers: int | None) -> list[Engine]:
    cores = os.cpu_count() or 1
    out = []
    for e in engines:
        if e.backend != "onnxruntime":
            out.append(e)
        elif workers is not None:
            out.append(Engine(e.backend, e.precision, e.path, workers, e.agreement))
        else:
            out.append(e)
            if cores > 1:
                out.append(Engine(e.backend, e.precision, e.path, cores, e.agreement))
    return out


def fixed_engine(model_path: str | os.PathLike, backend: str, precision: str, workers: int | None) -> Engine:
    """The engine for an explicit precision; raises with what to do when it cannot run."""
    model_path = Path(model_path)
    if backend == "auto":  # bf16 exists only on OpenVINO; everything else defaults to ONNX Runtime
        backend = "openvino" if precision == "bf16" else "onnxruntime"
    workers = workers or 1
    if model_precision(read_props(model_path)) == "int8":
        if precision != "int8":
            raise ModelMismatchError(
                f"{model_path} is an int8 model; run it with --precision int8 (or auto), or pass its float32 model"
            )
        return Engine(
            backend,
            "int8",
            str(model_path),
            workers,
            recorded_agreement(model_path).get(f"{backend}:int8", ()),
        )
    if precision == "fp32":
        return Engine(backend, "fp32", str(model_path), workers)
    if precision == "bf16":
        if backend != "openvino":
            raise OptionError("bf16 runs on OpenVINO: add --backend openvino")
        agree = recorded_agreement(find_int8(model_path)).get("openvino:bf16", ())
        return Engine("openvino", "bf16", str(model_path), 1, agree)
    if precision == "int8":
        int8 = find_int8(model_path)
        if int8 is None:
            raise FileNotFoundError(
                f"no int8 model of {model_path}: make one with `pktnin quantize {model_path} --data DATASET` "
                f"(it is written to {default_int8_path(model_path)})"
            )
        return Engine(backend, "int8", str(int8), workers, recorded_agreement(int8).get(f"{backend}:int8", ()))
    raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


# -- opening and timing --------------------------------------------------------------------------------------
def open_engine(engine: Engine, max_batch: int | None = None, threads: int | None = None) -> Runner:
    """A loaded runner for an engine (`threads`: intra-op threads of a one-session ONNX Runtime engine)."""
    batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
    if engine.backend == "openvino":
        return OpenVinoRunner(engine.path, precision=engine.precision, threads=threads, max_batch=batch).load()
    if engine.workers > 1:
        return SessionPoolRunner(engine.path, engine.workers, max_batch=batch).load()
    return OnnxRuntimeRunner(engine.path, intra_threads=threads, max_batch=batch).load()


def timing_rows(n: int, seed: int = 0) -> np.ndarray:
    """Packet-shaped rows for timing: a dense header, a payload of random length, zero padding."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, ROW_LEN), dtype=np.uint8)
    rows[:, :54] = rng.integers(0, 256, size=(n, 54))
    for i, length in enumerate(rng.integers(0, ROW_LEN - 54, size=n)):
        rows[i, 54 : 54 + length] = rng.integers(0, 256, size=length)
    return rows


def measure_runs(
    runners: dict[str, Runner], batch: int, seconds: float = TIMING_SECONDS, repeats: int = TIMING_REPEATS
) -> dict[str, list[float]]:
    """rows/s of each runner in each repeat, interleaved (one timed slice of each in turn, `repeats` times)."""
    rows = timing_rows(batch)
    outs = {k: r.new_output(batch) for k, r in runners.items()}
    for k, r in runners.items():
        r.infer(rows, outs[k])  # warm-up: first-call allocations and kernel selection
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for k, r in runners.items():
            done, start = 0, time.perf_counter()
            while True:
                r.infer(rows, outs[k])
                done += batch
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
            rates[k].append(done / elapsed)
    return rates


def measure(
    runners: dict[str, Runner], batch: int, seconds: float = TIMING_SECONDS, repeats: int = TIMING_REPEATS
) -> dict[str, float]:
    """Median rows/s of each runner over interleaved repeats (measure_runs)."""
    return {k: statistics.median(v) for k, v in measure_runs(runners, batch, seconds, repeats).items()}


def spread(rates: list[float]) -> float:
    """(max - min) / median of repeated rates: how much the machine's load moved them."""
    return (max(rates) - min(rates)) / statistics.median(rates) if rates else 0.0


# -- the check on this machine -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def check_rows() -> np.ndarray:
    """Rows of traffic no model was fit on (synthetic, odd captures, unusual services; engine.check_rows) and the
    timing rows: what every engine is run on before auto may choose it."""
    sets = synthetic_rows(CHECK_PACKETS, seed=7000)
    return np.concatenate([*sets.values(), timing_rows(256, seed=7000)])


def check_against_reference(engines: list[Engine], runners: dict[str, Runner]) -> dict[str, dict]:
    """{label: {"agreement", "max_abs_diff", "passed"}} of each opened engine after the first, run on check_rows
    beside the first engine (the reference). A float32 engine beside a float32 reference must give its
    probabilities (within FP32_MAX_DIFF); any other must agree on the label of at least AUTO_MIN_AGREEMENT of the rows.
    Empty when the reference did not open."""
    reference = engines[0]
    if reference.label() not in runners:
        return {}
    rows = check_rows()
    expected = runners[reference.label()].predict(rows)
    checks = {}
    for e in engines[1:]:
        if e.label() not in runners:
            continue
        got = runners[e.label()].predict(rows)
        agreement = float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))
        max_diff = float(np.abs(got - expected).max())
        if e.precision == reference.precision == "fp32":
            passed = max_diff <= FP32_MAX_DIFF
        else:
            passed = agreement >= AUTO_MIN_AGREEMENT
        checks[e.label()] = {"agreement": agreement, "max_abs_diff": max_diff, "passed": passed}
    return checks


def backend_versions(engines: list[Engine]) -> dict[str, str]:
    versions = {"pktnin": __version__, "onnxruntime": import_onnxruntime().__version__}
    if any(e.backend == "openvino" for e in engines):
        import openvino

        versions["openvino"] = openvino.__version__
    return versions


def install_time(engines: list[Engine]) -> float:
    """When pktnin or a backend the engines use was last installed or changed (newest module file mtime)."""
    files = [Path(__file__), Path(import_onnxruntime().__file__ or __file__)]  # this module stands for pktnin
    if any(e.backend == "openvino" for e in engines):
        import openvino

        files.append(Path(openvino.__file__ or __file__))
    return max(f.stat().st_mtime for f in files)


def _timing_key(engines: list[Engine], batch: int, threads: int | None) -> Path:
    settings = {
        "engines": [asdict(e) | {"path": Path(e.path).name, "agreement": None} for e in engines],
        "batch": batch,
        "threads": threads,
        "cpu": cache.cpu_model(),
        "cores": os.cpu_count(),
        "versions": backend_versions(engines),
        "code": TIMING_CODE_VERSION,
    }
    key = cache.content_key(sorted({e.path for e in engines}), settings)
    return cache.cache_dir() / "engine-timings" / f"{key}.json"


def choose_engine(
    model_path: str | os.PathLike,
    backend: str = "auto",
    batch: int = 512,
    threads: int | None = None,
    workers: int | None = None,
    min_agreement: float = AUTO_MIN_AGREEMENT,
    use_cache: bool = True,
) -> Choice:
    """The fastest qualifying engine (see the module doc); measured once per machine and cached."""
    engines = candidate_engines(model_path, backend, min_agreement, workers)
    if not engines:
        raise EngineUnavailableError(f"no {backend} engine can run {model_path}")
    if len(engines) == 1:
        return Choice(engines[0], "the only engine that qualifies")
    timings = timed(engines, batch, threads, use_cache)
    measured = [e for e in engines if e.label() in timings]
    best = max(measured, key=lambda e: timings[e.label()])
    reference = timings.get(engines[0].label())
    speed = f"{timings[best.label()]:,.0f} rows/s" + (
        f", {timings[best.label()] / reference:.2f}x {engines[0].label()}" if reference else ""
    )
    if best.precision == "fp32" and not any(e.precision != "fp32" for e in measured):
        reason = f"no faster engine agrees with float32 on >= {min_agreement:.1%} of held-out rows ({speed})"
    else:
        reason = f"fastest of {len(measured)} measured engines ({speed})"
    left_out = [e.label() for e in engines if e.label() not in timings]
    if left_out:
        reason += f"; left out here (did not open, or differ from {engines[0].label()}): {', '.join(left_out)}"
    return Choice(best, reason, timings)


def open_cpu_runner(
    model_path: str | os.PathLike,
    backend: str = "auto",
    precision: str = "fp32",
    max_batch: int | None = None,
    threads: int | None = None,
    workers: int | None = None,
) -> tuple[Runner, Choice]:
    """A loaded CPU runner for model_path at `precision` (auto: choose_engine) and why it was chosen."""
    if precision not in PRECISIONS:
        raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend not in ("auto",) + CPU_BACKENDS:
        raise OptionError(f"CPU backend must be auto, onnxruntime or openvino, got {backend!r}")
    if workers is not None and workers < 1:
        raise OptionError(f"engine workers must be >= 1, got {workers}")
    if precision == "auto":
        choice = choose_engine(model_path, backend, max_batch or 512, threads, workers)
    else:
        choice = Choice(fixed_engine(model_path, backend, precision, workers), f"--precision {precision}")
        if workers is None and choice.engine.backend == "onnxruntime" and (os.cpu_count() or 1) > 1:
            # Only the session layout is left open: time one session against one per core.
            layouts = _with_layouts([choice.engine], None)
            layout = _choose_layout(layouts, max_batch or 512, threads)
            choice = Choice(layout.engine, f"--precision {precision}; {layout.reason}", layout.timings)
    return open_engine(choice.engine, max_batch=max_batch, threads=threads), choice


def _choose_layout(engines: list[Engine], batch: int, threads: int | None) -> Choice:
    timings = timed(engines, batch, threads)
    best = max((e for e in engines if e.label() in timings), key=lambda e: timings[e.label()])
    return Choice(best, f"session layout measured: {best.label().split(', ', 1)[1]}", timings)


def cached_timings(key_file: Path, engines: list[Engine]) -> dict[str, float] | None:
    """The timings recorded at key_file, unless missing, for other engines, older than the install, or noisy."""
    try:
        record = json.loads(key_file.read_text())
        timings, spreads = record["rows_per_s"], record["spread"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not timings or not set(timings) <= {e.label() for e in engines}:
        return None
    if key_file.stat().st_mtime < install_time(engines) or max(spreads.values(), default=0.0) > NOISY_SPREAD:
        return None
    return timings


def timed(engines: list[Engine], batch: int, threads: int | None, use_cache: bool = True) -> dict[str, float]:
    """rows/s per engine label, from the cache or measured now; engines that cannot open here, or whose outputs
    fail check_against_reference, are left out."""
    key_file = _timing_key(engines, batch, threads)
    if use_cache:
        timings = cached_timings(key_file, engines)
        if timings is not None:
            return timings
    runners: dict[str, Runner] = {}
    try:
        for e in engines:
            try:
                runners[e.label()] = open_engine(e, max_batch=batch, threads=threads)
            except EngineUnavailableError:
                continue
        checks = check_against_reference(engines, runners)
        for label, check in checks.items():
            if not check["passed"]:
                runners.pop(label).close()
        runs = measure_runs(runners, min(batch, TIMING_BATCH))
    finally:
        for r in runners.values():
            r.close()
    timings = {k: statistics.median(v) for k, v in runs.items()}
    record = {
        "rows_per_s": timings,
        "spread": {k: spread(v) for k, v in runs.items()},
        "check": checks,
        "batch": batch,
        "cpu": cache.cpu_model(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "measured": time.time(),
    }
    key_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(key_file) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return timings
