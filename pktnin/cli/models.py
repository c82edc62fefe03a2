"""`pktnin models`: every model preset with its parameters and FLOPs per packet, beside the paper's figures.

The counts are analytic (pktnin.trainer.presets), so this works without TensorFlow.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pktnin.trainer.presets import PAPER_CLASSES, summary


def models_table(rows: list[dict], num_classes: int) -> Table:
    table = Table(
        title=f"Model presets ({num_classes} classes)",
        caption=f"FLOPs: 2 per multiply-add + bias adds + pooling + softmax (docs/models.md). "
        f"Paper figures are for {PAPER_CLASSES} classes.",
    )
    table.add_column("preset")
    table.add_column("input bytes", justify="right")
    table.add_column("parameters", justify="right")
    table.add_column("FLOPs/packet", justify="right")
    if num_classes != PAPER_CLASSES:
        table.add_column(f"params @{PAPER_CLASSES}", justify="right")
        table.add_column(f"FLOPs @{PAPER_CLASSES}", justify="right")
    table.add_column("paper params", justify="right")
    table.add_column("paper FLOPs", justify="right")
    table.add_column("source")
    for r in rows:
        start, stop = r["input_start"], r["input_start"] + r["input_bytes"]
        cells = [r["preset"], f"{start}:{stop} ({r['input_bytes']})", f"{r['params']:,}", f"{r['flops']:.3e}"]
        if num_classes != PAPER_CLASSES:
            cells += [f"{r['params_12']:,}", f"{r['flops_12']:.3e}"]
        cells += [f"{r['paper_params']:.3e}", f"{r['paper_flops']:.3e}", r["paper_source"]]
        table.add_row(*cells)
    return table


def models(
    classes: Annotated[int, typer.Option("--classes", min=2, help="Number of classes of the output layer.")] = 18,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of the table.")] = False,
) -> None:
    """List the model presets: input bytes, parameters and FLOPs per packet, and the paper's figures."""
    rows = summary(classes)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # a pipe or a file: do not squeeze the columns into 80
    out.print(models_table(rows, classes))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
