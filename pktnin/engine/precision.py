"""Which CPU engine runs a model: backend (ONNX Runtime or OpenVINO), precision (fp32, bf16, int8) and, for ONNX
Runtime, one multi-thread session or several single-thread ones.

int8 runs the QDQ model made by `pktnin quantize` from this float32 model: the file beside it
(NAME.int8.onnx) or the one in the cache (made for the bundled model). Its metadata records the argmax agreement
of each quantized engine with float32 on the validation rows it was checked on (pktnin.agreement).

`auto` keeps the engines whose recorded agreement is at least AUTO_MIN_AGREEMENT (float32 always qualifies),
times each on this machine at the run's batch size, and opens the fastest; with nothing else qualifying it is
float32 on ONNX Runtime. Timings are cached per model, machine, library versions and batch, so only the first
run on a machine pays for them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pktnin.engine import cache
from pktnin.engine.runner_base import (
    DEFAULT_MAX_BATCH,
    META_PREFIX,
    EngineUnavailableError,
    ModelMismatchError,
    Runner,
)
from pktnin.errors import OptionError
from pktnin.layout import ROW_LEN

PRECISIONS = ("auto", "fp32", "bf16", "int8")
CPU_BACKENDS = ("onnxruntime", "openvino")
AUTO_MIN_AGREEMENT = 0.995
INT8_SUFFIX = ".int8.onnx"
TIMING_SECONDS = 0.25  # per engine and repeat when auto measures (at least one batch)
TIMING_REPEATS = 3
TIMING_BATCH = 128  # rows per timed call: enough to rank engines, small enough to time a large model quickly
TIMING_CODE_VERSION = 1


@dataclass(frozen=True)
class Engine:
    """One way to run the model on this CPU."""

    backend: str  # onnxruntime | openvino
    precision: str  # fp32 | bf16 | int8
    path: str  # the ONNX file it runs
    workers: int = 1  # ONNX Runtime: 1 = one session with intra-op threads; N = N single-thread sessions
    agreement: float = 1.0  # argmax agreement with float32 recorded in the int8 model (1.0 for float32)

    def label(self) -> str:
        layout = ""
        if self.backend == "onnxruntime":
            layout = f", {self.workers} single-thread sessions" if self.workers > 1 else ", one session"
        return f"{self.backend} {self.precision}{layout}"


@dataclass
class Choice:
    engine: Engine
    reason: str
    timings: dict[str, float] | None = None  # engine label -> rows/s, when measured


# -- the int8 companion --------------------------------------------------------------------------------------
def model_props(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an ONNX file; through onnx when installed, else ONNX Runtime (loads the graph)."""
    try:
        import onnx
    except ImportError:
        import onnxruntime as ort

        from pktnin.engine.ort_runner import ort_errors, unusable_model

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except ort_errors() as exc:
            raise unusable_model(path, exc) from None
        return dict(session.get_modelmeta().custom_metadata_map)
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except DecodeError as exc:  # a corrupt or truncated file: one line naming it, not protobuf's own
        raise ModelMismatchError(f"{path}: not a usable ONNX model (corrupt or truncated?): {exc}") from None
    return {p.key: p.value for p in proto.metadata_props}


def model_precision(props: dict[str, str]) -> str:
    return props.get(META_PREFIX + "precision", "fp32")


def int8_cache_path(fp32_path: str | os.PathLike) -> Path:
    """Where `pktnin quantize` puts the int8 model of a float32 model it may not write beside (the bundled one)."""
    return cache.cache_dir() / "int8" / f"{Path(fp32_path).stem}-{cache.file_sha256(fp32_path)[:24]}{INT8_SUFFIX}"


def default_int8_path(fp32_path: str | os.PathLike) -> Path:
    """NAME.int8.onnx beside the model when that folder is writable, else the cache path."""
    fp32_path = Path(fp32_path)
    beside = fp32_path.with_name(fp32_path.stem + INT8_SUFFIX)
    from pktnin.engine.runners import MODELS_DIR

    if fp32_path.resolve().parent == MODELS_DIR.resolve() or not os.access(fp32_path.parent, os.W_OK):
        return int8_cache_path(fp32_path)
    return beside


def find_int8(fp32_path: str | os.PathLike) -> Path | None:
    """The int8 model quantized from exactly this float32 file (checked by hash), or None."""
    fp32_path = Path(fp32_path)
    sha = cache.file_sha256(fp32_path)
    for candidate in (fp32_path.with_name(fp32_path.stem + INT8_SUFFIX), int8_cache_path(fp32_path)):
        if candidate.is_file():
            quant = json.loads(model_props(candidate).get(META_PREFIX + "quantization", "{}"))
            if quant.get("source_sha256") == sha:
                return candidate
    return None


def recorded_agreement(int8_path: str | os.PathLike | None) -> dict[str, float]:
    if int8_path is None:
        return {}
    raw = json.loads(model_props(int8_path).get(META_PREFIX + "agreement", "{}"))
    return {k: float(v) for k, v in raw.items() if ":" in k}


