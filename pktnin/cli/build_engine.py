"""`pktnin build-engine`: a checkpoint or ONNX file -> a TensorRT plan plus its sidecar JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pktnin.cli._console import console
from pktnin.engine.trt_build import DEFAULT_MAX_BATCH, DEFAULT_WORKSPACE_MB


def build_engine(
    model: Annotated[Path, typer.Argument(help="A NAME.keras checkpoint or an .onnx model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .plan file; MODEL.plan.json is written beside it.")],
    precision: Annotated[str, typer.Option("--precision", help="fp32 or fp16.")] = "fp32",
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch the engine accepts.")] = DEFAULT_MAX_BATCH,
    opt_batch: Annotated[
        Optional[int], typer.Option("--opt-batch", help="Batch size TensorRT tunes for (default: min(max batch, 1024)).")
    ] = None,
    timing_cache: Annotated[
        Optional[Path], typer.Option("--timing-cache", help="Timing cache file, read if present and updated.")
    ] = None,
    workspace_mb: Annotated[
        int, typer.Option("--workspace-mb", help="Builder workspace limit in MiB.")
    ] = DEFAULT_WORKSPACE_MB,
) -> None:
    """Build a TensorRT engine (one optimization profile: batch 1 .. max batch) for this GPU and TensorRT."""
    from pktnin.engine.runner_base import EngineUnavailableError, ModelMismatchError
    from pktnin.engine.trt_build import build_engine as build, check_build_args

    try:
        check_build_args(precision, max_batch, opt_batch, workspace_mb)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if model.suffix not in (".keras", ".onnx"):
        raise typer.BadParameter(f"{model}: expected a .keras checkpoint or an .onnx file")
    if not model.is_file():
        raise typer.BadParameter(f"{model} not found")
    try:
        plan = build(model, out, precision=precision, max_batch=max_batch, opt_batch=opt_batch,
                     timing_cache=timing_cache, workspace_mb=workspace_mb)
    except (EngineUnavailableError, ModelMismatchError, FileNotFoundError, ValueError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    console.print(f"{plan} ({plan.stat().st_size / 1e6:.1f} MB, {precision}, max batch {max_batch})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("build-engine")(build_engine)
