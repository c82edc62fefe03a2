"""`pktnin score`: captures in, per-packet (and per-flow) predictions out, streamed and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from pktnin.api import ScoreJob
from pktnin.cli.console import console, file_progress, print_file_reports, warn
from pktnin.cli.errors import EXIT_INTERRUPTED, check_inputs_read, exit_codes
from pktnin.cli.options import (
    DecideOption,
    FlowPacketsOption,
    ModelOption,
    QuietOption,
    SummaryOption,
    check_summary_path,
    write_summary,
)
from pktnin.distributed.run import executor_options, parse_size
from pktnin.errors import OptionError
from pktnin.scoring.cpu_stages import input_size

DEFAULT_BATCH = 512


def score(
    paths: Annotated[
        List[Path],
        typer.Argument(
            metavar="PATH",
            help="Capture files (.gz too), directories (walked recursively), pipes, or - for stdin.",
            show_default=False,
        ),
    ],
    model: ModelOption = None,
    backend: Annotated[str, typer.Option("--backend", help="auto, tensorrt, onnxruntime or openvino.")] = "auto",
    precision: Annotated[
        str, typer.Option("--precision", help="auto (fastest engine that agrees with fp32), fp32, bf16 or int8.")
    ] = "auto",
    engine_workers: Annotated[
        int,
        typer.Option(
            "--engine-workers",
            min=0,
            help="CPU: 1 = one multi-thread session, N = N single-thread sessions, 0 = measure and use the faster.",
        ),
    ] = 0,
    batch: Annotated[int, typer.Option("--batch", help="Packets per model call.")] = DEFAULT_BATCH,
    decide: DecideOption = None,
    flow_packets: FlowPacketsOption = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Per-packet output file (default predictions.parquet or .csv)."),
    ] = None,
    flows: Annotated[Optional[Path], typer.Option("--flows", help="Also write per-flow predictions here.")] = None,
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="parquet or csv (default: from --out's suffix, else parquet).")
    ] = None,
    probs: Annotated[bool, typer.Option("--probs", help="Add one probability column per class (p_<class>).")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed run: reuse the files it finished.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace existing outputs; discard an earlier run's finished files."),
    ] = False,
    report: Annotated[
        Optional[Path],
        typer.Option("--report", help="Per-file report (.json or .csv): status, error and offset, rows, skips."),
    ] = None,
    keep_dns: Annotated[bool, typer.Option("--keep-dns", help="Keep packets to or from port 53.")] = False,
    mask: Annotated[str, typer.Option("--mask", help="Masking profile: paper or strict.")] = "paper",
    threads: Annotated[
        Optional[int], typer.Option("--threads", help="Threads of the CPU model (ONNX Runtime intra-op threads).")
    ] = None,
    prep_threads: Annotated[
        Optional[int],
        typer.Option("--prep-threads", help="Threads preparing packets (default: 1 with the CPU model, else all)."),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    quiet: QuietOption = False,
    summary: SummaryOption = None,
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            "--engine",
            help="local (this process) or ray (units on a Ray cluster, extra pktnin[ray]). --engine: old name.",
        ),
    ] = "local",
    ray_address: Annotated[
        Optional[str],
        typer.Option("--ray-address", help="Ray cluster to join: auto or HOST:PORT (default: a local Ray)."),
    ] = None,
    actors: Annotated[int, typer.Option("--actors", help="Ray actors scoring units (each loads the model once).")] = 1,
    split_bytes: Annotated[
        str,
        typer.Option(
            "--split-bytes", help="Units of work: cut larger files, group smaller ones up to this size (e.g. 256M)."
        ),
    ] = "256M",
    keep_parts: Annotated[
        bool,
        typer.Option("--keep-parts", help="Ray: keep the rows as a Parquet dataset in OUT.parts/ instead of one file."),
    ] = False,
) -> None:
    """Classify every packet of the captures and write one row per packet: file, frame, timestamp, addresses
    and ports (as captured), protocol, predicted label and its probability.

    The first run compiles the packet kernels (about 10 s on a 2-core CPU); later runs reuse them.
    Outputs are written atomically; an existing output is replaced only with --force. Finished files are
    recorded in OUT.manifest.json (their rows wait in OUT.parts/) so that `--resume` continues a killed run where
    it stopped; both are removed at the end. Exit codes: 0 every input read, 3 some inputs failed or were cut
    short, 1 none could be read (nothing written), 2 usage.
    With `--executor ray` the units of work are scored by Ray actors (same outputs, same `--resume`).
    """

    if fmt is None and out is None:
        fmt = "parquet"
    out = out or Path(f"predictions.{fmt}")
    with exit_codes():
        ray = executor_options(executor, ray_address, actors, keep_parts)
        unit_bytes = size_option("--split-bytes", split_bytes)
        check_summary_path(summary)
        job = ScoreJob.prepare(
            paths, out, model, flows=flows, fmt=fmt, probs=probs, resume=resume, force=force, report=report,
            keep_dns=keep_dns, mask=mask, backend=backend, precision=precision, engine_workers=engine_workers or None,
            batch=batch, threads=threads, prep_threads=prep_threads, ray=ray, unit_bytes=unit_bytes, decide=decide,
            flow_packets=flow_packets,
        )  # fmt: skip
    from pktnin.engine.catalog import mask_warning

    warning = mask_warning(job.model_path, mask)
    if warning:
        warn(warning)
    try:
        with exit_codes(hint="finished files are kept: fix the cause and rerun with --resume to continue", setup=False):
            total_bytes = sum(input_size(f) for f in job.files)
            with file_progress(len(job.files), "score", enabled=progress and not quiet, total_bytes=total_bytes) as bar:
                result = job.run(progress=bar)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]; finished files are kept: rerun with --resume to continue")
        raise typer.Exit(EXIT_INTERRUPTED) from None

    if not quiet:
        _print_summary(result)
        if job.runner.engine_label:
            console.print(
                f"engine: {job.runner.engine_label} ({job.runner.engine_reason})", markup=False, highlight=False
            )
    write_summary(summary, run_summary(result, job.model_path, job.runner))
    check_inputs_read(result.reports)


def size_option(option: str, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise OptionError(f"{option}: {exc}") from None


def run_summary(result, model_path: Path, runner) -> dict:
    """What the end-of-run tables show, as one JSON-able dict (--summary)."""
    from pktnin.packets import total_skips

    failed = [
        {"file": str(r.path), "status": r.status, "errors": list(r.errors)}
        for r in result.reports
        if r.errors and not r.not_capture
    ]
    return {
        "model": str(model_path),
        "backend": runner.backend,
        "precision": runner.precision,
        "engine": runner.engine_label,
        "files": len(result.files),
        "resumed_files": result.resumed,
        "packets": result.packets,
        "seconds": result.seconds,
        "packets_per_s": result.packets_per_s,
        "labels": {name: int(n) for name, n in zip(result.classes, result.label_counts.tolist()) if n},
        "skipped_packets": total_skips(result.reports),
        "files_with_errors": failed,
        "not_captures": [str(r.path) for r in result.reports if r.not_capture],
        "rows": result.rows_written,
        "out": str(result.outputs[0]) if result.outputs else None,
        "flows": result.flows_written,
        "flows_out": str(result.outputs[1]) if len(result.outputs) > 1 else None,
    }


def _print_summary(result) -> None:
    from rich.table import Table

    from pktnin.packets import total_skips

    total = int(result.label_counts.sum())
    labels = Table(title="Packets per label")
    labels.add_column("label")
    labels.add_column("packets", justify="right")
    labels.add_column("share", justify="right")
    for name, count in sorted(zip(result.classes, result.label_counts.tolist()), key=lambda kv: -kv[1]):
        if count:
            labels.add_row(name, f"{count:,}", f"{count / total:.1%}")
    console.print(labels)
    print_file_reports(result.reports, total_skips(result.reports))
    resumed = f" ({result.resumed} taken from the earlier run)" if result.resumed else ""
    console.print(
        f"{result.packets:,} packets scored from {len(result.files)} files{resumed} in {result.seconds:.2f} s: "
        f"{result.packets_per_s:,.0f} packets/s"
    )
    if not result.outputs:
        console.print("no output written: not one input could be read")
        return
    console.print(f"{result.rows_written:,} rows -> {result.outputs[0]}")
    if result.flows_written is not None:
        console.print(f"{result.flows_written:,} flows -> {result.outputs[1]}")


def register(app: typer.Typer) -> None:
    app.command("score")(score)
