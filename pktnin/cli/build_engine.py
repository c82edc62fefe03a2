"""`pktnin build-engine`: a checkpoint or ONNX file -> a TensorRT plan plus its sidecar JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pktnin.cli.console import console
from pktnin.cli.errors import exit_codes, usage
from pktnin.cli.options import TensorRTPrecision
from pktnin.engine.runner_base import DEFAULT_MAX_BATCH
from pktnin.engine.trt_build import DEFAULT_WORKSPACE_MB


def build_engine(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A bundled model by name, a NAME.keras checkpoint or an .onnx model.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .plan file; MODEL.plan.json is written beside it.")],
    precision: Annotated[
        TensorRTPrecision,
        typer.Option(
            "--precision",
            help="fp32, fp16 or int8 (a QDQ model from `pktnin quantize --target tensorrt` builds int8 whatever is given).",
        ),
    ] = "fp32",
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Largest batch the engine accepts.")
    ] = DEFAULT_MAX_BATCH,
    opt_batch: Annotated[
        Optional[int],
        typer.Option("--opt-batch", help="Batch size TensorRT tunes for (default: min(max batch, 1024))."),
    ] = None,
    timing_cache: Annotated[
        Optional[Path], typer.Option("--timing-cache", help="Timing cache file, read if present and updated.")
    ] = None,
    workspace_mb: Annotated[
        int, typer.Option("--workspace-mb", help="Builder workspace limit in MiB.")
    ] = DEFAULT_WORKSPACE_MB,
) -> None:
    """Build a TensorRT engine (one optimization profile: batch 1 .. max batch) for this GPU and TensorRT."""
    from pktnin.engine.catalog import resolve_model
    from pktnin.engine.trt_build import build_engine as build
    from pktnin.engine.trt_build import check_build_args

    with exit_codes():
        check_build_args(precision, max_batch, opt_batch, workspace_mb)
        model_path = resolve_model(model)
        if model_path.suffix not in (".keras", ".onnx"):
            usage(f"{model_path}: expected a .keras checkpoint or an .onnx file")
        if not model_path.is_file():
            usage(f"{model_path} not found")
        plan = build(model_path, out, precision=precision, max_batch=max_batch, opt_batch=opt_batch,
                     timing_cache=timing_cache, workspace_mb=workspace_mb)  # fmt: skip
    console.print(f"{plan} ({plan.stat().st_size / 1e6:.1f} MB, {precision}, max batch {max_batch})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("build-engine")(build_engine)
