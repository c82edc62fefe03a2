"""The dataset directory: split codes, writing (atomically), reading, and the per-split counts in its meta.

A dataset is a directory (see docs/architecture.md):
    meta.json   layout_version, classes, task, label_column, split_mode, seed, mask, keep_dns, sources, counts
    rows.npy    uint8 [N, 1500]  (opened memory-mapped)
    labels.npy  int16 [N]        index into meta["classes"]
    split.npy   int8  [N]        0 train, 1 val, 2 test
    flow.npy    int64 [N]        flow id, unique per (capture file, bidirectional flow)
    file.npy    int32 [N]        optional: index of the row's capture file in meta["sources"]
    source.npy  int16 [N]        built from several sources: index of the row's source in meta["inputs"]
    <name>.npy  [N, ...]         optional: a metadata column of pktnin.schema (ts_ns, src_addr, ...) per row,
                                 the ones meta["packet_meta"] lists
It is written into a temporary sibling directory and renamed into place, so readers never see half a dataset;
rows.npy is written block by block (DatasetWriter), so a build never holds all rows in memory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pktnin.layout import LAYOUT_VERSION, ROW_LEN
from pktnin.schema import PACKET_META

# Split codes as stored in split.npy; every user of splits takes them from here.
SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2
SPLIT_CODES = {"train": SPLIT_TRAIN, "val": SPLIT_VAL, "test": SPLIT_TEST}
SPLIT_NAMES = tuple(SPLIT_CODES)

_DATA_FILES = ("rows.npy", "labels.npy", "split.npy", "flow.npy", "meta.json")


def count_per_split(labels: np.ndarray, split: np.ndarray, classes: Sequence[str]) -> dict:
    """{"train": {class: n, ...}, "val": ..., "test": ..., "total": {class: n}}, every class listed."""
    labels = np.asarray(labels)
    split = np.asarray(split)
    counts = {}
    for name, code in SPLIT_CODES.items():
        per_class = np.bincount(labels[split == code], minlength=len(classes))
        counts[name] = {c: int(n) for c, n in zip(classes, per_class)}
    total = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), np.int64)
    counts["total"] = {c: int(n) for c, n in zip(classes, total)}
    return counts


def write_dataset(
    out_dir: str | os.PathLike,
    rows: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    flow: np.ndarray,
    meta: dict,
    file_index: np.ndarray | None = None,
) -> Path:
    """Write a dataset directory atomically and return its path.

    `meta` must hold "classes" (list of names, index = label id); "layout_version", "counts" and "n_rows" are
    filled in here. `file_index` (optional) is each row's capture file as an index into meta["sources"].
    An existing dataset at `out_dir` is replaced only once the new one is complete.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != ROW_LEN:
        raise ValueError(f"rows must have shape [N, {ROW_LEN}], got {rows.shape}")
    _check_classes(meta)
    with DatasetWriter(out_dir) as writer:
        writer.append_rows(rows)
        return writer.finish(labels, split, flow, meta, file_index=file_index)


def _check_classes(meta: dict) -> list[str]:
    classes = list(meta.get("classes") or [])
    if not classes:
        raise ValueError("dataset meta needs a non-empty 'classes' list")
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate class names: {classes}")
    return classes


