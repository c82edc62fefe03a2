"""`pktnin bench`: packets/s of each stage (read+prep, engine) and end to end; `pktnin bench prep`: prep alone.

The measurements are pktnin.measure's; this module parses options and prints.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperGroup

from pktnin.cli.console import console, file_progress
from pktnin.cli.errors import exit_codes
from pktnin.cli.score import DEFAULT_BATCH


class _DefaultToRun(TyperGroup):
    """`pktnin bench [PATH...]` runs the `run` command; `pktnin bench prep ...` the prep one."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(cls=_DefaultToRun, help="Measure packets per second (default: every stage and end to end).")


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
    batch: Annotated[int, typer.Option("--batch", help="Packets per model call.")] = DEFAULT_BATCH,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Runs per stage; medians are reported.")] = 3,
    packets: Annotated[int, typer.Option("--packets", min=100, help="Size of the generated capture.")] = 20000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mask: Annotated[str, typer.Option("--mask")] = "paper",
    keep_dns: Annotated[bool, typer.Option("--keep-dns")] = False,
) -> None:
    """Packets/s of read+prep alone, of the engine alone and end to end, and end-to-end / engine-only.

    With several precisions (e.g. --precision fp32@1,int8,auto) each stage alternates between the engines run by
    run, so a busy machine slows them alike, and the report gives each engine's medians and its ratio to the first.
    """
    from pktnin.engine.runners import default_model_path, open_runner
    from pktnin.errors import OptionError
    from pktnin.measure import compare_engines
    from pktnin.packets import find_captures
    from pktnin.rowfile import PrepOptions
    from pktnin.synth import write_synthetic_capture

    with tempfile.TemporaryDirectory(prefix="pktnin-bench-") as tmp:
        workdir = Path(tmp)
        runners: list = []
        try:
            with exit_codes():
                layouts = _precision_layouts(precision, engine_workers, OptionError)
                opts = PrepOptions(mask=mask, keep_dns=keep_dns)
                if not paths:
                    paths = [write_synthetic_capture(workdir / "synthetic.pcap", packets=packets)]
                files = find_captures(paths)
                model_path = model if model is not None else default_model_path()
                for name, sessions in layouts:
                    runners.append(open_runner(model_path, backend, max_batch=batch, precision=name,
                                               engine_workers=sessions))
            with exit_codes(setup=False):
                labels = [p.strip() for p in precision.split(",")]
                result = {"model": str(model_path),
                          **compare_engines(files, runners, labels, batch, runs, workdir, opts)}
        finally:
            for runner in runners:
                runner.close()
    prep, engines = result["read_prep"], result["engines"]
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.table import Table

    table = Table(title=f"pktnin bench: {Path(result['model']).name}, batch {batch}, packets/s, medians of {runs} runs")
    table.add_column("stage")
    for e in engines:
        table.add_column(e["engine_label"], justify="right")
    table.add_row("read + prep (records)", f"{prep['packets_per_s']:,.0f}", *[""] * (len(engines) - 1))
    table.add_row("engine only (rows)", *[f"{e['engine']['packets_per_s']:,.0f}" for e in engines])
    table.add_row("end to end (rows)", *[f"{e['end_to_end']['packets_per_s']:,.0f}" for e in engines])
    table.add_row("end to end / engine", *[f"{e['end_to_end_over_engine']:.2f}" for e in engines])
    if len(engines) > 1:
        table.add_row("end to end vs first", "1.00", *[f"{e['vs_first']['end_to_end']:.2f}x" for e in engines[1:]])
    console.print(table)
    for e in engines:
        if e["engine_reason"]:
            console.print(f"{e['engine_label']}: {e['engine_reason']}", markup=False, highlight=False)


def _precision_layouts(precision: str, engine_workers: int, error) -> list[tuple[str, int | None]]:
    """[(precision, sessions or None)] from --precision "auto" / "fp32@1,int8" and --engine-workers."""
    asked = [p.strip() for p in precision.split(",") if p.strip()]
    if not asked or len(set(asked)) != len(asked):
        raise error("--precision: give one or more distinct precisions")
    layouts = []
    for p in asked:
        name, _, sessions = p.partition("@")
        if sessions and not (sessions.isdigit() and int(sessions) >= 1):
            raise error(f"--precision {p}: sessions after @ must be a number >= 1")
        layouts.append((name, int(sessions) if sessions else (engine_workers or None)))
    return layouts


@bench_app.command("prep")
def prep(
    paths: Annotated[List[Path], typer.Argument(help="Capture files and/or directories.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mask: Annotated[str, typer.Option("--mask", help="Masking profile: paper or strict.")] = "paper",
    keep_dns: Annotated[bool, typer.Option("--keep-dns")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Prep threads (default: all).")] = None,
    chunk: Annotated[int, typer.Option("--chunk", min=64, help="Records per chunk.")] = 8192,
    flow_keys: Annotated[bool, typer.Option("--flow-keys/--no-flow-keys", help="Compute flow keys.")] = True,
) -> None:
    """Read and transform captures without writing rows; print packets, seconds and packets/s.

    `packets` counts every packet record read (kept or skipped by the layout), `rows` the ones that became rows.
    """
    from pktnin.measure import prep_throughput
    from pktnin.packets import find_captures
    from pktnin.rowfile import PrepOptions

    with exit_codes():
        opts = PrepOptions(mask=mask, keep_dns=keep_dns)
        files = find_captures(paths)
    with exit_codes(setup=False):
        with file_progress(len(files), "bench prep", enabled=not as_json) as bar:
            result = prep_throughput(files, opts, progress=bar, threads=threads, chunk=chunk,
                                     flow_keys=flow_keys)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        console.print(
            f"{result['packets']:,} packets ({result['rows']:,} rows) from {result['files']} files "
            f"in {result['seconds']:.3f} s: {result['packets_per_s']:,.0f} packets/s"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
