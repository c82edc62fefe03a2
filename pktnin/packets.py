"""Capture files in, 1500-byte rows and per-packet metadata out.

This is the one entry point the dataset builder, `preprocess`, `bench` and `score` share:
paths -> capture files (recursive, sorted) -> RawBatch chunks (compiled record walk) -> rows + metadata
(compiled layout transform). Bad files are reported and skipped; the run goes on.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numba
import numpy as np

from pktnin.kernels.capture import CaptureError, CaptureReader, Issue, NotACapture
from pktnin.kernels.cpu import RangePrep
from pktnin.layout import SKIP_REASONS, SKIP_TS_OVERFLOW, SKIP_ZERO_LENGTH, mask_code
from pktnin.stages import DONE, Stages, Stopped
from pktnin.storage import Location, as_path, base_name, is_uri, list_files, resolved

if TYPE_CHECKING:
    from pktnin.kernels.capture import RawBatch


T = TypeVar("T")

# Chunks the record walk may run ahead of the transform when it has a thread of its own.
READ_AHEAD_CHUNKS = 2

# Records per thread in each piece of a chunk when rows are reused: ~1 MB of rows, what a core's cache holds.
REUSED_PIECE_RECORDS = 1024


@dataclass
class FileReport:
    """What happened to one input file."""

    index: int
    path: Location  # a URI stays a str (pktnin.storage)
    format: str | None = None
    records: int = 0  # packet records read (good ones)
    kept: int = 0  # packets that became rows
    corrupt_records: int = 0  # records skipped inside a readable file
    skip_counts: dict[str, int] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)  # kinds of skipped records (first offset), then the fatal one
    failed: bool = False  # nothing could be read (not a capture, empty, unreadable)
    stopped_early: bool = False  # a fatal error stopped the file; the records before it were kept
    not_capture: bool = False  # found in a folder, not named, and not a capture (notes.txt, .DS_Store): no failure
    compression: str | None = None  # "gzip" or "zstd" when the capture was compressed

    @property
    def fatal(self) -> Issue | None:
        """The error that failed or stopped the file, if any."""
        return self.issues[-1] if self.issues and self.issues[-1].fatal else None

    @property
    def error_offset(self) -> int | None:
        """Byte offset of the error that failed or stopped the file."""
        return None if self.fatal is None else self.fatal.offset

    def changed_while_read(self) -> None:
        """The file changed (rewritten, cut short) while it was read: that is its error unless the reader met one
        first (a cut is seen as such); the records read are kept, and the file counts as stopped early."""
        if self.fatal is None:
            self.issues.append(Issue("changed", None, "changed while it was read; rerun to score it again"))
            self.stopped_early = not self.failed

    @property
    def errors(self) -> list[str]:
        """The issues as people read them (terminal, --report)."""
        return [issue.line(self.path) for issue in self.issues]

    @property
    def status(self) -> str:
        if self.not_capture:
            return "not a capture"
        if self.failed:
            return "failed"
        if self.stopped_early or self.corrupt_records:
            return "partial"
        return "ok"


@dataclass
class PacketBatch:
    """Rows and metadata of the kept packets of one chunk of one file."""

    file_index: int
    path: Location
    rows: np.ndarray  # uint8 [k, ROW_LEN]
    meta: dict[str, np.ndarray]  # the columns of pktnin.schema.PACKET_META, [k, ...]
    consumed: int = 0  # bytes of the input file read up to the end of this chunk (for progress)

    def __len__(self) -> int:
        return int(self.rows.shape[0])


STDIN = "-"  # the path that names standard input
# Names that promise a capture: such a file found in a folder that cannot be read is a failure, any other is
# "not a capture" (notes.txt, .DS_Store). The format itself always comes from the magic number.
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz", ".pcapng.gz", ".pcap.zst", ".pcapng.zst")


def find_inputs(paths: Iterable[str | os.PathLike]) -> list[Location]:
    """find_captures, where a URI (s3://bucket/prefix/, gs://...) names an object or every object under a
    prefix, listed by the same rules (pktnin.storage); a URI stays a str."""
    found: list[Location] = []
    seen: set[str] = set()
    for raw in paths:
        for f in list_files(str(raw)) if is_uri(raw) else find_captures([raw]):
            key = str(f) if os.fspath(f) == STDIN else resolved(f)
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found


def find_captures(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (recursively) into a sorted, de-duplicated file list.

    "-" is standard input; pipes and FIFOs named on the command line are kept (read as streams). In a folder,
    hidden folders (.git, .cache) are not entered unless named themselves. Nothing is filtered by name: whether
    a file is a capture is decided by its magic number when it is read.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if os.fspath(raw) == STDIN:
            candidates = [Path(STDIN)]
        elif p.is_dir():
            candidates = sorted(q for q in p.rglob("*") if q.is_file() and not _in_hidden_folder(q, p))
        elif p.exists():
            candidates = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
        for q in candidates:
            key = q if os.fspath(q) == STDIN else q.resolve()
            if key not in seen:
                seen.add(key)
                found.append(q)
    return found


def _in_hidden_folder(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts[:-1])


def named_captures(files: Iterable[Location], paths: Iterable[str | os.PathLike]) -> AbstractSet[Location]:
    """The files of `files` named directly in `paths` (not found in a folder): those must be captures."""
    named = {as_path(p) for p in paths if is_uri(p) or not Path(p).is_dir()}
    return {f for f in files if f in named}


def promises_capture(path: Location) -> bool:
    return base_name(path).lower().endswith(CAPTURE_SUFFIXES)


def iter_raw_batches(
    files: Iterable[str | os.PathLike],
    max_records: int = 65536,
    first_index: int = 0,
    reader_kwargs: dict | None = None,
    named: AbstractSet[Location] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[FileReport, RawBatch | None]]:
    """The record walk over each file in turn, with the per-file error handling every consumer shares.

    Yields (report, raw) for each chunk of records, then (report, None) once the file is finished; the report
    then holds the format, records, corrupt records and errors (a consumer that transforms adds kept and skips).
    `reader_kwargs` go to each CaptureReader (e.g. the byte range of a shard).
    `named`: files the user named (None: all); any other file that is not a capture and whose name does not
    promise one is reported as "not a capture" instead of failed. `should_stop` (a callable) ends a wait on a
    stream.
    """
    for index, raw_path in enumerate(files, start=first_index):
        path = as_path(raw_path)
        report = FileReport(index=index, path=path)
        try:
            reader = CaptureReader(path, max_records=max_records, should_stop=should_stop, **(reader_kwargs or {}))
            report.format = reader.format
            report.compression = reader.compression
            for raw in reader:
                report.records += raw.n
                yield report, raw
            report.corrupt_records = reader.corrupt_records
            # records the reader skipped without damage: they count as read, under their skip reason
            for reason, count in ((SKIP_TS_OVERFLOW, reader.ts_overflow), (SKIP_ZERO_LENGTH, reader.zero_length)):
                if count:
                    report.records += count
                    report.skip_counts[SKIP_REASONS[reason]] = count
            report.issues = [e.issue for e in reader.errors]
            report.stopped_early = reader.fatal is not None
        except CaptureError as exc:  # includes NotACapture: the whole file is skipped
            report.failed = report.records == 0
            report.stopped_early = not report.failed
            report.issues.append(exc.issue)
            report.not_capture = (
                isinstance(exc, NotACapture) and named is not None and path not in named and not promises_capture(path)
            )
        except OSError as exc:
            report.failed = True
            report.issues.append(Issue("unreadable", None, exc.strerror or str(exc)))
        yield report, None


def read_ahead(make_items: Callable[[Callable[[], bool]], Iterator[T]], depth: int = READ_AHEAD_CHUNKS) -> Iterator[T]:
    """The items of make_items(stopped) produced on a thread of their own, at most `depth` ahead of the consumer,
    through the stage runtime (pktnin.stages: a bounded queue, a stop flag that every wait
    polls): the record walk of the next chunk overlaps the transform of this one. `stopped()` turns true once the
    consumer has gone (closed or failed), so a producer waiting on a stream can give up. An exception of the
    producer is raised in the consumer, after the items produced before it."""
    stages = Stages()
    items: queue.Queue = queue.Queue(maxsize=depth)

    def produce() -> None:
        for item in make_items(stages.stop.is_set):
            stages.put(items, item)
        stages.put(items, DONE)

    stages.thread("pktnin-read", produce)
    try:
        while True:
            try:
                item = stages.get(items)
            except Stopped:  # the producer failed: what it produced before comes first, then its error
                while not items.empty():
                    item = items.get_nowait()
                    if item is not DONE:
                        yield item
                stages.raise_error()
                return
            if item is DONE:
                return
            yield item
    finally:
        stages.finish()


def iter_packets(
    files: Iterable[str | os.PathLike],
    mask: str = "paper",
    keep_dns: bool = False,
    reports: list[FileReport] | None = None,
    max_records: int = 65536,
    first_index: int = 0,
    threads: int | None = None,
    reuse_rows: bool = False,
    flow_keys: bool = True,
    reader_kwargs: dict | None = None,
    named: AbstractSet[Location] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[PacketBatch]:
    """Read each file in turn and yield its kept packets in chunks of at most `max_records` records.

    `reports`, when given, receives one FileReport per file as soon as that file is finished.
    File indexes count from `first_index` in the order of `files`. `threads` (default: numba's thread count
    for the calling thread) split each chunk by record ranges, one PacketBatch per range, in record order.
    reuse_rows=True writes every chunk into the same buffers: a batch's rows and metadata are then valid
    only until the next batch is requested (for a consumer that reads them in place, like the engine).
    flow_keys=False leaves out the flow_key column. `reader_kwargs`, `named` and `should_stop`: see
    iter_raw_batches.
    """
    if threads is None:
        threads = numba.get_num_threads()
    counts = np.zeros(len(SKIP_REASONS), dtype=np.int64)
    min_range = REUSED_PIECE_RECORDS if reuse_rows else 2048
    walk_thread = threads > 1
    prep_threads = threads - 1 if walk_thread else 1

    def walk(stopped: Callable[[], bool] | None = None) -> Iterator[tuple[FileReport, RawBatch | None]]:
        stop = should_stop
        if stopped is not None:
            stop = stopped if should_stop is None else (lambda: stopped() or should_stop())
        return iter_raw_batches(files, max_records, first_index, reader_kwargs, named, stop)

    with RangePrep(mask_code(mask), keep_dns, prep_threads, reuse_rows, flow_keys, min_range) as prep:
        for report, raw in read_ahead(walk) if walk_thread else walk():
            if raw is None:
                report.skip_counts.update({SKIP_REASONS[i]: int(c) for i, c in enumerate(counts) if i and c})
                counts[:] = 0
                if reports is not None:
                    reports.append(report)
                continue
            # Reused rows go out in small pieces, each consumed while still in cache before the next overwrites it.
            pieces = prep.pieces(raw, REUSED_PIECE_RECORDS * prep_threads) if reuse_rows else [prep(raw)]
            for prepared in pieces:
                counts += prepared.skip_counts
                for rows, meta in prepared.parts:
                    report.kept += rows.shape[0]
                    if rows.shape[0]:
                        yield PacketBatch(report.index, report.path, rows, meta, raw.consumed)


def input_failures(reports: Iterable[FileReport]) -> list[FileReport]:
    """Inputs that failed or were cut short (files that are not captures are not among them)."""
    return [r for r in reports if not r.not_capture and (r.failed or r.stopped_early)]


def total_skips(reports: Iterable[FileReport]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in reports:
        for k, v in r.skip_counts.items():
            total[k] = total.get(k, 0) + v
    return total
