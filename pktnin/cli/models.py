"""`pktnin models`: the bundled models (selectable by name with --model) and every model preset with its
parameters and FLOPs per packet, beside the paper's figures.

The preset counts are analytic (pktnin.trainer.presets) and the bundled models' facts come from their ONNX
metadata, so this works without TensorFlow.
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
        if r["paper_params"] is None:
            cells += ["-", "-", r["paper_source"]]
        else:
            cells += [f"{r['paper_params']:.3e}", f"{r['paper_flops']:.3e}", r["paper_source"]]
        table.add_row(*cells)
    return table


def bundled_table(rows: list[dict]) -> Table:
    table = Table(
        title="Bundled models (--model NAME)",
        caption="agreement: argmax agreement with float32, lowest over the held-out check sets (`--json` lists each "
        "set); `--precision auto` picks an engine only at >= 99.5%. speed: medians `pktnin bench --model NAME "
        "--record` recorded on this machine (engine alone / end to end)",
    )
    table.add_column("name")
    table.add_column("preset")
    table.add_column("classes", justify="right")
    table.add_column("input")
    table.add_column("size", justify="right")
    table.add_column("trained on")
    table.add_column("agreement with fp32")
    table.add_column("packets/s")
    for r in rows:
        t = r["trained"]
        trained = ", ".join(
            part
            for part in (
                f"{t['rows']:,} rows" if t.get("rows") else None,
                f"{t['split']} split" if t.get("split") else None,
                f"fit {t['fit']}" if t.get("fit") else None,
                f"mask {t['mask']}" if t.get("mask") else None,
                (t.get("created") or "")[:10] or None,
            )
            if part
        )
        preset = r["preset"] + (f" (alpha {r['alpha']:.2f})" if r.get("alpha") is not None else "")
        table.add_row(
            r["name"], preset, str(len(r["classes"])), f"{r['input_dtype']} [1500]",
            f"{r['size_bytes'] / 1e6:.1f} MB", trained or "not recorded", _agreement_text(r["agreement"]),
            _speed_text(r["speed"]),
        )  # fmt: skip
    return table


def _agreement_text(agreement: dict) -> str:
    """Per engine, the lowest agreement over the held-out check sets ("selection" chose the quantization)."""
    parts = []
    for engine, per_set in sorted((agreement or {}).get("engines", {}).items()):
        held = [v for name, v in per_set.items() if name != "selection"]
        parts.append(f"{engine} {min(held):.2%}" if held else f"{engine} not checked on held-out rows")
    return "; ".join(parts) or "no int8 form"


def _speed_text(speed: dict | None) -> str:
    if not speed:
        return "not measured"
    return "; ".join(
        f"{backend}: {s['engine_packets_per_s']:,.0f} / {s['end_to_end_packets_per_s']:,.0f}"
        for backend, s in sorted(speed.items())
    )


def models(
    classes: Annotated[int, typer.Option("--classes", min=2, help="Number of classes of the output layer.")] = 18,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of the tables.")] = False,
) -> None:
    """List the bundled models (name, classes, input, size, what trained them, measured speed) and the model
    presets (input bytes, parameters and FLOPs per packet, the paper's figures)."""
    from pktnin.cli.errors import exit_codes
    from pktnin.engine.catalog import bundled_models, describe_bundled

    with exit_codes():
        bundled = [describe_bundled(path) for path in bundled_models()]
    rows = summary(classes)
    if as_json:
        typer.echo(json.dumps({"bundled": bundled, "presets": rows}, indent=2))
        return
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # a pipe or a file: do not squeeze the columns into 80
    if bundled:
        out.print(bundled_table(bundled))
    out.print(models_table(rows, classes))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
