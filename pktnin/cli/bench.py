"""`pktnin bench`: packets/s of each stage (read+prep, engine) and end to end; `pktnin bench prep`: prep alone."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, List, Optional

import numpy as np
import typer
from typer.core import TyperGroup

from pktnin.cli._console import console, escape, file_progress


class _DefaultToRun(TyperGroup):
    """`pktnin bench [PATH...]` runs the `run` command; `pktnin bench prep ...` the prep one."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(cls=_DefaultToRun, help="Measure packets per second (default: every stage and end to end).")


def prep_throughput(paths: list[Path], mask: str = "paper", keep_dns: bool = False, progress: bool = False) -> dict:
    """Read and transform every capture under `paths`; rows are produced and dropped."""
    from pktnin.packets import find_captures, iter_packets

    files = find_captures(paths)
    # Warm up: load or compile the kernels on the first chunk of the first file (not timed).
    for _ in iter_packets(files[:1], mask=mask, keep_dns=keep_dns, max_records=64):
        break
    reports: list = []
    kept = 0
    with file_progress(len(files), "bench prep", enabled=progress) as bar:
        start = time.perf_counter()
        done = 0
        for batch in iter_packets(files, mask=mask, keep_dns=keep_dns, reports=reports):
            kept += len(batch)
            while done < len(reports):
                bar.file_done()
                done += 1
            bar.add_packets(len(batch))
        seconds = time.perf_counter() - start
    packets = sum(r.records for r in reports)
    return {
        "packets": packets,
        "rows": kept,
        "files": len(files),
        "seconds": seconds,
        "packets_per_s": packets / seconds if seconds > 0 else 0.0,
    }


def engine_throughput(runner, rows: np.ndarray, batch: int, min_seconds: float = 2.0) -> dict:
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


def pipeline_throughput(files: list[Path], runner, batch: int, workdir: Path, mask: str, keep_dns: bool) -> dict:
    """`pktnin score` as a user runs it (Parquet output, flows off), timed from first read to last write."""
    from pktnin.score import ScoreOptions, score_files

    opts = ScoreOptions(out=workdir / "bench.parquet", batch=batch, mask=mask, keep_dns=keep_dns, model_id="bench")
    start = time.perf_counter()
    result = score_files(files, runner, opts)
    seconds = time.perf_counter() - start
    return {"packets": result.packets, "seconds": seconds, "packets_per_s": result.packets / seconds}


def _median(runs: list[dict]) -> dict:
    rates = [r["packets_per_s"] for r in runs]
    return {
        "packets": runs[0]["packets"],
        "seconds": statistics.median(r["seconds"] for r in runs),
        "packets_per_s": statistics.median(rates),
        "runs_packets_per_s": rates,
    }


