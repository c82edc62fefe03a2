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
from pktnin.cli import evaluate as _evaluate  # noqa: E402
from pktnin.cli import train as _train  # noqa: E402

_preprocess.register(app)
from pktnin.cli import models as _models  # noqa: E402

_models.register(app)
_bench.register(app)
_train.register(app)
_evaluate.register(app)
from pktnin.cli import score as _score  # noqa: E402

_score.register(app)
from pktnin.cli import dataset as _dataset  # noqa: E402

_dataset.register(app)
from pktnin.cli import build_engine as _build_engine, export_onnx as _export_onnx  # noqa: E402

_export_onnx.register(app)
_build_engine.register(app)


def main() -> None:
    app()
