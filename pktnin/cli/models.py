"""`pktnin models`: the bundled models (selectable by name with --model) and every model preset with its
parameters and FLOPs per packet, beside the paper's figures.

The preset counts are analytic (pktnin.trainer.presets) and the bundled models' facts come from their ONNX
metadata, so this works without TensorFlow. The text is plain (it reads the same in a pipe or a file) and fits
the terminal's width: `COLUMNS` when set, 80 columns when not a terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from typing import Annotated

import typer

from pktnin.trainer.presets import PAPER_CLASSES, summary

GAP = "  "  # between the columns of a table


def output_width() -> int:
    """COLUMNS when set, else the terminal's width, else (a pipe, a file) 80."""
    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return 80


def compact(value: float) -> str:
    """4 significant digits with k/M/G, as precise as the paper's figures: 5755730 -> 5.756M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:#.4g}{suffix}"
    return f"{value:#.4g}"


def plain_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a plain-text table: headers (two lines at most, split at \\n) over a line of dashes, the first
    column left-aligned and the others right-aligned (numbers)."""
    head = [h.split("\n") for h in headers]
    depth = max(len(h) for h in head)
    head = [[""] * (depth - len(h)) + h for h in head]
    widths = [max(len(x) for x in [*h, *(r[i] for r in rows)]) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return GAP.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return (
        [line([h[d] for h in head]) for d in range(depth)]
        + [GAP.join("-" * w for w in widths)]
        + [line(r) for r in rows]
    )


def models_table(rows: list[dict], num_classes: int, width: int) -> list[str]:
    """The presets, one line each; beside the counts at `num_classes`, those at the paper's class count when they
    differ and the table still fits `width`."""
    for with_paper_classes in (num_classes != PAPER_CLASSES, False):
        headers = ["preset", "bytes", "params", "FLOPs"]
        if with_paper_classes:
            headers += [f"params\n@{PAPER_CLASSES}", f"FLOPs\n@{PAPER_CLASSES}"]
        headers += ["paper\nparams", "paper\nFLOPs"]
        cells = []
        for r in rows:
            row = [r["preset"], f"{r['input_start']}:{r['input_start'] + r['input_bytes']}"]
            row += [compact(r["params"]), compact(r["flops"])]
            if with_paper_classes:
                row += [compact(r["params_12"]), compact(r["flops_12"])]
            if r["paper_params"] is None:
                row += ["-", "-"]
            else:
                row += [compact(r["paper_params"]), compact(r["paper_flops"])]
            cells.append(row)
        table = plain_table(headers, cells)
        if max(len(x) for x in table) <= width:
            break
    note = (
        "FLOPs: 2 per multiply-add + bias adds + pooling + softmax (docs/models.md). Paper figures: its Tables 5 "
        f"and 7-8, for {PAPER_CLASSES} classes; - : beyond the paper."
    )
    return [f"Model presets ({num_classes} classes)", "", *table, "", *textwrap.wrap(note, width)]


def model_facts(r: dict) -> list[tuple[str, str]]:
    """What `pktnin models` says about one bundled model, as (label, text) lines: one more fact is one more pair."""
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
    return [
        ("preset", preset),
        ("classes", f"{len(r['classes'])}: " + ", ".join(r["classes"])),
        ("decides", _decide_text(r)),
        ("input", f"{r['input_dtype']} [1500], {r['size_bytes'] / 1e6:.1f} MB"),
        ("trained on", trained or "not recorded"),
        ("agreement with fp32", _agreement_text(r["agreement"])),
        ("packets/s", _speed_text(r["speed"])),
    ]


def model_block(r: dict, width: int) -> list[str]:
    """One bundled model: its name, then one indented line per fact; long ones wrap under their text."""
    facts = model_facts(r)
    indent = 2 + max(len(label) for label, _ in facts) + len(GAP)
    lines = [r["name"]]
    for label, text in facts:
        wrapped = textwrap.wrap(text, max(20, width - indent), break_on_hyphens=False) or [""]
        lines.append(f"  {label}".ljust(indent) + wrapped[0])
        lines += [" " * indent + more for more in wrapped[1:]]
    return lines


def bundled_blocks(rows: list[dict], width: int) -> list[str]:
    lines = ["Bundled models (--model NAME)", ""]
    for r in rows:
        lines += [*model_block(r, width), ""]
    note = (
        "agreement: argmax agreement with float32, lowest over the held-out check sets (`--json` lists each set); "
        "`--precision auto` picks an engine only at >= 99.5%. packets/s: medians `pktnin bench --model NAME "
        "--record` recorded on this machine, engine alone / end to end."
    )
    return lines + textwrap.wrap(note, width)


def _decide_text(r: dict) -> str:
    if r.get("decide") == "flow" and r.get("server_names"):
        return (
            f"per flow, from its first {r['flow_packets']} packets (--decide flow) and the server name they carry "
            f"({r['server_names']} registered domains known)"
        )
    if r.get("decide") == "flow":
        return f"per flow, from its first {r['flow_packets']} packets (--decide flow)"
    return "per packet (or per flow: --decide flow)"


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
    width = output_width()
    lines = [*bundled_blocks(bundled, width), ""] if bundled else []
    typer.echo("\n".join(lines + models_table(rows, classes, width)))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