@bench_app.command("run", hidden=True)
def run(
    paths: Annotated[Optional[List[Path]], typer.Argument(help="Captures (default: a generated realistic capture).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model file (default: bundled).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="auto, tensorrt, onnxruntime or openvino.")] = "auto",
    precision: Annotated[
        str, typer.Option("--precision", help="auto, fp32, bf16 or int8; several comma-separated are measured "
                          "interleaved in one run and compared with the first; PRECISION@N fixes that engine's "
                          "sessions (fp32@1: one session, as the scorer ran before).")
    ] = "auto",
    engine_workers: Annotated[
        int, typer.Option("--engine-workers", min=0, help="CPU: 1 = one session, N = N single-thread sessions, 0 = measure.")
    ] = 0,
    batch: Annotated[int, typer.Option("--batch", help="Packets per model call.")] = 512,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Runs per stage; medians are reported.")] = 3,
    packets: Annotated[int, typer.Option("--packets", min=100, help="Size of the generated capture.")] = 20000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mask: Annotated[str, typer.Option("--mask")] = "paper",
    keep_dns: Annotated[bool, typer.Option("--keep-dns")] = False,
) -> None:
    """Packets/s of read+prep alone, of the engine alone and end to end, and end-to-end / engine-only.

    With several precisions (e.g. --precision fp32,int8) each stage alternates between the engines run by run,
    so a busy machine slows them alike, and the report gives each engine's median and its ratio to the first.
    """
    from pktnin.engine.runner_base import EngineUnavailableError, ModelMismatchError
    from pktnin.engine.runners import default_model_path, open_runner
    from pktnin.packets import find_captures, iter_packets
    from pktnin.synth import write_synthetic_capture

    precisions = [p.strip() for p in precision.split(",") if p.strip()]
    if not precisions or len(set(precisions)) != len(precisions):
        raise typer.BadParameter("give one or more distinct precisions", param_hint="--precision")
    layouts = []
    for p in precisions:
        name, _, sessions = p.partition("@")
        if sessions and not (sessions.isdigit() and int(sessions) >= 1):
            raise typer.BadParameter(f"{p}: sessions after @ must be a number >= 1", param_hint="--precision")
        layouts.append((name, int(sessions) if sessions else (engine_workers or None)))
    with tempfile.TemporaryDirectory(prefix="pktnin-bench-") as tmp:
        workdir = Path(tmp)
        if not paths:
            paths = [write_synthetic_capture(workdir / "synthetic.pcap", packets=packets)]
        runners = []
        try:
            files = find_captures(paths)
            model_path = model if model is not None else default_model_path()
            for name, sessions in layouts:
                runners.append(open_runner(model_path, backend, max_batch=batch, precision=name,
                                           engine_workers=sessions))
        except (FileNotFoundError, ValueError, EngineUnavailableError, ModelMismatchError) as exc:
            for r in runners:
                r.close()
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        try:
            rows = [b.rows for b in iter_packets(files, mask=mask, keep_dns=keep_dns)]
            if not rows:
                console.print("[red]error:[/red] no packet of the input became a row")
                raise typer.Exit(2)
            rows = np.concatenate(rows)
            prep = _median([prep_throughput(files, mask, keep_dns) for _ in range(runs)])
            engine_runs: list[list[dict]] = [[] for _ in runners]
            e2e_runs: list[list[dict]] = [[] for _ in runners]
            for _ in range(runs):  # interleaved: run k of every engine before run k+1 of any
                for k, r in enumerate(runners):
                    engine_runs[k].append(engine_throughput(r, rows, batch))
            for _ in range(runs):
                for k, r in enumerate(runners):
                    e2e_runs[k].append(pipeline_throughput(files, r, batch, workdir, mask, keep_dns))
        finally:
            for r in runners:
                r.close()
    engines = []
    for k, (p, r) in enumerate(zip(precisions, runners)):
        engine, e2e = _median(engine_runs[k]), _median(e2e_runs[k])
        entry = {
            "precision": p,
            "backend": r.backend,
            "engine_precision": r.precision,
            "engine_label": r.engine_label or f"{r.backend} {r.precision}",
            "engine_reason": r.engine_reason,
            "engine": engine,
            "end_to_end": e2e,
            "end_to_end_over_engine": e2e["packets_per_s"] / engine["packets_per_s"],
        }
        if k:
            # Per-run ratios against the first engine's run of the same round, then their median.
            entry["vs_first"] = {
                "engine": statistics.median(a["packets_per_s"] / b["packets_per_s"]
                                            for a, b in zip(engine_runs[k], engine_runs[0])),
                "end_to_end": statistics.median(a["packets_per_s"] / b["packets_per_s"]
                                                for a, b in zip(e2e_runs[k], e2e_runs[0])),
            }
        engines.append(entry)
    first = engines[0]
    result = {
        "model": str(model_path),
        "backend": first["backend"],
        "precision": first["engine_precision"],
        "engine_label": first["engine_label"],
        "batch": batch,
        "files": len(files),
        "rows": int(rows.shape[0]),
        "read_prep": prep,
        "engine": first["engine"],
        "end_to_end": first["end_to_end"],
        # Prep and the engine count differently (records read vs rows scored), so compare rows/s.
        "end_to_end_over_engine": first["end_to_end_over_engine"],
        "engines": engines,
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.table import Table

    table = Table(title=f"pktnin bench: {Path(result['model']).name}, batch {batch}, medians of {runs} runs")
    table.add_column("stage")
    for e in engines:
        table.add_column(f"{e['engine_label']}\npackets/s", justify="right")
    table.add_row("read + prep (records)", f"{prep['packets_per_s']:,.0f}", *[""] * (len(engines) - 1))
    table.add_row("engine only (rows)", *[f"{e['engine']['packets_per_s']:,.0f}" for e in engines])
    table.add_row("end to end (rows)", *[f"{e['end_to_end']['packets_per_s']:,.0f}" for e in engines])
    table.add_row("end to end / engine", *[f"{e['end_to_end_over_engine']:.2f}" for e in engines])
    if len(engines) > 1:
        table.add_row("end to end vs first", "1.00", *[f"{e['vs_first']['end_to_end']:.2f}x" for e in engines[1:]])
    console.print(table)
    for e in engines:
        if e["engine_reason"]:
            console.print(f"{escape(e['engine_label'])}: {escape(e['engine_reason'])}", highlight=False)


@bench_app.command("prep")
def prep(
    paths: Annotated[List[Path], typer.Argument(help="Capture files and/or directories.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mask: Annotated[str, typer.Option("--mask", help="Masking profile: paper or strict.")] = "paper",
    keep_dns: Annotated[bool, typer.Option("--keep-dns")] = False,
) -> None:
    """Read and transform captures without writing rows; print packets, seconds and packets/s.

    `packets` counts every packet record read (kept or skipped by the layout), `rows` the ones that became rows.
    """
    try:
        result = prep_throughput(paths, mask=mask, keep_dns=keep_dns, progress=not as_json)
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(result))
    else:
        console.print(
            f"{result['packets']:,} packets ({result['rows']:,} rows) from {result['files']} files "
            f"in {result['seconds']:.3f} s: {result['packets_per_s']:,.0f} packets/s"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
