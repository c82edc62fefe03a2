"""The `pktnin` command line: one module per command, registered on one typer app."""

from typing import Annotated

import typer

from pktnin.cli import (
    bench,
    build_engine,
    dataset,
    evaluate,
    export_onnx,
    fuse,
    models,
    preprocess,
    quantize,
    score,
    train,
)

app = typer.Typer(
    name="pktnin",
    help="Packet-level encrypted traffic classification with deep and parallel Network-in-Network models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: readable at 80 columns, option names never cut, no type column beside every flag.
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from pktnin.version import __version__

        typer.echo(f"pktnin {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print pktnin's version and exit."),
    ] = False,
) -> None:
    """Packet-level encrypted traffic classification with deep and parallel Network-in-Network models."""


# Each command module exposes register(app). Heavy imports (tensorflow, onnx, GPU libraries) stay inside
# the command functions so that `pktnin --help` and the CPU path start fast and without the extras.
# Listed in the order a user meets them: score captures, then the training and engine tools.
for _command in (score, preprocess, bench, dataset, models, train, fuse, evaluate, export_onnx, quantize, build_engine):
    _command.register(app)


def main() -> None:
    app()
