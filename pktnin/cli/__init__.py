"""The `pktnin` command line: one module per command, registered on one typer app."""

import typer

app = typer.Typer(
    name="pktnin",
    help="Packet-level encrypted traffic classification with deep and parallel Network-in-Network models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each command module exposes register(app). Heavy imports (tensorflow, onnx, GPU libraries) stay inside
# the command functions so that `pktnin --help` and the CPU path start fast and without the extras.
from pktnin.cli import bench as _bench  # noqa: E402
from pktnin.cli import preprocess as _preprocess  # noqa: E402

_preprocess.register(app)
_bench.register(app)


def main() -> None:
    app()
