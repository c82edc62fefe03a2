"""`pktnin bench`: packets/s of each stage (read+prep, engine) and end to end; `pktnin bench prep`: prep alone.

The measurements are pktnin.measure's; this module parses options and prints.
"""

from __future__ import annotations

import json
import tempfile
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperGroup

from pktnin.cli.console import console, file_progress, warn
from pktnin.cli.errors import exit_codes
from pktnin.cli.options import Backend, Mask, ModelOption, QuietOption, SummaryOption, check_summary_path, write_summary
from pktnin.cli.score import DEFAULT_BATCH


class _DefaultToRun(TyperGroup):
    """`pktnin bench [PATH...]` runs the `run` command; `pktnin bench prep ...` the prep one. `pktnin bench --help`
    shows the run command's options (what `pktnin bench` takes) followed by the other command."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] != "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def get_help(self, ctx) -> str:
        run_command = self.commands["run"]
        with run_command.make_context(ctx.info_name, [], parent=ctx.parent, resilient_parsing=True) as run_ctx:
            text = run_command.get_help(run_ctx)
        prep_command = self.commands["prep"]
        first = " ".join((prep_command.help or "").split("\n\n")[0].split())
        about = textwrap.fill(first, width=76, initial_indent="    ", subsequent_indent="    ")
        return f"{text}\n\nOther command:\n  {ctx.command_path} prep PATH...\n{about}\n"


bench_app = typer.Typer(cls=_DefaultToRun, help="Measure packets per second (default: every stage and end to end).")

# The generated capture's default size. About 71% of its packets become rows (5,700 of 8,000); with the bundled
# nin_parallel at about 1,300 rows/s on this project's 2-core CPU (bench/results/e2e-nin_parallel.json) each
# engine and end-to-end run takes about 4.4 s, so three runs of each, the kernels' first compile (about 10 s) and
# the model load come to about 40 s on a quiet machine.
DEFAULT_PACKETS = 8000
FLOW_PACKETS_DEFAULT = "4"  # --flow-packets of a per-packet model in flow mode (a flow model has its own K)
STAGE_TITLES = {"read_prep": "read + prep", "engine": "engine alone", "end_to_end": "end to end"}


class StageBars:
    """One progress bar per stage, advanced per run (pktnin.measure.compare_engines' `progress`)."""

    def __init__(self, progress) -> None:
        self._progress = progress
        self._task = None

    def stage(self, name: str, runs: int) -> None:
        self._task = self._progress.add_task(STAGE_TITLES.get(name, name), total=runs)

    def run_done(self) -> None:
        self._progress.advance(self._task, 1)


@bench_app.command("run", hidden=True)
def run(
    paths: Annotated[
        Optional[List[Path]],
        typer.Argument(metavar="PATH", help="Captures (default: a generated realistic capture).", show_default=False),
    ] = None,
    model: ModelOption = None,
    backend: Annotated[
        Backend, typer.Option("--backend", help="Engine running the model (auto: TensorRT on a GPU, else the CPU).")
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            metavar="LIST",
            help="auto, fp32, bf16 or int8; several comma-separated are measured "
            "interleaved in one run and compared with the first; PRECISION@N fixes that engine's "
            "sessions (fp32@1: one session, as the scorer ran before).",
        ),
    ] = "auto",
    engine_workers: Annotated[
        int,
        typer.Option(
            "--engine-workers", min=0, help="CPU: 1 = one session, N = N single-thread sessions, 0 = measure."
        ),
    ] = 0,
    batch: Annotated[int, typer.Option("--batch", help="Packets per model call.")] = DEFAULT_BATCH,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Runs per stage; medians are reported.")] = 3,
    packets: Annotated[
        int, typer.Option("--packets", min=100, help="Packets in the generated capture (without PATH).")
    ] = DEFAULT_PACKETS,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    decide: Annotated[
        Optional[str],
        typer.Option(
            "--decide",
            metavar="LIST",
            help="packet and/or flow, comma-separated (e.g. packet,flow): measure `pktnin score` end to end in each "
            "decision mode, interleaved, against the first.",
            show_default=False,
        ),
    ] = None,
    flow_packets: Annotated[
        str,
        typer.Option(
            "--flow-packets", metavar="LIST", help="With --decide flow: K, or several comma-separated (e.g. 1,4)."
        ),
    ] = FLOW_PACKETS_DEFAULT,
    mask: Annotated[Mask, typer.Option("--mask", help="Masking profile.")] = "paper",
    keep_dns: Annotated[bool, typer.Option("--keep-dns", help="Keep packets to or from port 53.")] = False,
    record: Annotated[
        bool,
        typer.Option(
            "--record/--no-record",
            help="Keep a bundled model's medians in the cache folder for `pktnin models` to show (off by default).",
        ),
    ] = False,
    quiet: QuietOption = False,
    summary: SummaryOption = None,
) -> None:
    """Packets/s of read+prep alone, of the engine alone and end to end, and end-to-end / engine-only.

    The default (a generated capture, three runs per stage) takes about a minute with the bundled model on a
    2-core CPU; pass captures and --runs for steadier figures. End to end includes the engine, so a ratio above
    1 is noise of the machine: the run's spread is shown instead of trusting it. With several precisions (e.g.
    --precision fp32@1,int8,auto) each stage alternates between the engines run by run, so a busy machine slows
    them alike, and the report gives each engine's medians and its ratio to the first.
    """
    from pktnin.engine.catalog import is_bundled, mask_warning, record_speed, resolve_model
    from pktnin.engine.flow_runner import FlowModelRunner, is_flow_model
    from pktnin.engine.runners import open_runner_with_choice
    from pktnin.errors import OptionError
    from pktnin.extras import check_model_file
    from pktnin.measure import compare_decisions, compare_engines, spread
    from pktnin.packets import find_captures
    from pktnin.rowfile import PrepOptions
    from pktnin.synth import write_synthetic_capture

    with tempfile.TemporaryDirectory(prefix="pktnin-bench-") as tmp:
        workdir = Path(tmp)
        runners: list = []
        choices: list = []
        try:
            with exit_codes():
                layouts = _precision_layouts(precision, engine_workers, OptionError)
                opts = PrepOptions(mask=mask, keep_dns=keep_dns)
                check_summary_path(summary)
                if not paths:
                    paths = [write_synthetic_capture(workdir / "synthetic.pcap", packets=packets)]
                files = find_captures(paths)
                model_path = resolve_model(model)
                check_model_file(model_path)
                if is_flow_model(model_path):  # it decides per flow: measured end to end in that mode only
                    flow_runner = FlowModelRunner(model_path, max_batch=batch)
                    runners.append(flow_runner)
                    if decide not in (None, "flow") or flow_packets not in (
                        FLOW_PACKETS_DEFAULT,
                        str(flow_runner.flow_packets),
                    ):
                        raise OptionError(
                            f"{model_path.name} is a flow model: it decides per flow from its first "
                            f"{flow_runner.flow_packets} packets (--decide flow)"
                        )
                    decide, flow_packets = "flow", str(flow_runner.flow_packets)
                for name, sessions in layouts if not runners else []:
                    runner, choice = open_runner_with_choice(
                        model_path, backend, max_batch=batch, precision=name, engine_workers=sessions
                    )
                    runners.append(runner)
                    choices.append(choice)
            warning = mask_warning(model_path, mask)
            if warning:
                warn(warning)
            if decide is not None:
                with exit_codes():
                    modes = _decide_modes(decide, flow_packets, len(runners), OptionError)
                with exit_codes(setup=False), _stage_progress(enabled=not (quiet or as_json)) as bars:
                    result = {"model": str(model_path), **compare_decisions(files, runners[0], modes, batch, runs,
                                                                            workdir, opts, progress=bars)}  # fmt: skip
                _print_decisions(result, as_json, quiet, summary)
                return
            with exit_codes(setup=False):
                labels = [p.strip() for p in precision.split(",")]
                with _stage_progress(enabled=not (quiet or as_json)) as bars:
                    measured = compare_engines(
                        files, runners, choices, labels, batch, runs, workdir, opts, progress=bars
                    )
                result = {"model": str(model_path), **measured}
        finally:
            for runner in runners:
                runner.close()
    if record and is_bundled(model_path):
        record_speed(model_path, result)
    write_summary(summary, result)
    prep, engines = result["read_prep"], result["engines"]
    for e in engines:
        if e["ratio_is_noise"]:
            (e_lo, e_hi), (x_lo, x_hi) = spread(e["engine"]), spread(e["end_to_end"])
            warn(
                f"{e['engine_label']}: end to end / engine = {e['end_to_end_over_engine']:.2f} is above 1, which "
                f"only noise can cause (end to end runs the engine too): engine runs {e_lo:,.0f}..{e_hi:,.0f}, "
                f"end-to-end runs {x_lo:,.0f}..{x_hi:,.0f} packets/s; rerun with more --runs on a quieter machine"
            )
    if as_json:
        typer.echo(json.dumps(result))
        return
    if quiet:
        return
    from rich.table import Table

    table = Table(title=f"pktnin bench: {Path(result['model']).name}, batch {batch}, packets/s, medians of {runs} runs")
    table.add_column("stage")
    for e in engines:
        table.add_column(e["engine_label"], justify="right")
    table.add_row("read + prep (records)", _with_spread(prep), *[""] * (len(engines) - 1))
    table.add_row("engine only (rows)", *[_with_spread(e["engine"]) for e in engines])
    table.add_row("end to end (rows)", *[_with_spread(e["end_to_end"]) for e in engines])
    table.add_row(
        "end to end / engine",
        *[f"{e['end_to_end_over_engine']:.2f}" + (" (noise)" if e["ratio_is_noise"] else "") for e in engines],
    )
    if len(engines) > 1:
        table.add_row("end to end vs first", "1.00", *[f"{e['vs_first']['end_to_end']:.2f}x" for e in engines[1:]])
    console.print(table)
    for e in engines:
        if e["engine_reason"]:
            console.print(f"{e['engine_label']}: {e['engine_reason']}", markup=False, highlight=False)


