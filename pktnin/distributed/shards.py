"""Shards: pieces of the input that one worker scores on its own, and the index pass that cuts large files.

A shard is a byte range [start, stop) of one capture whose bounds are record boundaries, the frame number of
its first record and the pcapng section state there (kernels.capture.ReaderState), so that a reader started
there sees exactly the records a walk over the whole file would. A file is one shard unless it is larger than
`split_bytes`; then the index pass walks its records once and cuts after the first record that ends at least
`split_bytes` after the previous cut. Cuts are only ever taken from that walk (never guessed by searching the
bytes for something that looks like a record header): a wrong guess would silently lose or double rows.

The index of a file is cached under the user cache dir (engine.cache.cache_dir()/index), keyed by the file's
real path, size, mtime and the split size, so a rerun or a resumed run does not walk the file again.

A shard's id hashes (real path, size, mtime, start, scoring settings incl. the model hash): a retry or a resumed
run writes the same part name, and a part can only be reused by a run with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pktnin.atomic import atomic_path

INDEX_VERSION = 1
DEFAULT_SPLIT_BYTES = 1 << 30
INDEX_STEP_RECORDS = 4096  # records per walk call of the index pass: the finest a cut can be placed


@dataclass(frozen=True)
class Cut:
    """A record boundary: the file offset of the next record, its frame number, the reader state there."""

    offset: int
    frame: int
    state: list | None  # ReaderState.to_json() for pcapng, None for classic pcap


@dataclass(frozen=True)
class Shard:
    id: str
    file_index: int  # position of the file in the run's input list
    path: str
    start: int | None  # None: from the file's start
    stop: int | None  # None: to the file's end
    first_frame: int
    state: list | None  # ReaderState.to_json() at start, or None
    part: int  # this shard's position among its file's shards
    parts: int  # how many shards the file has
    stamp: dict  # {"size", "mtime_ns"} of the file when the shards were made

    def reader_kwargs(self) -> dict:
        """Keyword arguments for kernels.capture.CaptureReader that restrict it to this shard."""
        from pktnin.kernels.capture import ReaderState

        state = None if self.state is None else ReaderState.from_json(self.state)
        return {"start": self.start, "stop": self.stop, "first_frame": self.first_frame, "state": state}

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> Shard:
        return cls(**d)


def file_stamp(path: str | os.PathLike) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def shard_id(real_path: str, stamp: dict, start: int | None, settings: dict) -> str:
    key = json.dumps([real_path, stamp["size"], stamp["mtime_ns"], start or 0, settings], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def index_file(path: str | os.PathLike, split_bytes: int, step_records: int = INDEX_STEP_RECORDS) -> list[Cut]:
    """Cuts for one file: after the first record ending >= split_bytes past the previous cut (the file start
    for the first). No cuts for files that are not captures or fit in one shard; none after a fatal error."""
    from pktnin.kernels.capture import CaptureError, CaptureReader

    if split_bytes < 1:
        raise ValueError(f"split_bytes must be at least 1, got {split_bytes}")
    try:
        reader = CaptureReader(path, max_records=step_records)
    except (CaptureError, OSError):
        return []  # the worker reads it whole and reports why it cannot
    size = os.stat(path).st_size
    cuts: list[Cut] = []
    last = 0
    for _ in reader:
        if reader.offset - last >= split_bytes and reader.offset < size:
            state = reader.state()
            cuts.append(Cut(reader.offset, reader.frames, None if state is None else state.to_json()))
            last = reader.offset
    return cuts


def index_cache_path(real_path: str, stamp: dict, split_bytes: int) -> Path:
    from pktnin.engine.cache import cache_dir

    key = json.dumps([INDEX_VERSION, real_path, stamp["size"], stamp["mtime_ns"], split_bytes])
    return cache_dir() / "index" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def cached_index(path: str | os.PathLike, split_bytes: int, step_records: int = INDEX_STEP_RECORDS) -> list[Cut]:
    """index_file, cached per (real path, size, mtime, split size); an unreadable cache entry is recomputed."""
    real = os.path.realpath(path)
    stamp = file_stamp(real)
    cache = index_cache_path(real, stamp, split_bytes)
    try:
        data = json.loads(cache.read_text())
        if data["stamp"] == stamp and data["path"] == real:
            return [Cut(int(o), int(f), s) for o, f, s in data["cuts"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    cuts = index_file(real, split_bytes, step_records)
    if file_stamp(real) == stamp:  # the file did not change while it was walked
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                tmp.write_text(
                    json.dumps({"path": real, "stamp": stamp, "cuts": [[c.offset, c.frame, c.state] for c in cuts]})
                )
        except OSError:
            pass  # a read-only cache only costs the walk next time
    return cuts


def make_shards(
    files: list[Path],
    settings: dict,
    split_bytes: int = DEFAULT_SPLIT_BYTES,
    step_records: int = INDEX_STEP_RECORDS,
) -> list[Shard]:
    """Shards of every file, in input order (files in order, then their byte ranges in order)."""
    shards: list[Shard] = []
    for index, path in enumerate(files):
        real = os.path.realpath(path)
        try:
            stamp = file_stamp(real)
        except OSError:
            stamp = {"size": -1, "mtime_ns": -1}  # the worker reports the error
        cuts = cached_index(real, split_bytes, step_records) if stamp["size"] > split_bytes else []
        bounds = [(None, 0, None)] + [(c.offset, c.frame, c.state) for c in cuts]
        for k, (start, frame, state) in enumerate(bounds):
            stop = bounds[k + 1][0] if k + 1 < len(bounds) else None
            shards.append(
                Shard(
                    id=shard_id(real, stamp, start, settings),
                    file_index=index,
                    path=str(path),
                    start=start,
                    stop=stop,
                    first_frame=frame,
                    state=state,
                    part=k,
                    parts=len(bounds),
                    stamp=stamp,
                )
            )
    return shards
