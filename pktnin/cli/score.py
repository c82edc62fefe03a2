"""`pktnin score`: captures in, per-packet (and per-flow) predictions out, streamed and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from pktnin.cli.console import console, failed_files_table, file_progress, skip_table, warn
from pktnin.cli.errors import EXIT_INTERRUPTED, check_inputs_read, exit_codes, usage
from pktnin.cli.options import ModelOption, QuietOption, SummaryOption, check_summary_path, write_summary

DEFAULT_BATCH = 512


def score(
    paths: Annotated[
        List[Path],
        typer.Argument(
            metavar="PATH", help="Capture files and/or directories (walked recursively).", show_default=False
        ),
    ],
    model: ModelOption = None,
    backend: Annotated[str, typer.Option("--backend", help="auto, tensorrt, onnxruntime or openvino.")] = "auto",
    precision: Annotated[
        str, typer.Option("--precision", help="auto (fastest engine that agrees with fp32), fp32, bf16 or int8.")
    ] = "auto",
    engine_workers: Annotated[
        int, typer.Option("--engine-workers", min=0, help="CPU: 1 = one multi-thread session, N = N single-thread "
                          "sessions, 0 = measure and use the faster.")
    ] = 0,
    batch: Annotated[int, typer.Option("--batch", help="Packets per model call.")] = DEFAULT_BATCH,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Per-packet output (default predictions.parquet or .csv).")
    ] = None,
    flows: Annotated[Optional[Path], typer.Option("--flows", help="Also write per-flow predictions here.")] = None,
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="parquet or csv (default: from --out's suffix, else parquet).")
    ] = None,
    probs: Annotated[bool, typer.Option("--probs", help="Add one probability column per class (p_<class>).")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed run: reuse the files it finished.")
    ] = False,
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
) -> None:
    """Classify every packet of the captures and write one row per packet: file, frame, timestamp, addresses
    and ports (as captured), protocol, predicted label and its probability.

    The first run compiles the packet kernels (about 10 s on a 2-core CPU); later runs reuse them.
    Outputs are written atomically. Finished files are recorded in OUT.manifest.json (their rows wait in
    OUT.parts/) so that `--resume` continues a killed run where it stopped; both are removed at the end.
    """
    from dataclasses import replace

    from pktnin.engine.cache import file_sha256
    from pktnin.engine.catalog import mask_warning, resolve_model
    from pktnin.engine.runners import open_runner
    from pktnin.packets import find_captures
    from pktnin.score import ScoreOptions, score_files

    if fmt is None:
        fmt = "csv" if out is not None and out.suffix.lower() == ".csv" else "parquet"
    out = out or Path(f"predictions.{fmt}")
    with exit_codes():
        opts = ScoreOptions(
            out=out, flows_out=flows, fmt=fmt, probs=probs, resume=resume, keep_dns=keep_dns, mask=mask,
            batch=batch, prep_threads=prep_threads,
        )  # fmt: skip
        files = find_captures(paths)
        files = [f for f in files if not _own_output(f, out, flows)]  # e.g. an earlier output inside the input folder
        if not files:
            usage("no capture files found in the given paths")
        check_summary_path(summary)
        model_path = resolve_model(model)
        runner = open_runner(model_path, backend, intra_threads=threads, max_batch=batch, precision=precision,
                             engine_workers=engine_workers or None)
    warning = mask_warning(model_path, mask)
    if warning:
        warn(warning)
    opts = replace(
        opts,
        prep_threads=prep_threads or (1 if runner.backend in ("onnxruntime", "openvino") else None),
        model_id=f"{file_sha256(model_path)}:{runner.backend}:{runner.precision}",
    )
    try:
        with exit_codes(hint="finished files are kept: fix the cause and rerun with --resume to continue", setup=False):
            with file_progress(len(files), "score", enabled=progress and not quiet) as bar:
                result = score_files(files, runner, opts, progress=bar)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]; finished files are kept: rerun with --resume to continue")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        runner.close()

    if not quiet:
        _print_summary(result)
        if runner.engine_label:
            console.print(f"engine: {runner.engine_label} ({runner.engine_reason})", markup=False, highlight=False)
    write_summary(summary, run_summary(result, model_path, runner))
    check_inputs_read(result.reports)


def run_summary(result, model_path: Path, runner) -> dict:
    """What the end-of-run tables show, as one JSON-able dict (--summary)."""
    from pktnin.packets import total_skips

    failed = [
        {"file": str(r.path), "status": r.status, "errors": list(r.errors)} for r in result.reports if r.errors
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
        "rows": result.rows_written,
        "out": str(result.outputs[0]),
        "flows": result.flows_written,
        "flows_out": str(result.outputs[1]) if result.flows_written is not None else None,
    }


def _own_output(path: Path, out: Path, flows: Path | None) -> bool:
    from pktnin.score.manifest import manifest_path, parts_dir

    path = path.resolve()
    targets = [out] + ([flows] if flows is not None else [])
    if any(path == t.resolve() or path == manifest_path(t).resolve() for t in targets):
        return True
    return parts_dir(out).resolve() in path.parents


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
    skips = total_skips(result.reports)
    if skips:
        console.print(skip_table(skips))
    failed = failed_files_table(result.reports)
    if failed is not None:
        console.print(failed)
    resumed = f" ({result.resumed} taken from the earlier run)" if result.resumed else ""
    console.print(
        f"{result.packets:,} packets scored from {len(result.files)} files{resumed} in {result.seconds:.2f} s: "
        f"{result.packets_per_s:,.0f} packets/s"
    )
    console.print(f"{result.rows_written:,} rows -> {result.outputs[0]}")
    if result.flows_written is not None:
        console.print(f"{result.flows_written:,} flows -> {result.outputs[1]}")


def register(app: typer.Typer) -> None:
    app.command("score")(score)
