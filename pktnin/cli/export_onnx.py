"""`pktnin export-onnx`: a Keras checkpoint -> one ONNX graph with the pktnin metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pktnin.cli.console import console
from pktnin.cli.errors import exit_codes
from pktnin.cli.options import InputDtype, VerboseOption, silence_tensorflow
from pktnin.engine.export import DEFAULT_OPSET, MAX_OPSET


def export_onnx(
    ckpt: Annotated[
        Path,
        typer.Argument(metavar="CKPT", help="Checkpoint: NAME.keras with NAME.json beside it.", show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .onnx file (written atomically).")],
    input_dtype: Annotated[
        InputDtype,
        typer.Option(
            "--input-dtype",
            help="uint8: raw bytes, /255 inside the graph (the CPU default); float32: bytes/255 (TensorRT plans).",
        ),
    ] = "uint8",
    opset: Annotated[int, typer.Option("--opset", help=f"ONNX opset, 13..{MAX_OPSET}.")] = DEFAULT_OPSET,
    verbose: VerboseOption = False,
) -> None:
    """Export a checkpoint to ONNX: input `row` (batch x 1500), output `probs` (batch x classes), dynamic batch."""
    from pktnin.engine.export import check_export_args
    from pktnin.engine.export import export_onnx as export
    from pktnin.engine.model_file import read_model_info

    with exit_codes():
        check_export_args(input_dtype, opset)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} not found")
    silence_tensorflow(verbose)
    with exit_codes():
        path = export(ckpt, out, input_dtype=input_dtype, opset=opset)
        info = read_model_info(path)
    console.print(
        f"{path}: {info.preset}, {len(info.classes)} classes, input {info.input_dtype}, "
        f"alpha {info.alpha}, opset {opset}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("export-onnx")(export_onnx)
