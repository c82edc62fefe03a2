"""Throughput measurements behind `pktnin bench`: read+prep alone, the engine alone, and scoring end to end."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np

from pktnin.engine.flow_runner import FlowModelRunner
from pktnin.engine.precision import EngineChoice
from pktnin.engine.protocols import DeviceRunner, ModelRunner
from pktnin.engine.runner_base import Runner
from pktnin.flow_decide import FlowParams
from pktnin.packets import iter_packets
from pktnin.rowfile import PrepOptions
from pktnin.scoring import ScoreOptions, score_files
from pktnin.stages import Progress


class StageProgress(Protocol):
    """What compare_engines tells as it goes: a stage starts (runs to do), a run is done."""

    def stage(self, name: str, total: int) -> None: ...

    def run_done(self) -> None: ...


def prep_throughput(
    files: Sequence[Path],
    opts: PrepOptions | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
    chunk: int = 8192,
    flow_keys: bool = True,
) -> dict:
    """Read and transform every capture in `files`; rows are produced and dropped.

    Rows go into buffers reused from piece to piece, as for an engine that reads them where they were written.
    `packets` counts every record read (kept or skipped by the layout), `rows` the ones that became rows;
    `cpu_seconds` is the CPU time of the whole process (all threads) over the timed part.
    `progress` (optional) has add_packets(n) and file_done(n). `threads` (None: numba's thread count), `chunk`
    (records per walk) and `flow_keys` go to packets.iter_packets. `opts` (default: the paper's mask, no DNS).
    """
    opts = opts or PrepOptions()
    read = partial(
        iter_packets, mask=opts.mask, keep_dns=opts.keep_dns, threads=threads, flow_keys=flow_keys, reuse_rows=True
    )
    # Warm up: load or compile the kernels on the first chunk of the first file (not timed).
    for _ in read(files[:1], max_records=64):
        break
    reports: list = []
    kept = 0
    done = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    for batch in read(files, reports=reports, max_records=chunk):
        kept += len(batch)
        if progress is not None:
            while done < len(reports):
                progress.file_done(1)
                done += 1
            progress.add_packets(len(batch))
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    packets = sum(r.records for r in reports)
    return {
        "packets": packets,
        "rows": kept,
        "files": len(files),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "packets_per_s": packets / seconds if seconds > 0 else 0.0,
    }


def engine_throughput(runner: ModelRunner, rows: np.ndarray, batch: int, min_seconds: float = 2.0) -> dict:
    """The model alone on rows already in memory, in batches of `batch`; at least `min_seconds` of work."""
    out = np.empty((batch, len(runner.classes)), dtype=np.float32)
    runner.infer(rows[:batch], out)  # warm-up (session set-up, first allocation)
    packets = 0
    start = time.perf_counter()
    while True:
        for lo in range(0, rows.shape[0], batch):
            chunk = rows[lo : lo + batch]
            runner.infer(chunk, out)
            packets += chunk.shape[0]
        seconds = time.perf_counter() - start
        if seconds >= min_seconds:
            return {"packets": packets, "seconds": seconds, "packets_per_s": packets / seconds}


def pipeline_throughput(
    files: Sequence[Path],
    runner: ModelRunner | DeviceRunner | FlowModelRunner,
    batch: int,
    workdir: Path,
    opts: PrepOptions,
    decide: str = "packet",
    flow: FlowParams | None = None,
) -> dict:
    """`pktnin score` as a user runs it (Parquet output, flows off), timed from first read to last write.
    `decide` and `flow`: as ScoreOptions."""
    score_opts = ScoreOptions(
        out=workdir / "bench.parquet",
        batch=batch,
        mask=opts.mask,
        keep_dns=opts.keep_dns,
        model_id="bench",
        force=True,  # each run replaces the previous run's output
        decide=decide,
        flow=flow or FlowParams(),
    )
    start = time.perf_counter()
    result = score_files(list(files), runner, score_opts)
    seconds = time.perf_counter() - start
    return {"packets": result.packets, "seconds": seconds, "packets_per_s": result.packets / seconds}


def median_run(runs: list[dict]) -> dict:
    """The median seconds and packets/s of repeated runs of one measurement, with every run's rate."""
    rates = [r["packets_per_s"] for r in runs]
    return {
        "packets": runs[0]["packets"],
        "seconds": statistics.median(r["seconds"] for r in runs),
        "packets_per_s": statistics.median(rates),
        "runs_packets_per_s": rates,
    }


def spread(run: dict) -> tuple[float, float]:
    """The lowest and highest packets/s of a measurement's runs."""
    rates = run["runs_packets_per_s"]
    return min(rates), max(rates)


def ratio_is_noise(e2e: dict, engine: dict) -> bool:
    """End to end includes the engine's work, so it cannot truly be faster than the engine alone: a median ratio
    above 1 is the machine's noise (other load, frequency changes), and the figures of that run say little."""
    return e2e["packets_per_s"] > engine["packets_per_s"]


def compare_engines(
    files: Sequence[Path],
    runners: Sequence[Runner],
    choices: Sequence[EngineChoice],
    labels: Sequence[str],
    batch: int,
    runs: int,
    workdir: Path,
    opts: PrepOptions,
    progress: StageProgress | None = None,
) -> dict:
    """Medians over `runs` of read+prep, the engine alone and end to end, and end-to-end / engine, for one or
    several runners of one model, interleaved: run k of every runner before run k+1 of any, so load on a shared
    machine hits them alike. Each engine entry has its medians and, after the first, the median over runs of its
    rate divided by the first runner's rate in the same round (`vs_first`).

    `progress` (optional) has stage(name, total) called before each stage and run_done() after each run.
    Raises ValueError when no packet of the input becomes a row (the engine would have nothing to run on).
    """
    batches = [b.rows for b in iter_packets(files, mask=opts.mask, keep_dns=opts.keep_dns)]
    if not batches:
        raise ValueError("no packet of the input became a row")
    rows = np.concatenate(batches)

    def stage(name: str, total: int) -> None:
        if progress is not None:
            progress.stage(name, total)

    def done() -> None:
        if progress is not None:
            progress.run_done()

    stage("read_prep", runs)
    prep_runs = []
    for _ in range(runs):
        prep_runs.append(prep_throughput(files, opts))
        done()
    prep = median_run(prep_runs)
    engine_runs: list[list[dict]] = [[] for _ in runners]
    e2e_runs: list[list[dict]] = [[] for _ in runners]
    stage("engine", runs * len(runners))
    for _ in range(runs):
        for k, runner in enumerate(runners):
            engine_runs[k].append(engine_throughput(runner, rows, batch))
            done()
    stage("end_to_end", runs * len(runners))
    for _ in range(runs):
        for k, runner in enumerate(runners):
            e2e_runs[k].append(pipeline_throughput(files, runner, batch, workdir, opts))
            done()

    def ratio(runs_k: list[dict], runs_0: list[dict]) -> float:
        return statistics.median(a["packets_per_s"] / b["packets_per_s"] for a, b in zip(runs_k, runs_0))

    engines = []
    for k, (label, runner, choice) in enumerate(zip(labels, runners, choices)):
        engine, e2e = median_run(engine_runs[k]), median_run(e2e_runs[k])
        entry = {
            "asked": label,
            "backend": runner.backend,
            "engine_precision": runner.precision,
            "engine_label": choice.label,
            "engine_reason": choice.reason,
            "agreement": choice.agreement,
            "engine": engine,
            "end_to_end": e2e,
            # Prep and the engine count differently (records read vs rows scored), so compare rows/s.
            "end_to_end_over_engine": e2e["packets_per_s"] / engine["packets_per_s"],
            "ratio_is_noise": ratio_is_noise(e2e, engine),
        }
        if k:
            entry["vs_first"] = {
                "engine": ratio(engine_runs[k], engine_runs[0]),
                "end_to_end": ratio(e2e_runs[k], e2e_runs[0]),
            }
        engines.append(entry)
    first = engines[0]
    return {
        "backend": first["backend"],
        "precision": first["engine_precision"],
        "engine_label": first["engine_label"],
        "batch": batch,
        "files": len(files),
        "rows": int(rows.shape[0]),
        "read_prep": prep,
        "engine": first["engine"],
        "end_to_end": first["end_to_end"],
        "end_to_end_over_engine": first["end_to_end_over_engine"],
        "ratio_is_noise": first["ratio_is_noise"],
        "engines": engines,
    }


def compare_decisions(
    files: Sequence[Path],
    runner: Runner | FlowModelRunner,
    modes: Sequence[tuple[str, int]],
    batch: int,
    runs: int,
    workdir: Path,
    opts: PrepOptions,
    progress: StageProgress | None = None,
) -> dict:
    """End-to-end packets/s of `pktnin score` in each decision mode, (decide, K) with K ignored for "packet",
    interleaved as compare_engines does (run k of every mode before run k+1 of any), after a warm-up run of each
    mode on the first file; each mode after the first
    has the median over runs of its rate divided by the first mode's rate in the same round (`vs_first`).
    `progress` as compare_engines'."""

    # One untimed run of each mode on the first file: the first use compiles the flow table's numba code.
    for decide, packets in modes:
        pipeline_throughput(files[:1], runner, batch, workdir, opts, decide, FlowParams(packets=packets))
    if progress is not None:
        progress.stage("end_to_end", runs * len(modes))
    measured: list[list[dict]] = [[] for _ in modes]
    for _ in range(runs):
        for k, (decide, packets) in enumerate(modes):
            measured[k].append(
                pipeline_throughput(files, runner, batch, workdir, opts, decide, FlowParams(packets=packets))
            )
            if progress is not None:
                progress.run_done()
    entries = []
    for k, (decide, packets) in enumerate(modes):
        entry = {"decide": decide, "flow_packets": packets if decide == "flow" else None,
                 "end_to_end": median_run(measured[k])}  # fmt: skip
        if k:
            entry["vs_first"] = statistics.median(
                a["packets_per_s"] / b["packets_per_s"] for a, b in zip(measured[k], measured[0])
            )
        entries.append(entry)
    label = runner.engine_label if isinstance(runner, FlowModelRunner) else f"{runner.backend} {runner.precision}"
    return {"engine_label": label, "batch": batch,
            "files": len(files), "runs": runs, "modes": entries}  # fmt: skip
