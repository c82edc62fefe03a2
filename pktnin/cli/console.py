"""Shared terminal pieces: the progress bar (packets/s) and the end-of-run tables."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console, Group
from rich.markup import escape  # noqa: F401 - file names and error text may hold [brackets]: print them as text
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
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


class FilesColumn(ProgressColumn):
    """Files finished of all (the task's `files` and `total_files` fields), beside a bar that counts bytes."""

    def render(self, task) -> Text:
        return Text(f"{task.fields.get('files', 0)}/{task.fields.get('total_files', 0)} files")


@contextmanager
def file_progress(
    total_files: int, description: str, enabled: bool = True, total_bytes: int = 0
) -> Iterator[FileProgress]:
    """A bar over files, or, with `total_bytes` (the inputs' sizes), over bytes read with percentage and time
    left, so that one big file moves the bar too; packets/s either way."""
    if total_bytes > 0:
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            FilesColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
    else:
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            RateColumn(),
            TimeElapsedColumn(),
        ]
    progress = Progress(*columns, console=console, disable=not enabled, transient=False)
    with progress:
        total = total_bytes if total_bytes > 0 else total_files
        task = progress.add_task(description, total=total, packets=0, files=0, total_files=total_files)
        yield FileProgress(progress, task, by_bytes=total_bytes > 0)


class FileProgress:
    def __init__(self, progress: Progress, task, by_bytes: bool = False) -> None:
        self._progress = progress
        self._task = task
        self._by_bytes = by_bytes
        self.packets = 0
        self.files = 0
        self.bytes = 0
        self.started = time.perf_counter()

    def add_packets(self, n: int) -> None:
        self.packets += n
        self._progress.update(self._task, packets=self.packets)

    def add_bytes(self, n: int) -> None:
        """Bytes of the inputs read (called from the reading thread; rich's updates take a lock)."""
        self.bytes += n
        if self._by_bytes:
            self._progress.advance(self._task, n)

    def file_done(self, n: int = 1) -> None:
        self.files += n
        self._progress.update(self._task, files=self.files)
        if not self._by_bytes:
            self._progress.advance(self._task, n)


def skip_table(skips: dict[str, int], title: str = "Skipped packets") -> Table:
    table = Table(title=title)
    table.add_column("reason")
    table.add_column("packets", justify="right")
    for reason, count in sorted(skips.items(), key=lambda kv: -kv[1]):
        table.add_row(reason, f"{count:,}")
    return table


def failed_files_table(reports: Iterable) -> Group | None:
    """Files that failed or had errors, one per line with their errors below: full names that wrap, never cut,
    and can be copied (a table column would cut or fold them)."""
    rows = [r for r in reports if r.errors and not getattr(r, "not_capture", False)]
    if not rows:
        return None
    lines = [Text("Files with errors", style="bold")]
    for r in rows:
        errors = "; ".join(r.errors[:3]) + (" ..." if len(r.errors) > 3 else "")
        lines.append(Text(f"{r.status:8} {r.path}"))  # Text: names with [brackets] stay as they are
        lines.append(Text(f"         {errors}", style="dim"))
    return Group(*lines)


def print_file_reports(reports: list, skips: dict[str, int], full_list: str = "--report") -> None:
    """What a run's files gave besides rows: skipped packets per reason, files with errors, non-captures (a few
    named; `full_list`: the option whose file names them all)."""
    if skips:
        console.print(skip_table(skips))
    failed = failed_files_table(reports)
    if failed is not None:
        console.print(failed)
    skipped = not_captures_line(reports, full_list)
    if skipped is not None:
        console.print(escape(skipped), soft_wrap=True)


NOT_CAPTURES_NAMED = 3  # names printed before "and N more": the full list is in --report


def not_captures_line(reports: Iterable, full_list: str = "--report") -> str | None:
    """One short line saying how many files found in folders are not captures (no failure of the run), naming a
    few: a folder of 800 documents must not print 800 names."""
    names = [str(r.path) for r in reports if getattr(r, "not_capture", False)]
    if not names:
        return None
    shown = ", ".join(names[:NOT_CAPTURES_NAMED])
    if len(names) > NOT_CAPTURES_NAMED:
        shown += f" and {len(names) - NOT_CAPTURES_NAMED:,} more ({full_list} lists them)"
    return f"not a capture, skipped ({len(names):,}): {shown}"
