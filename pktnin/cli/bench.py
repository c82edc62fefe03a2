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
    backend: Annotated[str, typer.Option("--backend", help="auto, tensorrt or onnxruntime.")] = "auto",
    batch: Annotated[int, typer.Option("--batch", help="Packets per model call.")] = DEFAULT_BATCH,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Runs per stage; medians are reported.")] = 3,
    packets: Annotated[int, typer.Option("--packets", min=100, help="Size of the generated capture.")] = 20000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mask: Annotated[str, typer.Option("--mask")] = "paper",
    keep_dns: Annotated[bool, typer.Option("--keep-dns")] = False,
) -> None:
    """Packets/s of read+prep alone, of the engine alone and end to end, and end-to-end / engine-only."""
    from pktnin.engine.runners import default_model_path, open_runner
    from pktnin.measure import stage_throughput
    from pktnin.packets import find_captures
    from pktnin.rowfile import PrepOptions
    from pktnin.synth import write_synthetic_capture

    with tempfile.TemporaryDirectory(prefix="pktnin-bench-") as tmp:
        workdir = Path(tmp)
        with exit_codes():
            opts = PrepOptions(mask=mask, keep_dns=keep_dns)
            if not paths:
                paths = [write_synthetic_capture(workdir / "synthetic.pcap", packets=packets)]
            files = find_captures(paths)
            model_path = model if model is not None else default_model_path()
            runner = open_runner(model_path, backend, max_batch=batch)
        try:
            with exit_codes(setup=False):
                result = {"model": str(model_path), **stage_throughput(files, runner, batch, runs, workdir, opts)}
        finally:
            runner.close()
    prep, engine, e2e = result["read_prep"], result["engine"], result["end_to_end"]
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
            result = prep_throughput(files, opts, progress=bar)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        console.print(
            f"{result['packets']:,} packets ({result['rows']:,} rows) from {result['files']} files "
            f"in {result['seconds']:.3f} s: {result['packets_per_s']:,.0f} packets/s"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
