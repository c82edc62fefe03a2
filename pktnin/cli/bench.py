"""`pktnin bench prep`: read + transform throughput, no rows written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, List

import typer

from pktnin.cli._console import console, file_progress

bench_app = typer.Typer(help="Measure packets per second.", no_args_is_help=True)


def prep_throughput(paths: list[Path], mask: str = "paper", keep_dns: bool = False, progress: bool = False) -> dict:
    """Read and transform every capture under `paths`; rows are produced and dropped."""
    from pktnin.packets import find_captures, iter_packets

    files = find_captures(paths)
    # Warm up: load or compile the kernels on the first chunk of the first file (not timed).
    for _ in iter_packets(files[:1], mask=mask, keep_dns=keep_dns, max_records=64):
        break
    reports: list = []
    packets = kept = 0
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
