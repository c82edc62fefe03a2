"""`pktnin dataset build`: labeled captures -> a dataset directory (rows, labels, splits, flows, meta)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from pktnin.cli.console import console, file_progress, skip_table, warn
from pktnin.cli.errors import exit_codes
from pktnin.cli.options import IscxTask, Mask, SourceKind, SplitMode
from pktnin.errors import OptionError

dataset_app = typer.Typer(help="Build datasets of labeled packet rows.", no_args_is_help=True)

_COUNT_COLUMNS = ("train", "val", "test", "total")  # the splits of meta["counts"], then all of them


@dataset_app.command("build")
def build(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="A flow-label CSV (or a folder holding labels.csv), an ISCX VPN-nonVPN tree, "
            "or a folder with one sub-folder per class. Several sources make one dataset (rows of each in turn, "
            "each with its own file split); a CSV source may name its capture folder as LABELS.csv:PCAPS_DIR.",
            metavar="SOURCE[:PCAPS]...",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write (atomically).")],
    kind: Annotated[SourceKind, typer.Option("--source", help="Source kind: auto, iscx, class-dirs or csv.")] = "auto",
    task: Annotated[
        Optional[IscxTask], typer.Option("--task", help="ISCX task: A (14 applications) or B (12 traffic types).")
    ] = None,
    split: Annotated[
        Optional[SplitMode],
        typer.Option(
            "--split",
            help="random (packets, 68/16/16 per class; inflates test scores, as one flow's packets land in every "
            "split) or by-file (each capture file in one split). Default: by-file for a CSV (its split column / "
            "file_splits.csv), random otherwise.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling and random splits.")] = 0,
    label_column: Annotated[
        str,
        typer.Option(
            "--label-column", metavar="COLUMN", help="CSV column holding the label (task_category, task_app, ...)."
        ),
    ] = "task_category",
    pcaps: Annotated[
        Optional[Path], typer.Option("--pcaps", help="Capture folder for a CSV source (default: pcaps/ beside it).")
    ] = None,
    max_per_class: Annotated[
        Optional[int],
        typer.Option(
            "--max-per-class", help="Keep at most N packets per class (seeded sample; ISCX default 5000/12000)."
        ),
    ] = None,
    keep_dns: Annotated[bool, typer.Option("--keep-dns", help="Keep packets to or from port 53.")] = False,
    mask: Annotated[Mask, typer.Option("--mask", help="Masking profile.")] = "paper",
    packet_meta: Annotated[
        str,
        typer.Option(
            "--packet-meta",
            metavar="LIST",
            help="Metadata columns to store per row, comma-separated (e.g. ts_ns,src_addr,src_port,dst_port: "
            "what flow features need); needs every packet kept (no cap).",
        ),
    ] = "",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Build a dataset of 1500-byte rows with labels, a train/val/test split and flow ids."""
    from pktnin.dataset.build import build_dataset
    from pktnin.dataset.options import BuildOptions

    with exit_codes():
        (source, source_pcaps), *more = [split_source(s) for s in sources]
        if pcaps is not None and (source_pcaps is not None or more):
            raise OptionError("--pcaps applies to a single source; name each source's folder as LABELS.csv:PCAPS_DIR")
        options = BuildOptions(
            source=source,
            out=out,
            kind=kind,
            split=split,
            seed=seed,
            max_per_class=max_per_class,
            mask=mask,
            keep_dns=keep_dns,
            task=task,
            label_column=label_column,
            pcaps=pcaps if pcaps is not None else source_pcaps,
            more_sources=more,
            packet_meta=[name for name in packet_meta.split(",") if name],
        )
        n_files = sum(_count_files(o.kind, o.source, o.pcaps, label_column) for o in options.per_source())

    title = f"dataset ({options.kind})" if len(sources) == 1 else f"dataset ({len(sources)} sources)"
    with file_progress(n_files, title, enabled=progress) as bar:

        def on_progress(files_done: int, packets: int) -> None:
            if files_done > bar.files:
                bar.file_done(files_done - bar.files)
            bar.add_packets(packets - bar.packets)

        with exit_codes():
            report = build_dataset(options, progress=on_progress)

    console.print(counts_table(report.meta))
    for part in report.meta.get("inputs", []):
        console.print(counts_table({**report.meta, "counts": part["counts"]}, part["name"]))
    if report.skipped_files:
        console.print(_file_table(f"Files left out ({len(report.skipped_files)})", "reason", report.skipped_files))
    if report.file_errors:
        title = "Files read in part (records after an error were skipped)"
        console.print(_file_table(title, "errors", report.file_errors))
    if report.packet_skips:
        console.print(skip_table(report.packet_skips, title="Packets that did not become rows"))
    empty = [c for c, n in report.meta["counts"]["total"].items() if n == 0]
    if empty:
        hint = "" if keep_dns else " (DNS packets are dropped unless --keep-dns)"
        console.print(f"[yellow]warning:[/] no packets for class(es) {', '.join(empty)}{hint}")
    for line in split_warnings(report.meta):
        warn(line)
    n = report.meta["n_rows"]
    console.print(
        f"{n:,} rows, {len(report.meta['classes'])} classes, {report.unlabeled_packets:,} packets without a label "
        f"left out, {report.seconds:.1f} s -> {report.out}"
    )