def _decide_modes(decide: str, flow_packets: str, n_runners: int, error) -> list[tuple[str, int]]:
    """[(decide, K)] from --decide "packet,flow" and --flow-packets "1,4": flow once per K."""
    asked = [d.strip() for d in decide.split(",") if d.strip()]
    if not asked or any(d not in ("packet", "flow") for d in asked) or len(set(asked)) != len(asked):
        raise error(f"--decide: give packet and/or flow, comma-separated, got {decide!r}")
    if n_runners != 1:
        raise error("--decide compares decision modes with one engine: give one --precision")
    ks = [k.strip() for k in flow_packets.split(",") if k.strip()]
    if not ks or not all(k.isdigit() and int(k) >= 1 for k in ks):
        raise error(f"--flow-packets: give numbers >= 1, comma-separated, got {flow_packets!r}")
    modes: list[tuple[str, int]] = []
    for d in asked:
        modes += [("packet", 1)] if d == "packet" else [("flow", int(k)) for k in ks]
    return modes


def _print_decisions(result: dict, as_json: bool, quiet: bool, summary) -> None:
    write_summary(summary, result)
    if as_json:
        typer.echo(json.dumps(result))
        return
    if quiet:
        return
    from rich.table import Table

    table = Table(
        title=f"pktnin bench: {Path(result['model']).name}, {result['engine_label']}, batch {result['batch']}, "
        f"end to end, medians of {result['runs']} runs"
    )
    for column in ("decide", "rows/s (lowest..highest)", "vs first"):
        table.add_column(column, justify="left" if column == "decide" else "right")
    for m in result["modes"]:
        name = m["decide"] + (f", K={m['flow_packets']}" if m["decide"] == "flow" else "")
        table.add_row(name, _with_spread(m["end_to_end"]), f"{m['vs_first']:.2f}x" if "vs_first" in m else "1.00")
    console.print(table)


