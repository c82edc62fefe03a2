"""`pktnin evaluate`: metrics of a checkpoint or ONNX model on a dataset split, as JSON and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from pktnin.cli.console import console, warn
from pktnin.cli.errors import exit_codes
from pktnin.cli.options import QuietOption, Split, VerboseOption, silence_tensorflow


def evaluate(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A bundled model by name, a checkpoint NAME.keras (with NAME.json) or an .onnx model.",
            show_default=False,
        ),
    ],
    data: Annotated[Path, typer.Option("--data", help="Dataset directory (pktnin dataset build).")],
    split: Annotated[Split, typer.Option("--split", help="train, val or test.")] = "test",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the result JSON here.")] = None,
    plots: Annotated[
        Optional[Path], typer.Option("--plots", help="Write per-class F1 bars and confusion matrices (PNG) here.")
    ] = None,
    compare: Annotated[
        Optional[List[Path]],
        typer.Option("--compare", metavar="RESULT.json", help="Other result JSONs to draw beside this one."),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Prediction batch size.")] = 1024,
    max_rows: Annotated[
        Optional[int], typer.Option("--max-rows", min=1, help="Evaluate a seeded sample of at most N rows.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result JSON on stdout.")] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Per-class and macro precision/recall/F1, confusion matrix, and the same per flow (mean probabilities).

    The data may be labeled with a subset of the model's classes (matched by name). Macro averages are the
    unweighted mean over the classes that have packets in the split; the model's other classes are listed
    apart, not averaged in as F1 0.
    """
    from rich.table import Table

    from pktnin.engine.catalog import resolve_model

    with exit_codes():
        model_path = resolve_model(model)
    if model_path.suffix == ".keras":
        silence_tensorflow(verbose)

    from pktnin.trainer.evaluate import evaluate as run_evaluation
    from pktnin.trainer.evaluate import load_result, write_evaluation

    with exit_codes():
        others = [load_result(p) for p in compare or []]
        result = run_evaluation(model_path, data, split=split, batch=batch, max_rows=max_rows)
        written = write_evaluation(result, out, plots, others)
    for warning in result["warnings"]:
        warn(warning)
    if quiet:
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        return

    table = Table(title=f"{result['name']} on {split} ({result['rows']:,} packets, {result['flow']['flows']:,} flows)")
    for column in ("class", "support", "precision", "recall", "F1", "flow F1"):
        table.add_column(column, justify="left" if column == "class" else "right")
    absent = {a["class"] for a in result["absent_classes"]}
    for row, flow_row in zip(result["packet"]["per_class"], result["flow"]["per_class"]):
        if row["class"] in absent:
            continue
        table.add_row(
            row["class"], f"{row['support']:,}", f"{row['precision']:.4f}", f"{row['recall']:.4f}",
            f"{row['f1']:.4f}", f"{flow_row['f1']:.4f}",
        )  # fmt: skip
    packet, flow = result["packet"], result["flow"]
    table.add_row(
        "macro", f"{packet['samples']:,}", f"{packet['macro_precision']:.4f}", f"{packet['macro_recall']:.4f}",
        f"{packet['macro_f1']:.4f}", f"{flow['macro_f1']:.4f}", style="bold",
    )  # fmt: skip
    console.print(table)
    console.print(f"macro: {result['macro_average']}", highlight=False)
    if result["absent_classes"]:
        missing = ", ".join(f"{a['class']} ({a['predicted']:,} packets predicted)" for a in result["absent_classes"])
        console.print(f"classes of the model not in the data: {missing}", highlight=False)
    console.print(
        f"accuracy {packet['accuracy']:.4f} (flows {flow['accuracy']:.4f}); {result['packets_per_s']:,.0f} pkts/s"
    )
    for path in written:
        console.print(f"wrote {path}")
    if as_json:
        typer.echo(json.dumps(result, indent=2))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
