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


def prep_throughput(
    paths: list[Path], mask: str = "paper", keep_dns: bool = False, progress: bool = False,
    threads: int | None = None, chunk: int = 8192, flow_keys: bool = True,
) -> dict:
    """Read and transform every capture under `paths`; rows are produced and dropped.

    Rows go into buffers reused from chunk to chunk, as for an engine that reads them where they were written.
    """
    from pktnin.packets import find_captures, iter_packets

    files = find_captures(paths)
    kw = dict(mask=mask, keep_dns=keep_dns, threads=threads, flow_keys=flow_keys, reuse_rows=True)
    # Warm up: load or compile the kernels on the first chunk of the first file (not timed).
    for _ in iter_packets(files[:1], max_records=64, **kw):
        break
    reports: list = []
    kept = 0
    with file_progress(len(files), "bench prep", enabled=progress) as bar:
        cpu_start = time.process_time()
        start = time.perf_counter()
        done = 0
        for batch in iter_packets(files, reports=reports, max_records=chunk, **kw):
            kept += len(batch)
            while done < len(reports):
                bar.file_done()
                done += 1
            bar.add_packets(len(batch))
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    packets = sum(r.records for r in reports)
    return {
        "packets": packets,
        "rows": kept,
        "files": len(files),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # all threads of this process
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
    backend: Annotated[str, typer.Option("--backend", help="auto, tensorrt or onnxruntime.")] = "auto",
    batch: Annotated[int, typer.Option("--batch", help="Packets per model call.")] = 512,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Runs per stage; medians are reported.")] = 3,
    packets: Annotated[int, typer.Option("--packets", min=100, help="Size of the generated capture.")] = 20000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mask: Annotated[str, typer.Option("--mask")] = "paper",
    keep_dns: Annotated[bool, typer.Option("--keep-dns")] = False,
) -> None:
    """Packets/s of read+prep alone, of the engine alone and end to end, and end-to-end / engine-only."""
    from pktnin.engine.runner_base import EngineUnavailableError
    from pktnin.engine.runners import default_model_path, open_runner
    from pktnin.packets import find_captures, iter_packets
    from pktnin.synth import write_synthetic_capture

    with tempfile.TemporaryDirectory(prefix="pktnin-bench-") as tmp:
        workdir = Path(tmp)
        if not paths:
            paths = [write_synthetic_capture(workdir / "synthetic.pcap", packets=packets)]
        try:
            files = find_captures(paths)
            model_path = model if model is not None else default_model_path()
            runner = open_runner(model_path, backend, max_batch=batch)
        except (FileNotFoundError, ValueError, EngineUnavailableError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        try:
            rows = [b.rows for b in iter_packets(files, mask=mask, keep_dns=keep_dns)]
            if not rows:
                console.print("[red]error:[/red] no packet of the input became a row")
                raise typer.Exit(2)
            rows = np.concatenate(rows)
            if runner.input_dtype != "uint8":
                rows = rows.astype(np.float32) / np.float32(255.0)
            prep = _median([prep_throughput(files, mask, keep_dns) for _ in range(runs)])
            engine = _median([engine_throughput(runner, rows, batch) for _ in range(runs)])
            e2e = _median([pipeline_throughput(files, runner, batch, workdir, mask, keep_dns) for _ in range(runs)])
        finally:
            runner.close()
    result = {
        "model": str(model_path),
        "backend": runner.backend,
        "batch": batch,
        "files": len(files),
        "rows": int(rows.shape[0]),
        "read_prep": prep,
        "engine": engine,
        "end_to_end": e2e,
        # Prep and the engine count differently (records read vs rows scored), so compare rows/s.
        "end_to_end_over_engine": e2e["packets_per_s"] / engine["packets_per_s"],
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.table import Table

    table = Table(title=f"pktnin bench: {Path(result['model']).name} on {result['backend']}, batch {batch}")
    table.add_column("stage")
    table.add_column("packets/s (median)", justify="right")
    table.add_row("read + prep (records)", f"{prep['packets_per_s']:,.0f}")
    table.add_row("engine only (rows)", f"{engine['packets_per_s']:,.0f}")
    table.add_row("end to end (rows)", f"{e2e['packets_per_s']:,.0f}")
    table.add_row("end to end / engine", f"{result['end_to_end_over_engine']:.2f}")
    console.print(table)


@bench_app.command("prep")
def prep(
    paths: Annotated[List[Path], typer.Argument(help="Capture files and/or directories.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mask: Annotated[str, typer.Option("--mask", help="Masking profile: paper or strict.")] = "paper",
    keep_dns: Annotated[bool, typer.Option("--keep-dns")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Prep threads (default: all cores).")] = None,
    chunk: Annotated[int, typer.Option("--chunk", min=64, help="Records per chunk.")] = 8192,
    flow_keys: Annotated[bool, typer.Option("--flow-keys/--no-flow-keys", help="Compute flow keys.")] = True,
) -> None:
    """Read and transform captures without writing rows; print packets, seconds and packets/s.

    `packets` counts every packet record read (kept or skipped by the layout), `rows` the ones that became rows.
    """
    try:
        result = prep_throughput(paths, mask=mask, keep_dns=keep_dns, progress=not as_json, threads=threads,
                                 chunk=chunk, flow_keys=flow_keys)
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