def _with_spread(stage: dict) -> str:
    """The median, and the lowest..highest run beside it."""
    from pktnin.measure import spread

    lo, hi = spread(stage)
    return f"{stage['packets_per_s']:,.0f} ({lo:,.0f}..{hi:,.0f})"


def _precision_layouts(precision: str, engine_workers: int, error) -> list[tuple[str, int | None]]:
    """[(precision, sessions or None)] from --precision "auto" / "fp32@1,int8" and --engine-workers."""
    asked = [p.strip() for p in precision.split(",") if p.strip()]
    if not asked or len(set(asked)) != len(asked):
        raise error("--precision: give one or more distinct precisions")
    layouts = []
    for p in asked:
        name, _, sessions = p.partition("@")
        if sessions and not (sessions.isdigit() and int(sessions) >= 1):
            raise error(f"--precision {p}: sessions after @ must be a number >= 1")
        layouts.append((name, int(sessions) if sessions else (engine_workers or None)))
    return layouts


@contextmanager
def _stage_progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )
    with progress:
        yield StageBars(progress)


@bench_app.command("prep")
def prep(
    paths: Annotated[
        List[Path], typer.Argument(metavar="PATH", help="Capture files and/or directories.", show_default=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mask: Annotated[Mask, typer.Option("--mask", help="Masking profile.")] = "paper",
    keep_dns: Annotated[bool, typer.Option("--keep-dns")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Prep threads (default: all).")] = None,
    chunk: Annotated[int, typer.Option("--chunk", min=64, help="Records per chunk.")] = 8192,
    flow_keys: Annotated[bool, typer.Option("--flow-keys/--no-flow-keys", help="Compute flow keys.")] = True,
) -> None:
    """Read and transform captures without writing rows; print packets, seconds and packets/s.

    `packets` counts every packet record read (kept or skipped by the layout), `rows` the ones that became rows.
    """
    from pktnin.measure import prep_throughput
    from pktnin.packets import find_captures
    from pktnin.rowfile import PrepOptions

    with exit_codes():
        opts = PrepOptions(mask=mask, keep_dns=keep_dns)
        files = find_captures(paths)
    with exit_codes(setup=False):
        with file_progress(len(files), "bench prep", enabled=not as_json) as bar:
            result = prep_throughput(files, opts, progress=bar, threads=threads, chunk=chunk, flow_keys=flow_keys)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        console.print(
            f"{result['packets']:,} packets ({result['rows']:,} rows) from {result['files']} files "
            f"in {result['seconds']:.3f} s: {result['packets_per_s']:,.0f} packets/s"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
