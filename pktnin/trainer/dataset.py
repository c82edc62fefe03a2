"""Datasets of labeled packet rows: the on-disk format and the builders that make them from captures.

A dataset is a directory (see docs/architecture.md):
    meta.json   layout_version, classes, task, label_column, split_mode, seed, mask, keep_dns, sources, counts
    rows.npy    uint8 [N, 1500]  (opened memory-mapped)
    labels.npy  int16 [N]        index into meta["classes"]
    split.npy   int8  [N]        0 train, 1 val, 2 test
    flow.npy    int64 [N]        flow id, unique per (capture file, bidirectional flow)
    file.npy    int32 [N]        optional: index of the row's capture file in meta["sources"]
It is written into a temporary sibling directory and renamed into place, so readers never see half a dataset.

This module does not import TensorFlow: the builders and the training code share it.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from pktnin.layout import LAYOUT_VERSION, ROW_LEN

SPLIT_NAMES = ("train", "val", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}
# The paper's random packet-level split.
SPLIT_FRACTIONS = (0.68, 0.16, 0.16)

_DATA_FILES = ("rows.npy", "labels.npy", "split.npy", "flow.npy", "meta.json")


# --------------------------------------------------------------------------------------------------------------
# On-disk format
# --------------------------------------------------------------------------------------------------------------


def count_per_split(labels: np.ndarray, split: np.ndarray, classes: Sequence[str]) -> dict:
    """{"train": {class: n, ...}, "val": ..., "test": ..., "total": {class: n}}, every class listed."""
    labels = np.asarray(labels)
    split = np.asarray(split)
    counts = {}
    for code, name in enumerate(SPLIT_NAMES):
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
    out = Path(out_dir)
    rows = np.asarray(rows)
    labels = np.asarray(labels)
    split = np.asarray(split)
    flow = np.asarray(flow)
    classes = list(meta.get("classes") or [])
    if not classes:
        raise ValueError("dataset meta needs a non-empty 'classes' list")
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate class names: {classes}")
    if rows.ndim != 2 or rows.shape[1] != ROW_LEN:
        raise ValueError(f"rows must have shape [N, {ROW_LEN}], got {rows.shape}")
    n = rows.shape[0]
    named = [("labels", labels), ("split", split), ("flow", flow)]
    if file_index is not None:
        file_index = np.asarray(file_index)
        named.append(("file_index", file_index))
    for name, arr in named:
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if n and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels must lie in 0..{len(classes) - 1}, got {labels.min()}..{labels.max()}")
    if n and (split.min() < 0 or split.max() > 2):
        raise ValueError(f"split codes must be 0 (train), 1 (val) or 2 (test), got {split.min()}..{split.max()}")

    full_meta = dict(meta)
    full_meta["classes"] = classes
    full_meta["layout_version"] = LAYOUT_VERSION
    full_meta["n_rows"] = int(n)
    full_meta["counts"] = count_per_split(labels.astype(np.int64), split, classes)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        np.save(tmp / "rows.npy", np.ascontiguousarray(rows, dtype=np.uint8))
        np.save(tmp / "labels.npy", labels.astype(np.int16))
        np.save(tmp / "split.npy", split.astype(np.int8))
        np.save(tmp / "flow.npy", flow.astype(np.int64))
        if file_index is not None:
            np.save(tmp / "file.npy", file_index.astype(np.int32))
        with open(tmp / "meta.json", "w") as f:
            json.dump(full_meta, f, indent=1)
            f.write("\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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
    n = rows.shape[0]
    if rows.ndim != 2 or rows.shape[1] != ROW_LEN or rows.dtype != np.uint8:
        raise ValueError(f"{d / 'rows.npy'}: expected uint8 [N, {ROW_LEN}], got {rows.dtype} {rows.shape}")
    for name, arr in (("labels", labels), ("split", split), ("flow", flow), ("file", file)):
        if arr is not None and arr.shape != (n,):
            raise ValueError(f"{d / (name + '.npy')}: expected shape ({n},), got {arr.shape}")
    return Dataset(path=d, rows=rows, labels=labels, split=split, flow=flow, meta=meta, file=file)


# --------------------------------------------------------------------------------------------------------------
# Sampling and splitting
# --------------------------------------------------------------------------------------------------------------


class _Reservoir:
    """Seeded uniform sample of at most `cap` packets of one group (all of them when cap is None).

    Algorithm R, vectorised per batch: item t (0-based, in stream order) replaces slot j ~ U[0, t] when j < cap.
    Each kept packet carries its file index, flow key and stream position (to restore capture order later).
    """

    def __init__(self, cap: int | None, rng: np.random.Generator) -> None:
        self.cap = cap
        self.rng = rng
        self.seen = 0
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._full: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, rows: np.ndarray, file_idx: np.ndarray, flow_key: np.ndarray, seq: np.ndarray) -> None:
        if self.cap is not None and self.seen < self.cap:
            take = min(self.cap - self.seen, len(rows))
            self._chunks.append((rows[:take].copy(), file_idx[:take], flow_key[:take], seq[:take]))
            self.seen += take
            rows, file_idx, flow_key, seq = rows[take:], file_idx[take:], flow_key[take:], seq[take:]
            if self.seen == self.cap:
                self._full = self._concat()
                self._chunks = []
        if not len(rows):
            return
        if self.cap is None:
            self._chunks.append((rows.copy(), file_idx, flow_key, seq))
            self.seen += len(rows)
            return
        t = self.seen + np.arange(len(rows), dtype=np.int64)
        slot = self.rng.integers(0, t + 1)
        hit = np.flatnonzero(slot < self.cap)
        # Several items may draw the same slot; the last one wins, as in the sequential algorithm.
        rev_slots = slot[hit][::-1]
        uniq, first_in_rev = np.unique(rev_slots, return_index=True)
        src = hit[::-1][first_in_rev]
        full_rows, full_file, full_flow, full_seq = self._full
        full_rows[uniq] = rows[src]
        full_file[uniq] = file_idx[src]
        full_flow[uniq] = flow_key[src]
        full_seq[uniq] = seq[src]
        self.seen += len(rows)

    def _concat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._chunks:
            return (
                np.zeros((0, ROW_LEN), np.uint8),
                np.zeros(0, np.int64),
                np.zeros(0, np.uint64),
                np.zeros(0, np.int64),
            )
        parts = list(zip(*self._chunks))
        return tuple(np.concatenate(p) for p in parts)  # type: ignore[return-value]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rows, file_idx, flow_key, seq) of the sample."""
        return self._full if self._full is not None else self._concat()


