"""Units of work: what one executor call scores on its own, the same whichever executor runs it.

A unit is a byte range of one large capture, one whole capture, or a group of consecutive small captures, in
input order. Each of its pieces (Piece) is a file or a byte range [start, stop) of one, whose bounds are record
boundaries, with the frame number of its first record and the pcapng section state there
(kernels.capture.ReaderState), so that a reader started there sees exactly the records a walk over the whole
file would. A file larger than `unit_bytes` is cut by the index pass, which walks its records once and cuts
after the first record that ends at least `unit_bytes` after the previous cut; smaller files are grouped until
a group holds `unit_bytes` or `unit_files` files. Cuts are only ever taken from that walk (never guessed by
searching the bytes for something that looks like a record header): a wrong guess would silently lose or double
rows. A stream (standard input, a pipe) is a unit of its own, never reused.

Per-unit state (flow tables, per-flow decisions) starts fresh at each unit: local and Ray runs cut the same
units, so they give the same rows.

The index of a file is cached under the user cache dir (engine.cache.cache_dir()/index), keyed by the file's
real path, size, mtime and the unit size, so a rerun or a resumed run does not walk the file again.

A unit's id hashes its pieces (real path, stamp, start) and the scoring settings (the model hash included): a
retry or a resumed run writes the same part name, and a part can only be reused by a run with the same settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pktnin.atomic import atomic_path
from pktnin.engine.cache import cache_dir
from pktnin.kernels.capture import CaptureError, CaptureReader, ReaderState, is_stream
from pktnin.scoring.manifest import file_stamp
from pktnin.scoring.options import DEFAULT_UNIT_BYTES, DEFAULT_UNIT_FILES
from pktnin.storage import Location, io_map, resolved, size_mtime

INDEX_VERSION = 2
INDEX_STEP_RECORDS = 4096  # records per walk call of the index pass: the finest a cut can be placed


@dataclass(frozen=True)
class Cut:
    """A record boundary: the file offset of the next record, its frame number, the reader state there."""

    offset: int
    frame: int
    state: list | None  # ReaderState.to_json() for pcapng, None for classic pcap


@dataclass(frozen=True)
class Piece:
    """One file of a unit, or a byte range of it."""

    file_index: int  # position of the file in the run's input list
    path: str
    start: int | None = None  # None: from the file's start
    stop: int | None = None  # None: to the file's end
    first_frame: int = 0
    state: list | None = None  # ReaderState.to_json() at start, or None
    part: int = 0  # this piece's position among its file's pieces
    parts: int = 1  # how many pieces the file has
    stamp: dict | None = None  # manifest.file_stamp of the file when the units were made (None: a stream)

    @property
    def whole(self) -> bool:
        return self.parts == 1

    def changed(self) -> bool:
        """True when the file is no longer the one the units were cut from: its stamp differs (a stream, or a
        file that could not be read then or now, never counts as changed: the reader reports those)."""
        if self.stamp is None:
            return False
        try:
            return file_stamp(self.path) != self.stamp
        except OSError:
            return False

    def reader_kwargs(self) -> dict:
        """Keyword arguments for kernels.capture.CaptureReader that restrict it to this piece ({} for a file)."""
        if self.whole:
            return {}
        state = None if self.state is None else ReaderState.from_json(self.state)
        return {"start": self.start, "stop": self.stop, "first_frame": self.first_frame, "state": state}


@dataclass(frozen=True)
class Unit:
    id: str
    pieces: tuple[Piece, ...]
    reusable: bool = True  # False for a stream: its data is gone once read

    def to_dict(self) -> dict:
        return {"id": self.id, "pieces": [dict(p.__dict__) for p in self.pieces], "reusable": self.reusable}

    @classmethod
    def from_dict(cls, d: dict) -> Unit:
        return cls(d["id"], tuple(Piece(**p) for p in d["pieces"]), d["reusable"])


def unit_id(pieces: list[Piece], settings: dict) -> str:
    key = json.dumps([[resolved(p.path), p.stamp, p.start or 0] for p in pieces] + [settings], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def index_file(path: Location, split_bytes: int, step_records: int = INDEX_STEP_RECORDS) -> list[Cut]:
    """Cuts for one file: after the first record ending >= split_bytes past the previous cut (the file start
    for the first). No cuts for files that are not captures or fit in one shard; none after a fatal error."""
    if split_bytes < 1:
        raise ValueError(f"split_bytes must be at least 1, got {split_bytes}")
    try:
        reader = CaptureReader(path, max_records=step_records)
    except (CaptureError, OSError):
        return []  # the worker reads it whole and reports why it cannot
    size = size_mtime(path)[0]
    cuts: list[Cut] = []
    last = 0
    for _ in reader:
        if reader.offset - last >= split_bytes and reader.offset < size:
            state = reader.state()
            cuts.append(Cut(reader.offset, reader.frames, None if state is None else state.to_json()))
            last = reader.offset
    return cuts


def index_cache_path(real_path: str, stamp: dict, split_bytes: int) -> Path:
    key = json.dumps([INDEX_VERSION, real_path, stamp["size"], stamp["mtime_ns"], split_bytes])
    return cache_dir() / "index" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def cached_index(path: Location, split_bytes: int, step_records: int = INDEX_STEP_RECORDS) -> list[Cut]:
    """index_file, cached per (real path or URI, size, mtime, split size); an unreadable cache entry is
    recomputed."""
    real = resolved(path)
    stamp = _stat_stamp(real)
    cache = index_cache_path(real, stamp, split_bytes)
    try:
        data = json.loads(cache.read_text())
        if data["stamp"] == stamp and data["path"] == real:
            return [Cut(int(o), int(f), s) for o, f, s in data["cuts"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    cuts = index_file(real, split_bytes, step_records)
    if _stat_stamp(real) == stamp:  # the file did not change while it was walked
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                tmp.write_text(
                    json.dumps({"path": real, "stamp": stamp, "cuts": [[c.offset, c.frame, c.state] for c in cuts]})
                )
        except OSError:
            pass  # a read-only cache only costs the walk next time
    return cuts


def _stat_stamp(path: str) -> dict:
    size, mtime_ns = size_mtime(path)
    return {"size": size, "mtime_ns": mtime_ns}


def make_units(
    files: Sequence[Location],
    settings: dict,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
    unit_files: int = DEFAULT_UNIT_FILES,
    step_records: int = INDEX_STEP_RECORDS,
) -> list[Unit]:
    """Units of every file, in input order (files in order, a cut file's byte ranges in order)."""
    units: list[Unit] = []
    group: list[Piece] = []
    group_bytes = 0

    def close_group() -> None:
        nonlocal group, group_bytes
        if group:
            units.append(Unit(unit_id(group, settings), tuple(group)))
        group, group_bytes = [], 0

    def stamp_of(path: Location) -> dict | None | OSError:
        try:
            return None if is_stream(path) else file_stamp(path)
        except OSError as exc:
            return exc

    stamps = io_map(stamp_of, files)  # objects in a store: their requests in flight together
    for index, path in enumerate(files):
        if is_stream(path):
            close_group()
            piece = Piece(index, str(path))
            units.append(Unit(unit_id([piece], settings), (piece,), reusable=False))
            continue
        found = stamps[index]
        stamp = None if isinstance(found, OSError) else found  # unreadable: the reader reports the error
        size = stamp["size"] if stamp is not None else 0
        if size > unit_bytes:
            close_group()
            cuts = cached_index(path, unit_bytes, step_records)
            bounds = [(None, 0, None)] + [(c.offset, c.frame, c.state) for c in cuts]
            for k, (start, frame, state) in enumerate(bounds):
                stop = bounds[k + 1][0] if k + 1 < len(bounds) else None
                piece = Piece(index, str(path), start, stop, frame, state, k, len(bounds), stamp)
                units.append(Unit(unit_id([piece], settings), (piece,)))
            continue
        group.append(Piece(index, str(path), stamp=stamp))
        group_bytes += size
        if group_bytes >= unit_bytes or len(group) >= unit_files:
            close_group()
    close_group()
    return units