class DatasetWriter:
    """Writes a dataset directory block by block, so that the rows are never whole in memory: rows.npy grows on
    disk in a temporary sibling directory, finish() adds the per-row arrays and meta.json and renames the
    directory into place. Used as a context manager, an exception removes the temporary directory."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out = Path(out_dir)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f"{self.out.name}.tmp-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.n_rows = 0
        self._rows_file = open(self.tmp / "rows.npy", "wb")
        # numpy pads the header so the shape can grow without moving the data; it is rewritten in finish().
        self._header_len = self._write_header()

    def _write_header(self) -> int:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (self.n_rows, ROW_LEN)}  # fmt: skip
        self._rows_file.seek(0)
        np.lib.format.write_array_header_1_0(self._rows_file, header)
        return self._rows_file.tell()

    def append_rows(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != ROW_LEN:
            raise ValueError(f"rows must have shape [N, {ROW_LEN}], got {rows.shape}")
        self._rows_file.write(np.ascontiguousarray(rows, dtype=np.uint8).tobytes())
        self.n_rows += rows.shape[0]

    def finish(
        self,
        labels: np.ndarray,
        split: np.ndarray,
        flow: np.ndarray,
        meta: dict,
        file_index: np.ndarray | None = None,
        source_index: np.ndarray | None = None,
        packet_meta: dict[str, np.ndarray] | None = None,
    ) -> Path:
        """Write labels, split, flow (and the optional per-row capture file and source) for the rows appended,
        then meta.json, and move the directory into place. `source_index` is each row's source as an index into
        meta["inputs"] (datasets built from several sources); `packet_meta` metadata columns of pktnin.schema."""
        classes = _check_classes(meta)
        n = self.n_rows
        labels, split, flow = np.asarray(labels), np.asarray(split), np.asarray(flow)
        named = [("labels", labels), ("split", split), ("flow", flow)]
        if file_index is not None:
            file_index = np.asarray(file_index)
            named.append(("file_index", file_index))
        if source_index is not None:
            source_index = np.asarray(source_index)
            named.append(("source_index", source_index))
        for name, arr in named:
            if arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
        packet_meta = {name: _meta_column(name, arr, n) for name, arr in (packet_meta or {}).items()}
        if n and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"labels must lie in 0..{len(classes) - 1}, got {labels.min()}..{labels.max()}")
        if n and (split.min() < 0 or split.max() > SPLIT_TEST):
            raise ValueError(f"split codes must be 0 (train), 1 (val) or 2 (test), got {split.min()}..{split.max()}")

        full_meta = dict(meta)
        full_meta["classes"] = classes
        full_meta["layout_version"] = LAYOUT_VERSION
        full_meta["n_rows"] = int(n)
        full_meta["counts"] = count_per_split(labels.astype(np.int64), split, classes)

        if self._write_header() != self._header_len:
            raise RuntimeError("rows.npy header changed length")  # numpy reserves room for any row count
        self._rows_file.close()
        np.save(self.tmp / "labels.npy", labels.astype(np.int16))
        np.save(self.tmp / "split.npy", split.astype(np.int8))
        np.save(self.tmp / "flow.npy", flow.astype(np.int64))
        if file_index is not None:
            np.save(self.tmp / "file.npy", file_index.astype(np.int32))
        if source_index is not None:
            np.save(self.tmp / "source.npy", source_index.astype(np.int16))
        for name, arr in packet_meta.items():
            np.save(self.tmp / f"{name}.npy", arr)
        with open(self.tmp / "meta.json", "w") as f:
            json.dump(full_meta, f, indent=1)
            f.write("\n")
        _swap_into_place(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        self._rows_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _meta_column(name: str, arr: np.ndarray, n: int) -> np.ndarray:
    """A metadata column of pktnin.schema for n rows, in the schema's dtype; anything else is refused."""
    if name not in PACKET_META:
        raise ValueError(f"{name!r} is not a packet metadata column of pktnin.schema")
    dtype, shape = PACKET_META[name]
    arr = np.asarray(arr)
    if arr.shape != (n, *shape):
        raise ValueError(f"{name} must have shape {(n, *shape)}, got {arr.shape}")
    return arr.astype(dtype, copy=False)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary directory to `out`; a directory cannot replace a non-empty one in a single
    rename, so an old dataset is first moved aside and removed after the new one is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    old = out.parent / f"{out.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class Dataset:
    """A dataset directory opened for reading; `rows` is memory-mapped."""

    path: Path
    rows: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    flow: np.ndarray
    meta: dict
    file: np.ndarray | None = None  # capture file of each row (index into meta["sources"]), when recorded
    source: np.ndarray | None = None  # source of each row (index into meta["inputs"]); None: one source
    packet_meta: dict[str, np.ndarray] = field(default_factory=dict)  # stored metadata columns, by name

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def indices(self, split_name: str) -> np.ndarray:
        """Row indices (int64, ascending) of one split: "train", "val" or "test"."""
        if split_name not in SPLIT_CODES:
            raise ValueError(f"unknown split {split_name!r}; expected one of {SPLIT_NAMES}")
        return np.flatnonzero(self.split == SPLIT_CODES[split_name])


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Open a dataset directory written by write_dataset."""
    d = Path(path)
    missing = [name for name in _DATA_FILES if not (d / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{d} is not a dataset directory (missing {', '.join(missing)})")
    with open(d / "meta.json") as f:
        meta = json.load(f)
    version = meta.get("layout_version")
    if version != LAYOUT_VERSION:
        raise ValueError(f"{d}: dataset has layout_version {version}, this pktnin uses {LAYOUT_VERSION}")
    rows = np.load(d / "rows.npy", mmap_mode="r")
    labels = np.load(d / "labels.npy")
    split = np.load(d / "split.npy")
    flow = np.load(d / "flow.npy")
    file = np.load(d / "file.npy") if (d / "file.npy").is_file() else None
    source = np.load(d / "source.npy") if (d / "source.npy").is_file() else None
    n = rows.shape[0]
    if rows.ndim != 2 or rows.shape[1] != ROW_LEN or rows.dtype != np.uint8:
        raise ValueError(f"{d / 'rows.npy'}: expected uint8 [N, {ROW_LEN}], got {rows.dtype} {rows.shape}")
    for name, arr in (("labels", labels), ("split", split), ("flow", flow), ("file", file), ("source", source)):
        if arr is not None and arr.shape != (n,):
            raise ValueError(f"{d / (name + '.npy')}: expected shape ({n},), got {arr.shape}")
    packet_meta = {}
    for name in meta.get("packet_meta", []):
        if name not in PACKET_META:
            raise ValueError(f"{d / 'meta.json'}: {name!r} is not a packet metadata column of pktnin.schema")
        packet_meta[name] = _meta_column(name, np.load(d / f"{name}.npy", mmap_mode="r"), n)
    return Dataset(
        path=d, rows=rows, labels=labels, split=split, flow=flow, meta=meta, file=file, source=source,
        packet_meta=packet_meta,
    )  # fmt: skip