def random_split(labels: np.ndarray, seed: int, fractions: Sequence[float] = SPLIT_FRACTIONS) -> np.ndarray:
    """Split codes for a packet-level random split, stratified by class (68/16/16 by default)."""
    rng = np.random.default_rng([seed, 1])
    split = np.zeros(len(labels), np.int8)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        split[idx[n_train : n_train + n_val]] = 1
        split[idx[n_train + n_val :]] = 2
    return split


def split_files_by_count(
    labels: np.ndarray, file_idx: np.ndarray, seed: int, fractions: Sequence[float] = SPLIT_FRACTIONS
) -> dict[int, int]:
    """Split code per file for sources without a given split: within each class, files in seeded random order
    fill train, then val, then test, each file going where the middle of its packets falls (68/16/16)."""
    rng = np.random.default_rng([seed, 2])
    bounds = np.cumsum(fractions)
    assignment: dict[int, int] = {}
    for cls in np.unique(labels):
        files, counts = np.unique(file_idx[labels == cls], return_counts=True)
        order = rng.permutation(len(files))
        total = counts.sum()
        before = 0
        for i in order:
            middle = (before + counts[i] / 2) / total
            assignment[int(files[i])] = int(min(np.searchsorted(bounds, middle, side="right"), 2))
            before += counts[i]
    return assignment


