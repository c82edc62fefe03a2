"""The `pktnin` command line: one module per command, registered on one typer app."""

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
)

# Each command module exposes register(app). Heavy imports (tensorflow, onnx, GPU libraries) stay inside
# the command functions so that `pktnin --help` and the CPU path start fast and without the extras.
# Listed in the order a user meets them: score captures, then the training and engine tools.
for _command in (score, preprocess, bench, dataset, models, train, fuse, evaluate, export_onnx, quantize, build_engine):
    _command.register(app)


def main() -> None:
    app()
