"""`pktnin fuse`: NIN_parallel (or NIN1 + NIN_small on the body) from two trained branch checkpoints, alpha picked
on validation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pktnin.cli.console import console
from pktnin.cli.errors import exit_codes
from pktnin.cli.options import VerboseOption, silence_tensorflow


def fuse(
    nin1: Annotated[Path, typer.Argument(metavar="NIN1", help="Trained nin1 (header) checkpoint.", show_default=False)],
    nin2: Annotated[
        Path,
        typer.Argument(metavar="NIN2", help="Trained body checkpoint: nin2, or nin_small_body.", show_default=False),
    ],
    data: Annotated[Path, typer.Option("--data", help="Dataset directory whose validation split picks alpha.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Fused checkpoint NAME.keras (NAME.json beside).")],
    alpha: Annotated[
        Optional[float],
        typer.Option(
            "--alpha", min=0.0, max=1.0, help="Use this alpha instead of searching (branches refit on train+val)."
        ),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Search alpha on 0.00..1.00 (step 0.01) by validation macro-F1 and save y = alpha*y1 + (1-alpha)*y2 as one model.

    `pktnin train nin_parallel` does the same after training both branches; this reuses branches already trained.
    """
    silence_tensorflow(verbose)
    from pktnin.trainer.train import fuse_checkpoints

    with exit_codes():
        summary = fuse_checkpoints(nin1, nin2, data, out, alpha=alpha)
    if summary["val_macro_f1"] is None:
        console.print(
            f"{summary['preset']}: branches refit on train+val, alpha {summary['alpha']:.2f} -> {summary['checkpoint']}"
        )
        return
    branches = "; ".join(f"{n} {b['val_macro_f1']:.4f}" for n, b in summary["branches"].items())
    console.print(
        f"{summary['preset']}: validation macro-F1 {summary['val_macro_f1']:.4f} with alpha {summary['alpha']:.2f} "
        f"({branches}) -> {summary['checkpoint']}"
    )


def register(app: typer.Typer) -> None:
    app.command("fuse")(fuse)