def dense_flow_ids(file_idx: np.ndarray, flow_key: np.ndarray) -> np.ndarray:
    """Flow ids 0..F-1, one per distinct (file, bidirectional flow key)."""
    if not len(file_idx):
        return np.zeros(0, np.int64)
    pairs = np.stack([file_idx.astype(np.uint64), flow_key.astype(np.uint64)], axis=1)
    _, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# The shared build loop
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What a build produced: the dataset path and meta, and what was left out and why."""

    out: Path
    meta: dict
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    packet_skips: dict[str, int] = field(default_factory=dict)  # packets the layout transform dropped
    unlabeled_packets: int = 0  # packets read but left out (no label, class not in the task)
    file_errors: list[tuple[str, str]] = field(default_factory=list)  # files read only in part: (file, errors)
    seconds: float = 0.0


# Progress callback: (files finished, packets read so far).
ProgressFn = Callable[[int, int], None]

# Labels one PacketBatch: returns (class id per packet, -1 = leave out; sampling group per packet).
LabelFn = Callable[[object], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Collected:
    rows: np.ndarray
    labels: np.ndarray
    file_idx: np.ndarray
    flow_key: np.ndarray
    reports: list
    unlabeled: int
    labeled_per_file: dict[int, int]  # packets that got a label, before sampling


def _collect(
    files: Sequence[Path],
    label_batch: LabelFn,
    group_caps: Sequence[int | None],
    group_class: Sequence[int],
    seed: int,
    mask: str,
    keep_dns: bool,
    progress: ProgressFn | None,
) -> _Collected:
    """Read `files`, label every kept packet and keep a capped, seeded sample per group, in capture order."""
    from pktnin import packets

    reservoirs = [_Reservoir(cap, np.random.default_rng([seed, 0, g])) for g, cap in enumerate(group_caps)]
    reports: list = []
    seq_next = 0
    read = 0
    unlabeled = 0
    labeled_per_file: dict[int, int] = {}
    for batch in packets.iter_packets(files, mask=mask, keep_dns=keep_dns, reports=reports):
        n = len(batch)
        read += n
        classes, groups = label_batch(batch)
        keep = classes >= 0
        n_labeled = int(keep.sum())
        unlabeled += n - n_labeled
        labeled_per_file[batch.file_index] = labeled_per_file.get(batch.file_index, 0) + n_labeled
        seq = np.arange(seq_next, seq_next + n, dtype=np.int64)
        seq_next += n
        file_idx = np.full(n, batch.file_index, np.int64)
        flow_key = batch.meta["flow_key"].astype(np.uint64)
        for g in np.unique(groups[keep]):
            sel = np.flatnonzero(keep & (groups == g))
            reservoirs[g].add(batch.rows[sel], file_idx[sel], flow_key[sel], seq[sel])
        if progress is not None:
            progress(len(reports), read)
    if progress is not None:
        progress(len(reports), read)

    parts = [r.result() for r in reservoirs]
    rows, file_idx, flow_key, seq = (np.concatenate(column) for column in zip(*parts))
    labels = np.concatenate([np.full(len(p[0]), group_class[g], np.int64) for g, p in enumerate(parts)])
    order = np.argsort(seq, kind="stable")
    del parts, reservoirs
    return _Collected(
        rows[order], labels[order], file_idx[order], flow_key[order], reports, unlabeled, labeled_per_file
    )


def _failed_files(reports: Iterable, root: Path) -> list[tuple[str, str]]:
    out = []
    for r in reports:
        if r.failed:
            out.append((_rel(r.path, root), "; ".join(r.errors) or "unreadable"))
        elif r.kept == 0:
            why = ", ".join(f"{reason} {n}" for reason, n in sorted(r.skip_counts.items(), key=lambda kv: -kv[1]))
            out.append((_rel(r.path, root), f"no packet became a row ({why or 'no packets'})"))
    return out


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _finish(
    out: Path,
    got: _Collected,
    split: np.ndarray,
    classes: list[str],
    files: Sequence[Path],
    root: Path,
    meta: dict,
    skipped: list[tuple[str, str]],
    started: float,
) -> BuildReport:
    from pktnin.packets import total_skips

    if not len(got.rows):
        raise ValueError(f"{root}: no packet got a label; nothing to write")
    skipped = skipped + _failed_files(got.reports, root)
    flow = dense_flow_ids(got.file_idx, got.flow_key)
    full_meta = dict(meta)
    full_meta.update(
        classes=classes,
        source=str(root.resolve()),
        sources=[_rel(f, root) for f in files],
        files_with_rows=len(np.unique(got.file_idx)),
        skipped_files=[{"file": f, "reason": r} for f, r in skipped],
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    write_dataset(out, got.rows, got.labels, split, flow, full_meta, file_index=got.file_idx)
    final = load_dataset(out).meta
    return BuildReport(
        out=out,
        meta=final,
        skipped_files=skipped,
        packet_skips=total_skips(got.reports),
        unlabeled_packets=got.unlabeled,
        file_errors=[(_rel(r.path, root), "; ".join(r.errors)) for r in got.reports if r.errors and not r.failed],
        seconds=time.perf_counter() - started,
    )


def _check_common(split: str, max_per_class: int | None, mask: str) -> None:
    if split not in ("random", "by-file"):
        raise ValueError(f"unknown split mode {split!r}; choose random or by-file")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"--max-per-class must be at least 1, got {max_per_class}")
    from pktnin.packets import mask_code

    mask_code(mask)


def _label_by_file(file_class: Sequence[int], file_group: Sequence[int]) -> LabelFn:
    """A LabelFn for sources that label whole files: every packet takes its file's class and sampling group."""
    class_of_file = np.array(file_class, np.int64)
    group_of_file = np.array(file_group, np.int64)

    def label_batch(batch) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch)
        return np.full(n, class_of_file[batch.file_index]), np.full(n, group_of_file[batch.file_index])

    return label_batch