def split_warnings(meta: dict) -> list[str]:
    """What a user should know about the split before trusting scores measured on it."""
    counts, mode = meta["counts"], meta.get("split_mode")
    lines = []
    if mode == "by-file":
        for name in ("val", "test"):
            missing = [c for c, n in counts["total"].items() if n and not counts[name][c]]
            if missing:
                lines.append(
                    f"no {name} packets for class(es) {', '.join(missing)}: their files all went to other splits "
                    f"(too few files of the class); {name} scores say nothing about them"
                )
    elif mode == "random":
        lines.append(
            "random packet split: packets of one flow and one capture land in train and test alike, which inflates "
            "test scores; --split by-file keeps each capture file in one split"
        )
    return lines


def _count_files(kind: str, source: Path, pcaps: Optional[Path], label_column: str) -> int:
    """Files the build will read, for the progress bar (an upper bound for the ISCX source)."""
    from pktnin.packets import find_captures

    if kind == "csv":
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no such file")
        folder = pcaps if pcaps is not None else source.parent / "pcaps"
        with open(source, newline="") as f:
            names = {rec.get("file", "") for rec in csv.DictReader(f) if (rec.get(label_column) or "").strip()}
        return sum(1 for name in names if name and (folder / name).is_file())
    return len(find_captures([source]))


def split_source(text: str) -> tuple[Path, Path | None]:
    """SOURCE or LABELS.csv:PCAPS_DIR -> (source, capture folder or None). A path that exists is taken whole."""
    if Path(text).exists() or ":" not in text:
        return Path(text), None
    source, _, pcaps = text.rpartition(":")
    return Path(source), Path(pcaps)


def counts_table(meta: dict, source_name: str | None = None) -> Table:
    counts = meta["counts"]
    of = f"{source_name}, " if source_name else ""
    table = Table(title=f"Packets per class and split ({of}{meta.get('split_mode')})")
    table.add_column("class")
    for name in _COUNT_COLUMNS:
        table.add_column(name, justify="right")
    for cls in meta["classes"]:
        table.add_row(cls, *(f"{counts[name][cls]:,}" for name in _COUNT_COLUMNS))
    table.add_row("[bold]all", *(f"[bold]{sum(counts[name].values()):,}" for name in _COUNT_COLUMNS))
    return table


def _file_table(title: str, what: str, rows: list[tuple[str, str]]) -> Table:
    """A table of (file, `what`) pairs."""
    table = Table(title=title)
    table.add_column("file")
    table.add_column(what)
    for name, text in rows:
        table.add_row(name, text)
    return table


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
