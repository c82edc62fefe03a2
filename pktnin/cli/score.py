"""`pktnin score`: captures in, per-packet (and per-flow) predictions out, streamed and resumable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from pktnin.cli.console import console, file_progress, print_file_reports, warn
from pktnin.cli.errors import (
    Terminated,
    check_inputs_read,
    exit_codes,
    interrupt_exit_code,
    stop_signals_interrupt,
)
from pktnin.cli.options import (
    Backend,
    CpuPrecision,
    DecideOption,
    Executor,
    FlowPacketsOption,
    Mask,
    ModelOption,
    OutputFormat,
    QuietOption,
    SummaryOption,
    check_summary_path,
    write_summary,
)
from pktnin.errors import OptionError

DEFAULT_BATCH = 512


RESUME_HINT = "finished files are kept: fix the cause and rerun with --resume to continue"


def score(
    paths: Annotated[
        List[str],  # str, not Path: a URI keeps its "//"
        typer.Argument(
            metavar="PATH",
            help="Capture files (.gz too), directories (walked recursively), pipes, - for stdin, or URIs "
            "(s3://bucket/prefix/, gs://, abfs://, hdfs://).",
            show_default=False,
        ),
    ],
    model: ModelOption = None,
    backend: Annotated[
        Backend, typer.Option("--backend", help="Engine running the model (auto: TensorRT on a GPU, else the CPU).")
    ] = "auto",
    precision: Annotated[
        CpuPrecision,
        typer.Option("--precision", help="auto: the fastest engine that agrees with fp32."),
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
        Optional[str],
        typer.Option(
            "--out", "-o", metavar="<path>", help="Per-packet output file or URI (default predictions.parquet or .csv)."
        ),
    ] = None,
    flows: Annotated[
        Optional[str], typer.Option("--flows", metavar="<path>", help="Also write per-flow predictions here.")
    ] = None,
    fmt: Annotated[
        Optional[OutputFormat],
        typer.Option("--format", help="Output format (default: from --out's suffix, else parquet)."),
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
        Optional[str],
        typer.Option(
            "--report", metavar="<path>", help="Per-file report (.json or .csv): status, error and offset, rows, skips."
        ),
    ] = None,
    keep_dns: Annotated[bool, typer.Option("--keep-dns", help="Keep packets to or from port 53.")] = False,
    mask: Annotated[Mask, typer.Option("--mask", help="Masking profile.")] = "paper",
    threads: Annotated[
        Optional[int],
        typer.Option(
            "--threads", min=1, metavar="N", help="Threads running the model on the CPU (default: one per core)."
        ),
    ] = None,
    prep_threads: Annotated[
        Optional[int],
        typer.Option("--prep-threads", help="Threads preparing packets (default: 1 with the CPU model, else all)."),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    quiet: QuietOption = False,
    summary: SummaryOption = None,
    executor: Annotated[
        Executor,
        typer.Option(
            "--executor",
            "--engine",
            help="local: this process; ray: units on a Ray cluster (extra pktnin[ray]). --engine: old name.",
        ),
    ] = "local",
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            "--ray-address", metavar="auto|HOST:PORT", help="Ray cluster to join (default: start a local Ray)."
        ),
    ] = None,
    actors: Annotated[int, typer.Option("--actors", help="Ray actors scoring units (each loads the model once).")] = 1,
    split_bytes: Annotated[
        str,
        typer.Option(
            "--split-bytes",
            metavar="SIZE",
            help="Units of work: cut larger files, group smaller ones up to this size (e.g. 256M).",
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

    started = time.perf_counter()
    # The scoring modules load numba, Arrow and the engines: imported when the command runs, not for --help.
    from pktnin.api import ScoreJob
    from pktnin.distributed.run import executor_options
    from pktnin.scoring.cpu_stages import input_size
    from pktnin.storage import io_map

    if fmt is None and out is None:
        fmt = "parquet"
    out = out or f"predictions.{fmt}"
    with exit_codes():
        ray = executor_options(executor, ray_address, actors, keep_parts)
        unit_bytes = size_option("--split-bytes", split_bytes)
        check_summary_path(summary, force)
        check_output_folders(out=out, flows=flows, report=report)
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
        with stop_signals_interrupt(), exit_codes(hint=RESUME_HINT, setup=False):
            total_bytes = sum(io_map(input_size, job.files))
            with file_progress(len(job.files), "score", enabled=progress and not quiet, total_bytes=total_bytes) as bar:
                result = job.run(progress=bar)
    except KeyboardInterrupt as exc:
        by = f" by {exc}" if isinstance(exc, Terminated) else ""
        console.print(f"[yellow]interrupted{by}[/yellow]; finished files are kept: rerun the same command with --resume"
                      " to continue")  # fmt: skip
        raise typer.Exit(interrupt_exit_code(exc)) from None

    timings = {**job.timings, "wall": time.perf_counter() - started}
    if not quiet:
        _print_summary(result, timings)
        console.print(f"engine: {engine_line(job.choice)}", markup=False, highlight=False)
    write_summary(summary, run_summary(result, job.model_path, job.runner, job.choice, timings))
    check_inputs_read(result.reports)


def check_output_folders(**names: str | None) -> None:
    """The command line creates no folders: a typo in one must not become a new tree of folders (a store's
    prefixes need no creating)."""
    from pktnin.storage import is_uri  # loads pyarrow: when the command runs, not for --help

    for option, name in names.items():
        if name is None or is_uri(name):
            continue
        path = Path(name)
        if not path.absolute().parent.exists():
            raise OptionError(f"--{option} {path}: folder {path.parent} does not exist (create it first)")


def size_option(option: str, text: str) -> int:
    from pktnin.distributed.run import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise OptionError(f"{option}: {exc}") from None


def engine_line(choice) -> str:
    """What ran, why, and how far its labels may differ from float32's (the lowest recorded agreement)."""
    line = f"{choice.label} ({choice.reason})"
    if choice.agreement:
        line += f"; agrees with float32 on >= {choice.min_agreement():.2%} of packets in every check set"
    return line


