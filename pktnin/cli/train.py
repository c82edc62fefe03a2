"""`pktnin train`: train one preset (or nin_parallel) on a dataset directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pktnin.cli.console import console
from pktnin.cli.errors import exit_codes
from pktnin.cli.options import Augmentation, ClassWeighting, Fit, TrainPrecision, VerboseOption, silence_tensorflow
from pktnin.trainer.presets import PRESETS

PRESETS_HELP = ", ".join(PRESETS)


def train(
    model: Annotated[str, typer.Argument(metavar="PRESET", help=f"Model preset: {PRESETS_HELP}.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="Dataset directory (pktnin dataset build).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint NAME.keras (NAME.json is written beside).")],
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Maximum number of epochs.")] = 10,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Seed for initialization, sampling and shuffling.")] = 0,
    max_train: Annotated[
        Optional[int], typer.Option("--max-train", min=1, help="Use at most N training rows (seeded sample).")
    ] = None,
    max_val: Annotated[
        Optional[int], typer.Option("--max-val", min=1, help="Validate on at most N rows (seeded sample).")
    ] = None,
    max_per_class: Annotated[
        Optional[int], typer.Option("--max-per-class", min=1, help="Cap the training rows of each class.")
    ] = None,
    max_per_flow: Annotated[
        Optional[int],
        typer.Option("--max-per-flow", min=1, help="Use at most N training rows of each flow (seeded sample)."),
    ] = None,
    class_weighting: Annotated[
        ClassWeighting,
        typer.Option(
            "--class-weighting",
            help="none; balanced (inverse class frequency); file (balanced, and capture files equal within a class).",
        ),
    ] = "none",
    patience: Annotated[
        int, typer.Option("--patience", min=1, help="Stop after N epochs without a better validation macro-F1.")
    ] = 3,
    xla: Annotated[
        bool, typer.Option("--xla/--no-xla", help="XLA-compile the training step (measured slower on CPU here).")
    ] = False,
    width: Annotated[float, typer.Option("--width", min=0.01, help="Scale every layer's width (tests).")] = 1.0,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=0.95, help="Dropout rate.")] = 0.1,
    fit: Annotated[
        Fit,
        typer.Option(
            "--fit",
            help="train; or train+val: refit on both splits for exactly --epochs epochs (no early stopping; take "
            "the epochs, and for nin_parallel --alpha, from a run on train).",
        ),
    ] = "train",
    alpha: Annotated[
        Optional[float], typer.Option("--alpha", min=0.0, max=1.0, help="A fusion preset: use this alpha (no search).")
    ] = None,
    augment: Annotated[
        Augmentation,
        typer.Option(
            "--augment",
            help="none; or header-jitter: random bytes in the header fields that identify a capture (IP id, TTL, "
            "checksums, TCP seq/ack) of training rows (beyond the paper).",
        ),
    ] = "none",
    precision: Annotated[
        TrainPrecision,
        typer.Option(
            "--precision",
            help="float32; or mixed_bfloat16: compute in bfloat16, weights in float32 (faster on CPUs with "
            "AVX-512 BF16); the checkpoint is float32 either way.",
        ),
    ] = "float32",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    verbose: VerboseOption = False,
) -> None:
    """Train PRESET; the epoch with the best validation macro-F1 is kept in OUT (+ JSON metadata).

    Adam, learning rate 1e-3 x 0.98 per epoch, categorical cross-entropy; TensorBoard logs in OUT.logs/.
    nin_parallel trains nin1 and nin2 (kept as OUT-nin1/-nin2), picks alpha on validation and saves one model;
    nin_parallel_small (beyond the paper) does the same with NIN_small on the body bytes.
    """
    from pktnin.trainer.presets import get_preset

    with exit_codes():
        get_preset(model)
    silence_tensorflow(verbose)
    from pktnin.trainer.train import TrainSettings
    from pktnin.trainer.train import train as run_training

    with exit_codes():
        settings = TrainSettings(
            epochs=epochs, batch=batch, seed=seed, xla=xla, max_train=max_train, max_val=max_val,
            max_per_class=max_per_class, class_weighting=class_weighting, patience=patience, dropout=dropout,
            width=width, max_per_flow=max_per_flow, fit=fit, augment=augment, precision=precision,
        )  # fmt: skip
        summary = run_training(model, data, out, settings, alpha=alpha, progress=progress)
    if summary["val_macro_f1"] is None:
        line = f"{summary['preset']}: refit on train+val"
    else:
        line = f"{summary['preset']}: best validation macro-F1 {summary['val_macro_f1']:.4f}"
    if "alpha" in summary:
        line += f" with alpha {summary['alpha']:.2f}"
        for name, branch in summary["branches"].items():
            if branch["val_macro_f1"] is not None:
                line += f"; {name} {branch['val_macro_f1']:.4f}"
    else:
        line += f" at epoch {summary['best_epoch']}/{summary['epochs_run']}"
        if summary["train_packets_per_s"]:
            line += f", {summary['train_packets_per_s'][-1]:,.0f} training pkts/s"
    console.print(f"{line} -> {summary['checkpoint']}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
