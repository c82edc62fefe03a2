"""Shared terminal pieces: the progress bar (work scored, packets/s, time left) and the end-of-run tables."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console, Group
from rich.markup import escape  # noqa: F401 - file names and error text may hold [brackets]: print them as text
from rich.progress import BarColumn, Progress, ProgressColumn, TaskID, TextColumn
from rich.table import Column, Table
from rich.text import Text

from pktnin.names import name_text

# Tables and the bar go to stderr so stdout stays clean for --json output.
console = Console(stderr=True)


def warn(message: str) -> None:
    """One warning line on stderr, shown even with --quiet (plain text: file names may hold [brackets])."""
    import typer

    typer.echo(f"warning: {message}", err=True)


def compact_count(n: float, exact_below: float = 100_000) -> str:
    """12,345 below `exact_below`, then 123k, 1.23M: a count that keeps the bar on one line."""
    if n < exact_below:
        return f"{n:,.0f}"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:,.0f}"  # unreachable: n >= 100,000 takes a suffix


def _size(n: int, total: int) -> str:
    """Bytes in the unit of the total: 1.2/2.9 GiB."""
    unit, scale = "B", 1
    for name, size in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40)):
        if total >= size:
            unit, scale = name, size
    if scale == 1:
        return f"{n}/{total} B"
    digits = 1 if total / scale < 100 else 0  # 1.2/2.9 GiB, 700/1000 GiB
    return f"{n / scale:.{digits}f}/{total / scale:.{digits}f} {unit}"


def _clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02}:{seconds % 60:02}"


class StatusColumn(ProgressColumn):
    """Everything beside the bar, from the run's FileProgress: work done of all, units of work (else files),
    packets scored, the steady rate and the time left."""

    def __init__(self, state: FileProgress) -> None:
        super().__init__(table_column=Column(no_wrap=True))  # the bar gives way, never the text
        self.state = state

    def render(self, task) -> Text:
        return Text(self.state.status())


@contextmanager
def file_progress(
    total_files: int,
    description: str,
    enabled: bool = True,
    total_bytes: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[FileProgress]:
    """A one-line bar (it fits 80 columns) over the work scored: with `total_bytes` (the inputs' sizes) the bytes
    whose packets are scored, so one big file moves it too; else the files finished. Beside it: the units of work
    finished once the run has told them (a file cut in byte ranges is several, small files grouped are one),
    else the files; packets scored, the rate since the first packet was scored and the time left at that rate.
    `clock`: seconds."""
    state = FileProgress(total_files, total_bytes, clock)
    columns = [
        TextColumn("{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=None, table_column=Column(ratio=1)),
        StatusColumn(state),
    ]
    progress = Progress(*columns, console=console, disable=not enabled, transient=False, expand=True, get_time=clock)
    with progress:
        total = total_bytes if total_bytes > 0 else max(total_files, 1)
        state.attach(progress, progress.add_task(description, total=total))
        yield state
        state.refresh()


class FileProgress:
    """What a run has done, told by its stages: bytes read (with the packets they hold), packets scored, files
    and units of work finished. The bar shows bytes of finished work: the bytes read up to the last packet scored, so that work
    read ahead and still waiting for the model does not count."""

    def __init__(self, total_files: int, total_bytes: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_files, self.total_bytes, self.clock = total_files, total_bytes, clock
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._lock = threading.Lock()
        self.packets = 0  # scored
        self.files = 0
        self.units = self.total_units = 0  # units of work: 0 of 0 until a run tells them (set_units)
        self.bytes = 0  # read
        self.done_bytes = 0  # read and scored
        self._read_packets = 0
        self._marks: deque[tuple[int, int]] = deque()  # (packets read, bytes read) at the end of each chunk
        self.started = clock()
        self.first_scored: float | None = None  # when the first work was done: the rate starts there

    def attach(self, progress: Progress, task: TaskID) -> None:
        self._progress, self._task = progress, task

    def add_bytes(self, n: int, packets: int | None = None) -> None:
        """`n` more bytes of the inputs read (from the reading thread), holding `packets` packets to score;
        None: not known, the bytes count as done."""
        with self._lock:
            self.bytes += n
            if packets is None:
                self.done_bytes += n
            else:
                self._read_packets += packets
                self._marks.append((self._read_packets, self.bytes))
                self._advance()
        self.refresh()

    def add_packets(self, n: int) -> None:
        """`n` more packets scored."""
        with self._lock:
            self.packets += n
            self._advance()
        self.refresh()

    def file_done(self, n: int = 1) -> None:
        with self._lock:
            self.files += n
        self.refresh()

    def set_units(self, total: int, done: int = 0) -> None:
        """The run's units of work: `total`, of which `done` were finished by an earlier run."""
        with self._lock:
            self.total_units, self.units = total, done
        self.refresh()

    def unit_done(self) -> None:
        with self._lock:
            self.units += 1
        self.refresh()

    def _advance(self) -> None:
        while self._marks and self._marks[0][0] <= self.packets:
            self.done_bytes = max(self.done_bytes, self._marks.popleft()[1])
        if self.first_scored is None and (self.packets or self.done_bytes):
            self.first_scored = self.clock()

    def fraction(self) -> float:
        if self.total_bytes > 0:
            return min(1.0, self.done_bytes / self.total_bytes)
        return min(1.0, self.files / self.total_files) if self.total_files else 0.0

    def rate(self) -> tuple[float, float] | None:
        """(packets/s, fraction of the work per second) since the first work was done; None before."""
        if self.first_scored is None:
            return None
        seconds = self.clock() - self.first_scored
        if seconds <= 0:
            return None
        return self.packets / seconds, self.fraction() / seconds

    def eta(self) -> float | None:
        """Seconds left at the steady rate, None while it is not known."""
        rate = self.rate()
        if rate is None or rate[1] <= 0:
            return None
        return (1.0 - self.fraction()) / rate[1]

    def status(self) -> str:
        parts = [f"{self.fraction():4.0%}"]
        if self.total_bytes > 0:
            parts.append(_size(self.done_bytes, self.total_bytes))
        if self.total_units:
            parts.append(f"{self.units}/{self.total_units} units")
        else:
            parts.append(f"{self.files}/{self.total_files} files")
        parts.append(f"{compact_count(self.packets)} pkts")
        rate, eta = self.rate(), self.eta()
        if rate is None:
            parts.append("starting")  # kernels and model loading: no rate to tell yet
        else:
            parts.append(f"{compact_count(rate[0], exact_below=10_000)}/s")
            parts.append("eta " + (_clock_text(eta) if eta is not None else "-:--:--"))
        return "  ".join(parts)

    def refresh(self) -> None:
        if self._progress is not None and self._task is not None:
            total = self.total_bytes if self.total_bytes > 0 else max(self.total_files, 1)
            self._progress.update(self._task, completed=self.fraction() * total)


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
        lines.append(Text(f"{r.status:8} {name_text(r.path)}"))  # Text: names with [brackets] stay as they are
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
    names = [name_text(r.path) for r in reports if getattr(r, "not_capture", False)]
    if not names:
        return None
    shown = ", ".join(names[:NOT_CAPTURES_NAMED])
    if len(names) > NOT_CAPTURES_NAMED:
        shown += f" and {len(names) - NOT_CAPTURES_NAMED:,} more ({full_list} lists them)"
    return f"not a capture, skipped ({len(names):,}): {shown}"
