"""`pktnin quantize`: a float32 ONNX model -> its static int8 QDQ model, checked against float32."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Annotated, Optional

import typer

from pktnin.cli.console import console, escape
from pktnin.cli.errors import exit_codes, usage
from pktnin.cli.options import QuantizeTarget


def quantize(
    model: Annotated[Optional[Path], typer.Argument(help="A float32 .onnx model (default: the bundled model).")] = None,
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            "-d",
            help="Dataset directory: calibration rows from its train split, checks on val (test for a refit model).",
        ),
    ] = ...,  # type: ignore[assignment]  # typer's marker of a required option after optional arguments
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Output .onnx (default: MODEL.int8.onnx beside it, or the cache for the "
            "bundled model, where --precision finds it).",
        ),
    ] = None,
    calibration_rows: Annotated[
        int, typer.Option("--calibration-rows", min=16, help="Training rows for the activation ranges.")
    ] = 512,
    validation_rows: Annotated[
        int, typer.Option("--validation-rows", min=100, help="Validation rows for the agreement checks.")
    ] = 2000,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            metavar="LIST",
            help="Calibration methods to try, comma-separated: minmax, percentile, entropy.",
        ),
    ] = "minmax,percentile",
    target: Annotated[
        QuantizeTarget,
        typer.Option("--target", help="cpu (uint8 activations, fastest on x86) or tensorrt (symmetric int8)."),
    ] = "cpu",
    agreement: Annotated[
        float, typer.Option("--agreement", help="Argmax agreement with float32 to reach on the validation rows.")
    ] = 0.995,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the row samples.")] = 0,
) -> None:
    """Quantize a model to int8 (static, QDQ, per-channel weights) for the CPU engines and TensorRT.

    Calibration rows come from the dataset's training split, spread over classes and capture files. The
    calibration method and the layers kept in float32 are chosen by argmax agreement with the float32 model on
    validation rows (test rows for a model refit on train+val: it trained on the validation rows); that agreement (and OpenVINO's bf16 and int8 agreement, when OpenVINO is installed) is
    recorded in the output's metadata, where `--precision auto` reads it.
    """
    from pktnin.dataset.format import load_dataset
    from pktnin.engine import quantize as q
    from pktnin.engine.precision import default_int8_path
    from pktnin.engine.runners import default_model_path

    with exit_codes():
        try:
            import onnx  # noqa: F401 - onnxruntime.quantization needs it
        except ImportError:
            usage("pktnin quantize needs onnx: pip install 'pktnin[quantize]'")
        method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
        bad = [m for m in method_list if m not in q.CALIBRATION_METHODS]
        if bad or not method_list:
            usage(f"--methods: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(q.CALIBRATION_METHODS)}")
        if target not in q.TARGETS:
            usage(f"--target must be one of {', '.join(q.TARGETS)}, got {target!r}")
        if not 0.0 < agreement <= 1.0:
            usage(f"--agreement must be in (0, 1], got {agreement}")
        src = model if model is not None else default_model_path()
        if src.suffix != ".onnx" or not src.is_file():
            usage(f"{src}: expected an existing .onnx model (export a checkpoint with export-onnx)")
        if q.is_quantized(src):
            usage(f"{src} is already int8; quantize its float32 model")
        dataset = load_dataset(data)
        cal, _ = q.dataset_rows(dataset, "train", calibration_rows, seed)
        checked_on = q.check_split(src)
        val, _ = q.dataset_rows(dataset, checked_on, validation_rows, seed + 1)
        target_path = out if out is not None else default_int8_path(src)
    with exit_codes(setup=False):
        console.print(
            f"calibrating on {len(cal):,} train rows, checking on {len(val):,} {checked_on} rows of "
            f"{escape(str(data))}" + (" (the model was refit on train+val)" if checked_on == "test" else ""),
            highlight=False,
        )
        # ONNX Runtime's histogram calibrators print their progress to stdout: keep it off the terminal (this
        # command's own lines go to stderr)
        with contextlib.redirect_stdout(io.StringIO()):
            result = q.quantize_model(
                src,
                target_path,
                cal,
                val,
                methods=method_list,
                target=target,
                target_agreement=agreement,
                provenance={"dataset": str(Path(data).resolve()), "seed": seed},
                log=lambda line: console.print("  " + escape(line), highlight=False),
                validation_split=checked_on,
            )
        extra = q.check_openvino(src, result.path, val)
        if extra:
            q.record_agreement(result.path, extra)
    chosen = result.chosen
    console.print(
        f"{result.path}: {chosen.method} calibration, {len(chosen.excluded_nodes)} nodes kept in float32 "
        f"({chosen.exclude}); argmax agreement with float32 {chosen.agreement:.4f} on {result.validation_rows:,} "
        f"{checked_on} rows" + "".join(f"; {k} {v:.4f}" for k, v in (extra or {}).items()),
        highlight=False,
    )
    if not result.reached_target:
        console.print(
            f"[yellow]warning:[/yellow] below the {agreement:.3f} agreement asked for: "
            "`--precision auto` will not pick it"
        )


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