def run_summary(result, model_path: Path, runner, choice, timings: dict[str, float] | None = None) -> dict:
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
        "engine": choice.label,
        "engine_reason": choice.reason,
        "agreement": choice.agreement,
        "files": len(result.files),
        "resumed_files": result.resumed,
        "packets": result.packets,
        "seconds": result.seconds,
        "timings": dict(timings or {}),
        "packets_per_s": result.packets_per_s,
        "units": result.units,
        "units_by_node": dict(result.nodes),
        "labels": {name: int(n) for name, n in zip(result.classes, result.label_counts.tolist()) if n},
        "skipped_packets": total_skips(result.reports),
        "files_with_errors": failed,
        "not_captures": [str(r.path) for r in result.reports if r.not_capture],
        "rows": result.rows_written,
        "out": str(result.outputs[0]) if result.outputs else None,
        "flows": result.flows_written,
        "flows_out": str(result.outputs[1]) if len(result.outputs) > 1 else None,
    }


def _print_summary(result, timings: dict[str, float]) -> None:
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
    if total:  # nothing scored: no empty table
        console.print(labels)
    print_file_reports(result.reports, total_skips(result.reports))
    resumed = f" ({result.resumed} taken from the earlier run)" if result.resumed else ""
    console.print(
        f"{result.packets:,} packets scored from {len(result.files)} file{'s' if len(result.files) != 1 else ''}"
        f"{resumed}: "
        f"{result.packets_per_s:,.0f} packets/s over {result.seconds:.2f} s of scoring"
    )
    if "wall" in timings:
        console.print(time_line(timings), highlight=False)
    if result.nodes:  # where a Ray run's units were scored
        by_node = ", ".join(f"{node[:8]} {n}" for node, n in sorted(result.nodes.items(), key=lambda kv: -kv[1]))
        nodes = len(result.nodes)
        console.print(f"units scored on {nodes} Ray node{'s' if nodes != 1 else ''}: {by_node}", highlight=False)
    if not result.outputs:
        console.print("no output written: not one input could be read")
        return
    console.print(f"{result.rows_written:,} rows -> {result.outputs[0]}")
    if result.flows_written is not None:
        console.print(f"{result.flows_written:,} flows -> {result.outputs[1]}")


TIMING_NAMES = {  # in the order a run spends them
    "model": "model load and engine choice",
    "ray_start": "Ray start",
    "kernels": "packet kernels",
    "scoring": "scoring",
    "outputs": "outputs",
}


def time_line(timings: dict[str, float]) -> str:
    """Where the wall time went: the fixed costs beside the scoring (a small capture's run is mostly those)."""
    names = dict(TIMING_NAMES)
    if "ray_start" in timings:  # each actor loads the model and the kernels before its first unit
        names["scoring"] = "scoring (actors' start included)"
    parts = [f"{name} {timings[key]:.2f} s" for key, name in names.items() if key in timings]
    other = timings["wall"] - sum(timings.get(key, 0.0) for key in TIMING_NAMES)
    if other >= 0.01:
        parts.append(f"other {other:.2f} s")  # finding the inputs, checks, the tables
    return f"{timings['wall']:.2f} s in all: " + ", ".join(parts)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
