"""Shared terminal pieces: the progress bar (packets/s) and the end-of-run tables."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterable, Iterator

from rich.console import Console
from rich.markup import escape  # file names and error text may hold [brackets]: print them as text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

# Tables and the bar go to stderr so stdout stays clean for --json output.
console = Console(stderr=True)


def warn(message: str) -> None:
    """One warning line on stderr, shown even with --quiet (plain text: file names may hold [brackets])."""
    import typer

    typer.echo(f"warning: {message}", err=True)


class RateColumn(ProgressColumn):
    """Packets per second since the bar started (the task's `packets` field)."""

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        packets = task.fields.get("packets", 0)
        rate = packets / elapsed if elapsed > 0 else 0.0
        return Text(f"{packets:,} pkts  {rate:,.0f} pkts/s", style="cyan")


@contextmanager
def file_progress(total_files: int, description: str, enabled: bool = True) -> Iterator["FileProgress"]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        RateColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total_files, packets=0)
        yield FileProgress(progress, task)


class FileProgress:
    def __init__(self, progress: Progress, task) -> None:
        self._progress = progress
        self._task = task
        self.packets = 0
        self.files = 0
        self.started = time.perf_counter()

    def add_packets(self, n: int) -> None:
        self.packets += n
        self._progress.update(self._task, packets=self.packets)

    def file_done(self, n: int = 1) -> None:
        self.files += n
        self._progress.advance(self._task, n)


def skip_table(skips: dict[str, int], title: str = "Skipped packets") -> Table:
    table = Table(title=title)
    table.add_column("reason")
    table.add_column("packets", justify="right")
    for reason, count in sorted(skips.items(), key=lambda kv: -kv[1]):
        table.add_row(reason, f"{count:,}")
    return table


def failed_files_table(reports: Iterable) -> Table | None:
    rows = [r for r in reports if r.errors]
    if not rows:
        return None
    table = Table(title="Files with errors")
    table.add_column("file")
    table.add_column("status")
    table.add_column("error")
    for r in rows:
        errors = "; ".join(r.errors[:3]) + (" ..." if len(r.errors) > 3 else "")
        table.add_row(escape(str(r.path)), r.status, escape(errors))
    return table