# -- candidates ----------------------------------------------------------------------------------------------
def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


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
    props = model_props(model_path)
    if model_precision(props) == "int8":
        # Given the int8 model itself: it runs as asked on the backend given (ONNX Runtime for auto); OpenVINO
        # joins under auto only where its own run of the file agreed.
        agree = recorded_agreement(model_path)
        own = "onnxruntime" if backend == "auto" else backend
        engines = [Engine(own, "int8", str(model_path), agreement=agree.get(f"{own}:int8", float("nan")))]
        if backend == "auto" and openvino_available() and agree.get("openvino:int8", 0.0) >= min_agreement:
            engines.append(Engine("openvino", "int8", str(model_path), agreement=agree["openvino:int8"]))
        return _with_layouts(engines, workers)
    int8 = find_int8(model_path)
    agree = recorded_agreement(int8)
    engines = [Engine("onnxruntime", "fp32", str(model_path))]
    if int8 is not None and agree.get("onnxruntime:int8", 0.0) >= min_agreement:
        engines.append(Engine("onnxruntime", "int8", str(int8), agreement=agree["onnxruntime:int8"]))
    if backend in ("auto", "openvino") and openvino_available():
        from pktnin.engine.openvino_runner import cpu_has_bf16

        engines.append(Engine("openvino", "fp32", str(model_path)))
        if cpu_has_bf16() and agree.get("openvino:bf16", 0.0) >= min_agreement:
            engines.append(Engine("openvino", "bf16", str(model_path), agreement=agree["openvino:bf16"]))
        if int8 is not None and agree.get("openvino:int8", 0.0) >= min_agreement:
            engines.append(Engine("openvino", "int8", str(int8), agreement=agree["openvino:int8"]))
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
    props = model_props(model_path)
    if model_precision(props) == "int8":
        if precision != "int8":
            raise ModelMismatchError(
                f"{model_path} is an int8 model; run it with --precision int8 (or auto), or pass its float32 model"
            )
        return Engine(
            backend,
            "int8",
            str(model_path),
            workers,
            recorded_agreement(model_path).get(f"{backend}:int8", float("nan")),
        )
    if precision == "fp32":
        return Engine(backend, "fp32", str(model_path), workers)
    if precision == "bf16":
        if backend != "openvino":
            raise OptionError("bf16 runs on OpenVINO: add --backend openvino")
        agree = recorded_agreement(find_int8(model_path)).get("openvino:bf16", float("nan"))
        return Engine("openvino", "bf16", str(model_path), 1, agree)
    if precision == "int8":
        int8 = find_int8(model_path)
        if int8 is None:
            raise FileNotFoundError(
                f"no int8 model of {model_path}: make one with `pktnin quantize {model_path} --data DATASET` "
                f"(it is written to {default_int8_path(model_path)})"
            )
        return Engine(
            backend, "int8", str(int8), workers, recorded_agreement(int8).get(f"{backend}:int8", float("nan"))
        )
    raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


# -- opening and timing --------------------------------------------------------------------------------------
def open_engine(engine: Engine, max_batch: int | None = None, threads: int | None = None) -> Runner:
    """A loaded runner for an engine (`threads`: intra-op threads of a one-session ONNX Runtime engine)."""
    batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
    runner: Runner
    if engine.backend == "openvino":
        from pktnin.engine.openvino_runner import OpenVinoRunner

        runner = OpenVinoRunner(engine.path, precision=engine.precision, threads=threads, max_batch=batch).load()
    elif engine.workers > 1:
        from pktnin.engine.workers import SessionPoolRunner

        runner = SessionPoolRunner(engine.path, engine.workers, max_batch=batch).load()
    else:
        from pktnin.engine.ort_runner import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(engine.path, intra_threads=threads, max_batch=batch).load()
    runner.precision = engine.precision
    runner.engine_label = engine.label()
    return runner


def timing_rows(n: int, seed: int = 0) -> np.ndarray:
    """Packet-shaped rows for timing: a dense header, a payload of random length, zero padding."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, ROW_LEN), dtype=np.uint8)
    rows[:, :54] = rng.integers(0, 256, size=(n, 54))
    for i, length in enumerate(rng.integers(0, ROW_LEN - 54, size=n)):
        rows[i, 54 : 54 + length] = rng.integers(0, 256, size=length)
    return rows


def measure(
    runners: dict[str, Runner], batch: int, seconds: float = TIMING_SECONDS, repeats: int = TIMING_REPEATS
) -> dict[str, float]:
    """rows/s of each runner, interleaved (one timed slice of each in turn, `repeats` times); medians."""
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
    return {k: statistics.median(v) for k, v in rates.items()}


def _timing_key(engines: list[Engine], batch: int, threads: int | None) -> Path:
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if any(e.backend == "openvino" for e in engines):
        import openvino

        versions["openvino"] = openvino.__version__
    settings = {
        "engines": [asdict(e) | {"path": Path(e.path).name} for e in engines],
        "batch": batch,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "versions": versions,
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
    if best.precision == "fp32" and not any(e.precision != "fp32" for e in engines):
        reason = f"no faster engine agrees with float32 on >= {min_agreement:.1%} of validation rows ({speed})"
    else:
        reason = f"fastest of {len(measured)} measured engines ({speed})"
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


def timed(engines: list[Engine], batch: int, threads: int | None, use_cache: bool = True) -> dict[str, float]:
    """rows/s per engine label, from the cache or measured now (engines that cannot open here are left out)."""
    from pktnin.atomic import atomic_path

    key_file = _timing_key(engines, batch, threads)
    if use_cache and key_file.is_file():
        try:
            timings = json.loads(key_file.read_text())["rows_per_s"]
            if set(timings) <= {e.label() for e in engines} and timings:
                return timings
        except (ValueError, KeyError):
            pass
    runners: dict[str, Runner] = {}
    try:
        for e in engines:
            try:
                runners[e.label()] = open_engine(e, max_batch=batch, threads=threads)
            except EngineUnavailableError:
                continue
        timings = measure(runners, min(batch, TIMING_BATCH))
    finally:
        for r in runners.values():
            r.close()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(key_file) as tmp:
        tmp.write_text(json.dumps({"rows_per_s": timings, "batch": batch}, indent=1))
    return timings