def _source_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    return root


def _file_split(got: _Collected, split: str, seed: int) -> np.ndarray:
    if split == "random":
        return random_split(got.labels, seed)
    per_file = split_files_by_count(got.labels, got.file_idx, seed)
    lookup = np.zeros(max(per_file, default=-1) + 1, np.int8)
    for f, code in per_file.items():
        lookup[f] = code
    return lookup[got.file_idx]


# --------------------------------------------------------------------------------------------------------------
# Source 1: an ISCX VPN-nonVPN tree (labels from file names)
# --------------------------------------------------------------------------------------------------------------

# File-name rules. A name is lower-cased and its extension dropped; a leading "vpn_" marks a VPN capture and is
# removed. The first application whose prefix matches wins (order matters: "torrent" before "tor"). The traffic
# type (the paper's Table 2) is fixed per application, except for Facebook, Hangouts and Skype, whose activity
# word decides it: "chat" -> Chat, "file" -> File Transfer, "audio"/"video"/"voip" -> VoIP.
# Table 2 lists Gmail under Email, so gmailchat*.pcap counts as Email. SCP and Tor have no traffic type in
# Table 2 and only non-VPN captures, so neither task uses them; Gmail is left out of task A (Table 1 and Sec. III.A).
ISCX_APPS: tuple[tuple[str, str, str | None], ...] = (
    # (application, name prefix (regex), traffic type; None = decided by the activity word)
    ("AIM", r"aim", "Chat"),
    ("ICQ", r"icq", "Chat"),
    ("Gmail", r"gmail", "Email"),
    ("Email", r"e-?mail", "Email"),
    ("Facebook", r"facebook", None),
    ("Hangouts", r"hangouts?", None),
    ("Skype", r"skype", None),
    ("FTPS", r"ftps", "File Transfer"),
    ("SFTP", r"sftp", "File Transfer"),
    ("SCP", r"scp", None),
    ("Torrent", r"(?:bit)?torrent", "P2P"),
    ("Tor", r"tor", None),
    ("Voipbuster", r"voipbuster", "VoIP"),
    ("Netflix", r"netflix", "Streaming"),
    ("YouTube", r"youtube", "Streaming"),
    ("Vimeo", r"vimeo", "Streaming"),
    ("Spotify", r"spotify", "Streaming"),
)
_ISCX_ACTIVITY_APPS = {"Facebook", "Hangouts", "Skype"}
_ISCX_ACTIVITIES = (("chat", "Chat"), ("file", "File Transfer"), ("audio", "VoIP"), ("video", "VoIP"), ("voip", "VoIP"))

# Task A: the 14 applications of Table 1 with both VPN and non-VPN captures, up to 5,000 packets each, half VPN.
ISCX_TASK_A = (
    "AIM", "Email", "Facebook", "FTPS", "Hangouts", "ICQ", "Netflix",
    "SFTP", "Skype", "Spotify", "Torrent", "Voipbuster", "Vimeo", "YouTube",
)  # fmt: skip
ISCX_TASK_A_CAP = 5000
# Task B: the 12 traffic types of Table 1 (right), up to 12,000 packets each.
ISCX_TRAFFIC_TYPES = ("Chat", "Email", "File Transfer", "Streaming", "P2P", "VoIP")
ISCX_TASK_B = ISCX_TRAFFIC_TYPES + tuple(f"VPN-{t}" for t in ISCX_TRAFFIC_TYPES)
ISCX_TASK_B_CAP = 12000
ISCX_TASKS = {"A": "A", "app": "A", "application": "A", "B": "B", "traffic": "B"}


@dataclass(frozen=True)
class IscxLabel:
    app: str
    traffic: str | None  # Table 2 traffic type without the VPN- prefix; None when the file has none
    vpn: bool

    @property
    def traffic_class(self) -> str | None:
        if self.traffic is None:
            return None
        return f"VPN-{self.traffic}" if self.vpn else self.traffic


