"""The `pktnin` command line: one module per command, registered on one typer app."""

from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand

try:  # typer 0.2x carries its own copy of click; earlier ones use click itself
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:
    from click.exceptions import UsageError as ClickUsageError  # type: ignore[assignment]

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


class OneLineUsageError(ClickUsageError):
    """A usage error as every other error of the command line: one `error: ...` line, then where help is."""

    def show(self, file: Any = None) -> None:
        typer.echo(f"error: {self.format_message()}", err=True)
        if self.ctx is not None:
            typer.echo(f"Try '{self.ctx.command_path} --help' for help.", err=True)


class PlainCommand(TyperCommand):
    """A command whose arguments read as their names (`PATH...`) in the usage line and the help, as options do
    (typer would add Python types: `PATH <list[Path]>`, `{PATH}...`), and whose usage errors (an unknown choice,
    a value out of range) are one `error:` line like the command's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                _plain_argument(param)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except ClickUsageError as exc:
            raise OneLineUsageError(exc.format_message(), exc.ctx or ctx) from None


def _plain_argument(param: TyperArgument) -> None:
    name = param.display_name_raw
    usage = name if param.nargs == 1 or name.endswith("...") else f"{name}..."
    usage = usage if param.required else f"[{usage}]"

    def no_type(ctx: Any) -> None:
        return None

    def usage_name() -> str:
        return usage

    param.display_type_rich = no_type  # type: ignore[method-assign]
    param._usage_display_name = usage_name  # type: ignore[method-assign]


def _plain_commands(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = PlainCommand
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _plain_commands(group.typer_instance)


_plain_commands(app)


def main() -> None:
    app()
