"""`pktnin quantize`: a float32 ONNX model -> its static int8 QDQ model, checked against float32."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from pktnin.cli.console import console, escape
from pktnin.cli.errors import exit_codes, usage
from pktnin.cli.options import QuantizeTarget


def quantize(
    model: Annotated[
        Optional[Path],
        typer.Argument(help="A float32 .onnx model or a bundled model's name (default: the bundled default)."),
    ] = None,
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
        int, typer.Option("--validation-rows", min=100, help="Rows that choose the calibration and the float32 layers.")
    ] = 2000,
    check_rows: Annotated[
        int,
        typer.Option(
            "--check-rows", min=100, help="Held-out rows per source, and synthetic packets, for the recorded checks."
        ),
    ] = 3000,
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

    Calibration rows come from the dataset's training split, spread over classes and capture files, plus
    synthetic traffic. The calibration method and the layers kept in float32 are chosen by argmax agreement
    with the float32 model on validation rows (for a model refit on train+val, which trained on them: half of
    the test captures). The chosen model is then checked on rows the choice never saw: each source's held-out
    test rows, synthetic traffic and oddly captured traffic (truncated, raw IP, Linux cooked). The agreement of
    every engine (ONNX Runtime int8; OpenVINO int8 and bf16 when installed) on every check set is recorded in
    the output's metadata: `--precision auto` picks an engine only where it reaches 99.5% on every held-out set.
    """
    from pktnin.dataset.format import load_dataset
    from pktnin.engine import quantize as q
    from pktnin.engine.bundled import default_int8_path, resolve_model
    from pktnin.engine.check_rows import synthetic_rows

    with exit_codes():
        try:
            import onnx  # noqa: F401 - onnxruntime.quantization needs it
            import sympy  # noqa: F401 - and its shape inference this
        except ImportError as exc:
            usage(f"pktnin quantize needs {exc.name}: pip install 'pktnin[quantize]'")
        method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
        bad = [m for m in method_list if m not in q.CALIBRATION_METHODS]
        if bad or not method_list:
            usage(f"--methods: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(q.CALIBRATION_METHODS)}")
        if target not in q.TARGETS:
            usage(f"--target must be one of {', '.join(q.TARGETS)}, got {target!r}")
        if not 0.0 < agreement <= 1.0:
            usage(f"--agreement must be in (0, 1], got {agreement}")
        src = resolve_model(model)
        if src.suffix != ".onnx" or not src.is_file():
            usage(f"{src}: expected an existing .onnx model (export a checkpoint with export-onnx)")
        if q.is_quantized(src):
            usage(f"{src} is already int8; quantize its float32 model")
        dataset = load_dataset(data)
        cal, _ = q.dataset_rows(dataset, "train", calibration_rows, seed)
        selection_idx, held_idx, held_split = q.check_indices(dataset, src, seed)
        if selection_idx.size == 0:
            usage(f"{data}: no rows to choose the quantization on")
        chosen_idx = q.stratified_indices(selection_idx, dataset.labels, dataset.file, validation_rows, seed + 1)
        target_path = out if out is not None else default_int8_path(src)
    with exit_codes(setup=False):
        # Synthetic traffic of three seeds: calibration, the choice, and the held-out check never share rows.
        calibration_extra = synthetic_rows(max(64, calibration_rows // 4), seed=3000 + seed)
        selection_extra = synthetic_rows(max(200, validation_rows // 4), seed=2000 + seed)
        cal = np.concatenate([cal, *calibration_extra.values()])
        val = np.concatenate([dataset.rows[chosen_idx], *selection_extra.values()])
        checks = q.held_out_sets(
            dataset, held_idx, held_split, check_rows, synthetic_rows(check_rows, seed=1000 + seed)
        )
        console.print(
            f"calibrating on {len(cal):,} rows (train split and synthetic), choosing on {len(val):,} rows, "
            f"checking on {', '.join(f'{name} ({len(rows):,})' for name, rows in checks.items())} of "
            f"{escape(str(data))}",
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
                validation_split="selection",
                checks=checks,
            )
    chosen = result.chosen
    console.print(
        f"{result.path}: {chosen.method} calibration, {len(chosen.excluded_nodes)} nodes kept in float32 "
        f"({chosen.exclude}); argmax agreement with float32:",
        highlight=False,
    )
    for engine, per_set in result.checks.items():
        worst = min((v for name, v in per_set.items() if name != q.SELECTION_SET), default=float("nan"))
        verdict = "auto may pick it" if worst >= agreement else "auto will not pick it"
        line = "  ".join(f"{name} {v:.4f}" for name, v in per_set.items())
        console.print(f"  {engine:<17} {escape(line)}  ({verdict})", highlight=False)
    if not result.reached_target:
        console.print(
            f"[yellow]warning:[/yellow] ONNX Runtime int8 is below the {agreement:.3f} agreement asked for on some "
            "check set: `--precision auto` will not pick it"
        )


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