def iscx_label(file_name: str) -> IscxLabel | None:
    """Application, traffic type and VPN flag of an ISCX VPN-nonVPN capture from its file name (None: unknown)."""
    stem = Path(file_name).name.lower()
    stem = re.sub(r"\.(pcapng|pcap|cap)$", "", stem)
    vpn = re.match(r"vpn[_-]", stem) is not None
    if vpn:
        stem = stem[4:]
    for app, prefix, traffic in ISCX_APPS:
        matched = re.match(prefix, stem)
        if matched is None:
            continue
        if app in _ISCX_ACTIVITY_APPS:
            rest = stem[matched.end() :]
            traffic = next((t for word, t in _ISCX_ACTIVITIES if word in rest), None)
            if traffic is None:
                return None  # the activity cannot be told from the name
        return IscxLabel(app, traffic, vpn)
    return None


def build_from_iscx(
    root: str | os.PathLike,
    out: str | os.PathLike,
    task: str = "B",
    split: str = "random",
    seed: int = 0,
    max_per_class: int | None = None,
    mask: str = "paper",
    keep_dns: bool = False,
    progress: ProgressFn | None = None,
) -> BuildReport:
    """Task A (14 applications, VPN:non-VPN 1:1 up to half the cap each) or task B (12 traffic types)."""
    from pktnin.packets import find_captures

    started = time.perf_counter()
    _check_common(split, max_per_class, mask)
    if task not in ISCX_TASKS:
        raise ValueError(f"unknown ISCX task {task!r}; choose A (applications) or B (traffic types)")
    task = ISCX_TASKS[task]
    root = _source_dir(root)
    classes = list(ISCX_TASK_A if task == "A" else ISCX_TASK_B)
    cap = max_per_class or (ISCX_TASK_A_CAP if task == "A" else ISCX_TASK_B_CAP)

    files: list[Path] = []
    file_class: list[int] = []
    file_group: list[int] = []
    skipped: list[tuple[str, str]] = []
    for path in find_captures([root]):
        label = iscx_label(path.name)
        if label is None:
            skipped.append((_rel(path, root), "file name matches no ISCX application/activity"))
            continue
        name = label.app if task == "A" else label.traffic_class
        if name not in classes:
            skipped.append((_rel(path, root), f"{label.app} is not part of task {task}"))
            continue
        cls = classes.index(name)
        files.append(path)
        file_class.append(cls)
        # Task A samples VPN and non-VPN packets of an application separately, half the cap each.
        file_group.append(2 * cls + int(label.vpn) if task == "A" else cls)
    if task == "A":
        caps = [(cap + 1 - side) // 2 for _ in classes for side in (0, 1)]
        group_class = [cls for cls in range(len(classes)) for _ in (0, 1)]
    else:
        caps = [cap] * len(classes)
        group_class = list(range(len(classes)))

    label_batch = _label_by_file(file_class, file_group)
    got = _collect(files, label_batch, caps, group_class, seed, mask, keep_dns, progress)
    meta = dict(
        source_kind="iscx",
        task=f"iscx-{task}",
        label_column=None,
        split_mode=split,
        seed=seed,
        mask=mask,
        keep_dns=keep_dns,
        max_per_class=cap,
    )
    return _finish(Path(out), got, _file_split(got, split, seed), classes, files, root, meta, skipped, started)


# --------------------------------------------------------------------------------------------------------------
# Source 2: one sub-directory per class
# --------------------------------------------------------------------------------------------------------------


def build_from_class_dirs(
    root: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "random",
    seed: int = 0,
    max_per_class: int | None = None,
    mask: str = "paper",
    keep_dns: bool = False,
    progress: ProgressFn | None = None,
) -> BuildReport:
    """Class = name of the sub-directory of `root` a capture lies in (at any depth below it)."""
    from pktnin.packets import find_captures

    started = time.perf_counter()
    _check_common(split, max_per_class, mask)
    root = _source_dir(root)
    skipped: list[tuple[str, str]] = []
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            class_dirs.append(entry)
        else:
            skipped.append((entry.name, "not inside a class directory"))
    files: list[Path] = []
    file_class: list[int] = []
    classes: list[str] = []
    for d in class_dirs:
        found = find_captures([d])
        if not found:
            skipped.append((d.name + "/", "empty class directory"))
            continue
        classes.append(d.name)
        files.extend(found)
        file_class.extend([len(classes) - 1] * len(found))
    if not classes:
        raise ValueError(f"{root}: no class sub-directory holds any file")
    label_batch = _label_by_file(file_class, file_class)  # one sampling group per class
    caps = [max_per_class] * len(classes)
    got = _collect(files, label_batch, caps, list(range(len(classes))), seed, mask, keep_dns, progress)
    meta = dict(
        source_kind="class-dirs",
        task="class-dirs",
        label_column=None,
        split_mode=split,
        seed=seed,
        mask=mask,
        keep_dns=keep_dns,
        max_per_class=max_per_class,
    )
    return _finish(Path(out), got, _file_split(got, split, seed), classes, files, root, meta, skipped, started)


# --------------------------------------------------------------------------------------------------------------
# Source 3: a flow-label CSV (labels.csv with file_splits.csv and classes.json beside it)
# --------------------------------------------------------------------------------------------------------------

_PROTOCOLS = {"TCP": 6, "UDP": 17, "6": 6, "17": 17}
_CLASS_LIST_KEYS = {"task_category": "CAT", "task_app": "APP"}
_FIVE_TUPLE_LEN = 38  # proto, ip version, two 18-byte endpoints (address + port); the vlan adds 2 bytes
_NO_LABEL = -1  # flow listed, but without a label for this task
_AMBIGUOUS = -2  # same 5-tuple listed more than once in a file: the vlan decides


def flow_key_bytes(
    proto: np.ndarray,
    ip_version: np.ndarray,
    src_addr: np.ndarray,
    src_port: np.ndarray,
    dst_addr: np.ndarray,
    dst_port: np.ndarray,
    vlan: np.ndarray,
) -> np.ndarray:
    """uint8 [k, 40] keys that are equal for both directions of a flow: proto, ip version, the lower
    (address, port) endpoint, the higher one, vlan (big-endian). The first 38 bytes are the 5-tuple key."""
    k = len(proto)
    ends = np.zeros((2, k, 18), np.uint8)
    for side, (addr, port) in enumerate(((src_addr, src_port), (dst_addr, dst_port))):
        port = np.asarray(port).astype(np.uint16)
        ends[side, :, :16] = addr
        ends[side, :, 16] = port >> 8
        ends[side, :, 17] = port & 0xFF
    a, b = ends
    differ = a != b
    first = differ.argmax(axis=1)
    rows = np.arange(k)
    a_low = a[rows, first] <= b[rows, first]
    key = np.empty((k, 40), np.uint8)
    key[:, 0] = proto
    key[:, 1] = ip_version
    key[:, 2:20] = np.where(a_low[:, None], a, b)
    key[:, 20:38] = np.where(a_low[:, None], b, a)
    vlan = np.asarray(vlan).astype(np.uint16)
    key[:, 38] = vlan >> 8
    key[:, 39] = vlan & 0xFF
    return key


def _addr16(text: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(text.strip())
    return addr.version, addr.packed.ljust(16, b"\0")


@dataclass
class _FileFlows:
    """Labels of one capture file's flows: 5-tuple key -> class id (or _NO_LABEL / _AMBIGUOUS), and
    (5-tuple + vlan) key -> class id for the 5-tuples that repeat."""

    by_tuple: dict[bytes, int] = field(default_factory=dict)
    by_tuple_vlan: dict[bytes, int] = field(default_factory=dict)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Class id per packet (-1 when unlabeled) for uint8 [k, 40] keys."""
        out = np.full(len(keys), -1, np.int64)
        if not len(keys):
            return out
        tuples = np.ascontiguousarray(keys[:, :_FIVE_TUPLE_LEN]).view(f"V{_FIVE_TUPLE_LEN}").reshape(-1)
        uniq, inverse = np.unique(tuples, return_inverse=True)
        inverse = inverse.reshape(-1)
        per_uniq = np.array([self.by_tuple.get(u.tobytes(), _NO_LABEL) for u in uniq], np.int64)
        out[:] = per_uniq[inverse]
        ambiguous = np.flatnonzero(out == _AMBIGUOUS)
        for i in ambiguous:
            out[i] = self.by_tuple_vlan.get(keys[i].tobytes(), _NO_LABEL)
        out[out < 0] = -1
        return out


@dataclass
class FlowLabels:
    """A parsed flow-label CSV."""

    classes: list[str]
    files: dict[str, _FileFlows]  # file (relative to the pcaps folder) -> its flows
    file_split: dict[str, str]  # file -> train / val / test
    labeled_flows: int
    left_out: dict[str, int]  # reason -> number of CSV rows


def read_flow_labels(csv_path: str | os.PathLike, label_column: str = "task_category") -> FlowLabels:
    """Parse labels.csv (plus classes.json and file_splits.csv beside it when present)."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        need = ["file", "proto", "addr_a", "port_a", "addr_b", "port_b", label_column]
        missing = [c for c in need if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)} (has {', '.join(header)})")
        records = list(reader)

    classes = _class_list(csv_path, label_column, records)
    if not classes:
        raise ValueError(f"{csv_path}: column {label_column!r} holds no label")
    class_id = {c: i for i, c in enumerate(classes)}
    left_out: dict[str, int] = {}

    def leave_out(reason: str) -> None:
        left_out[reason] = left_out.get(reason, 0) + 1

    # Parse every listed flow, labeled or not: an unlabeled flow still decides whether its 5-tuple repeats.
    parsed: dict[str, list[tuple[bytes, int]]] = {}
    for line, rec in enumerate(records, start=2):
        proto = _PROTOCOLS.get(rec["proto"].strip().upper())
        if proto is None:
            leave_out("not TCP/UDP")
            continue
        try:
            ver_a, addr_a = _addr16(rec["addr_a"])
            ver_b, addr_b = _addr16(rec["addr_b"])
            port_a, port_b = int(rec["port_a"]), int(rec["port_b"])
            vlan = int(rec.get("vlan") or 0)
        except ValueError as exc:
            raise ValueError(f"{csv_path}, line {line}: {exc}") from None
        if ver_a != ver_b:
            raise ValueError(f"{csv_path}, line {line}: endpoints of different IP versions")
        key = flow_key_bytes(
            np.array([proto]),
            np.array([ver_a]),
            np.frombuffer(addr_a, np.uint8)[None, :],
            np.array([port_a]),
            np.frombuffer(addr_b, np.uint8)[None, :],
            np.array([port_b]),
            np.array([vlan]),
        )[0].tobytes()
        label = rec[label_column].strip()
        if not label:
            cls = _NO_LABEL
            leave_out("empty label")
        elif label not in class_id:
            cls = _NO_LABEL
            leave_out("label not in the class list")
        else:
            cls = class_id[label]
        parsed.setdefault(rec["file"].strip(), []).append((key, cls))

    files: dict[str, _FileFlows] = {}
    labeled_flows = 0
    for name, flows in parsed.items():
        counts: dict[bytes, int] = {}
        for key, _ in flows:
            counts[key[:_FIVE_TUPLE_LEN]] = counts.get(key[:_FIVE_TUPLE_LEN], 0) + 1
        ff = _FileFlows()
        for key, cls in flows:
            five = key[:_FIVE_TUPLE_LEN]
            if counts[five] == 1:
                ff.by_tuple[five] = cls
                continue
            ff.by_tuple[five] = _AMBIGUOUS
            if ff.by_tuple_vlan.get(key, cls) != cls:
                cls = _NO_LABEL  # the same flow listed twice with different labels: trust neither
                leave_out("conflicting labels")
            ff.by_tuple_vlan[key] = cls
        n_labeled = sum(1 for v in ff.by_tuple.values() if v >= 0) + sum(
            1 for v in ff.by_tuple_vlan.values() if v >= 0
        )
        if n_labeled:
            files[name] = ff
            labeled_flows += n_labeled

    file_split = _file_splits(csv_path, records)
    return FlowLabels(classes, files, file_split, labeled_flows, left_out)


def _class_list(csv_path: Path, label_column: str, records: list[dict]) -> list[str]:
    classes_json = csv_path.parent / "classes.json"
    key = _CLASS_LIST_KEYS.get(label_column)
    if key and classes_json.is_file():
        with open(classes_json) as f:
            lists = json.load(f)
        if key in lists:
            return [str(c) for c in lists[key]]
    return sorted({rec[label_column].strip() for rec in records} - {""})


def _file_splits(csv_path: Path, records: list[dict]) -> dict[str, str]:
    """Split per capture file, from file_splits.csv beside the CSV and/or its `split` column; they must agree."""
    result: dict[str, str] = {}
    origin: dict[str, str] = {}

    def put(name: str, value: str, where: str) -> None:
        value = value.strip().lower()
        if not value:
            return
        if value not in SPLIT_CODES:
            raise ValueError(f"{where}: unknown split {value!r} for {name} (expected train, val or test)")
        if name in result and result[name] != value:
            raise ValueError(f"{where}: {name} is in split {value!r} here but {result[name]!r} in {origin[name]}")
        result[name] = value
        origin[name] = where

    splits_csv = csv_path.parent / "file_splits.csv"
    if splits_csv.is_file():
        with open(splits_csv, newline="") as f:
            for line, rec in enumerate(csv.DictReader(f), start=2):
                if "file" not in rec or "split" not in rec:
                    raise ValueError(f"{splits_csv}: needs the columns file and split")
                put(rec["file"].strip(), rec["split"] or "", f"{splits_csv}, line {line}")
    for line, rec in enumerate(records, start=2):
        if rec.get("split"):
            put(rec["file"].strip(), rec["split"], f"{csv_path}, line {line}")
    return result


def build_from_csv(
    csv_path: str | os.PathLike,
    out: str | os.PathLike,
    pcaps: str | os.PathLike | None = None,
    label_column: str = "task_category",
    split: str = "by-file",
    seed: int = 0,
    max_per_class: int | None = None,
    mask: str = "paper",
    keep_dns: bool = False,
    progress: ProgressFn | None = None,
) -> BuildReport:
    """Packets take the label of their bidirectional 5-tuple flow (+ vlan where a 5-tuple repeats) in the same
    capture file. Split by capture file as the CSV says, or (`split="random"`) packets at random 68/16/16."""
    started = time.perf_counter()
    _check_common(split, max_per_class, mask)
    csv_path = Path(csv_path)
    pcaps = Path(pcaps) if pcaps is not None else csv_path.parent / "pcaps"
    if not pcaps.is_dir():
        raise NotADirectoryError(f"{pcaps}: capture folder not found (give it with --pcaps)")
    flows = read_flow_labels(csv_path, label_column)

    skipped: list[tuple[str, str]] = []
    names: list[str] = []
    for name in sorted(flows.files):
        if not (pcaps / name).is_file():
            skipped.append((name, "listed in the CSV but not found"))
        elif split == "by-file" and name not in flows.file_split:
            skipped.append((name, "no split given for this file"))
        else:
            names.append(name)
    files = [pcaps / name for name in names]
    per_file = [flows.files[name] for name in names]

    def label_batch(batch) -> tuple[np.ndarray, np.ndarray]:
        m = batch.meta
        keys = flow_key_bytes(
            m["proto"], m["ip_version"], m["src_addr"], m["src_port"], m["dst_addr"], m["dst_port"], m["vlan"]
        )
        labels = per_file[batch.file_index].lookup(keys)
        return labels, labels

    caps = [max_per_class] * len(flows.classes)
    got = _collect(files, label_batch, caps, list(range(len(flows.classes))), seed, mask, keep_dns, progress)
    if split == "random":
        split_codes = random_split(got.labels, seed)
    else:
        lookup = np.array([SPLIT_CODES[flows.file_split[name]] for name in names] or [0], np.int8)
        split_codes = lookup[got.file_idx]
    for r in got.reports:
        if not r.failed and r.kept and not got.labeled_per_file.get(r.index):
            skipped.append((names[r.index], "no packet of a labeled flow"))
    meta = dict(
        source_kind="flow-csv",
        task=label_column,
        label_column=label_column,
        split_mode=split,
        seed=seed,
        mask=mask,
        keep_dns=keep_dns,
        max_per_class=max_per_class,
        labels_csv=str(csv_path.resolve()),
        labeled_flows=flows.labeled_flows,
        csv_rows_left_out=flows.left_out,
        file_splits={name: flows.file_split.get(name) for name in names},
    )
    return _finish(Path(out), got, split_codes, flows.classes, files, pcaps, meta, skipped, started)


# --------------------------------------------------------------------------------------------------------------
# Source detection
# --------------------------------------------------------------------------------------------------------------

SOURCE_KINDS = ("auto", "iscx", "class-dirs", "csv")


def detect_source(source: str | os.PathLike) -> str:
    """"csv" for a .csv file (or a folder holding labels.csv), "iscx" when most captures in the tree are named
    like ISCX VPN-nonVPN files, else "class-dirs"."""
    p = Path(source)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"{p}: a source file must be a flow-label .csv")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if (p / "labels.csv").is_file():
        return "csv"
    from pktnin.packets import find_captures

    names = [f.name for f in find_captures([p])]
    if names and sum(iscx_label(n) is not None for n in names) * 2 > len(names):
        return "iscx"
    return "class-dirs"
