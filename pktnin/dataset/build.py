"""The build loop: one source read, its packets labeled and sampled per group, split, and written as a dataset.

build_dataset(options) reads the source the options name (iscx, class_dirs or flow_csv), collects a seeded
capped sample of labeled packets in capture order, assigns splits, and writes the directory (dataset.format).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pktnin.dataset import class_dirs, flow_csv, iscx
from pktnin.dataset.format import load_dataset, write_dataset
from pktnin.dataset.options import BuildOptions
from pktnin.dataset.sampling import Reservoir, dense_flow_ids, random_split, split_files_by_count
from pktnin.dataset.source import Source, relative_name

# The reader of each source kind: options -> Source.
READERS: dict[str, Callable[[BuildOptions], Source]] = {
    "iscx": iscx.read,
    "class-dirs": class_dirs.read,
    "csv": flow_csv.read,
}

# Progress callback: (files finished, packets read so far).
ProgressFn = Callable[[int, int], None]


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


@dataclass
class Collected:
    """The sampled packets of a source, in capture order, and what reading its files reported."""

    rows: np.ndarray
    labels: np.ndarray
    file_idx: np.ndarray
    flow_key: np.ndarray
    reports: list  # packets.FileReport per file read
    unlabeled: int
    labeled_per_file: dict[int, int]  # packets that got a label, before sampling


def build_dataset(options: BuildOptions, progress: ProgressFn | None = None) -> BuildReport:
    """Build the dataset `options` describe and write it to options.out (atomically)."""
    started = time.perf_counter()
    source = READERS[options.kind](options)
    got = collect(source, options, progress)
    split = assign_splits(got, source, options)
    return finish(options, source, got, split, started)


def collect(source: Source, options: BuildOptions, progress: ProgressFn | None = None) -> Collected:
    """Read the source's files, label every kept packet and keep a capped, seeded sample per group, in capture
    order."""
    from pktnin import packets

    seed = options.seed
    reservoirs = [Reservoir(cap, np.random.default_rng([seed, 0, g])) for g, cap in enumerate(source.group_caps)]
    reports: list = []
    seq_next = 0
    read = 0
    unlabeled = 0
    labeled_per_file: dict[int, int] = {}
    batches = packets.iter_packets(source.files, mask=options.mask, keep_dns=options.keep_dns, reports=reports)
    for batch in batches:
        n = len(batch)
        read += n
        classes, groups = source.label_batch(batch)
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
    labels = np.concatenate([np.full(len(p[0]), source.group_class[g], np.int64) for g, p in enumerate(parts)])
    order = np.argsort(seq, kind="stable")
    del parts, reservoirs
    return Collected(rows[order], labels[order], file_idx[order], flow_key[order], reports, unlabeled, labeled_per_file)


def assign_splits(got: Collected, source: Source, options: BuildOptions) -> np.ndarray:
    """Split code per row: packets at random (stratified by class), or whole files, as the source gives them
    or, when it gives none, filling 68/16/16 of each class's packets file by file."""
    if options.split == "random":
        return random_split(got.labels, options.seed)
    if source.file_split is not None:
        per_file = dict(enumerate(source.file_split))
    else:
        per_file = split_files_by_count(got.labels, got.file_idx, options.seed)
    lookup = np.zeros(max(per_file, default=-1) + 1, np.int8)
    for f, code in per_file.items():
        lookup[f] = code
    return lookup[got.file_idx]


def finish(options: BuildOptions, source: Source, got: Collected, split: np.ndarray, started: float) -> BuildReport:
    """Write the dataset with its meta and report what was left out."""
    from pktnin.packets import total_skips

    root = source.root
    if not len(got.rows):
        raise ValueError(f"{root}: no packet got a label; nothing to write")
    skipped = source.skipped + _unlabeled_files(got, source) + _failed_files(got.reports, root)
    flow = dense_flow_ids(got.file_idx, got.flow_key)
    meta = dict(
        source_kind=source.kind,
        task=source.task,
        label_column=source.label_column,
        split_mode=options.split,
        seed=options.seed,
        mask=options.mask,
        keep_dns=options.keep_dns,
        max_per_class=source.max_per_class,
        **source.extra_meta,
    )
    meta.update(
        classes=source.classes,
        source=str(root.resolve()),
        sources=[relative_name(f, root) for f in source.files],
        files_with_rows=len(np.unique(got.file_idx)),
        skipped_files=[{"file": f, "reason": r} for f, r in skipped],
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    write_dataset(options.out, got.rows, got.labels, split, flow, meta, file_index=got.file_idx)
    return BuildReport(
        out=options.out,
        meta=load_dataset(options.out).meta,
        skipped_files=skipped,
        packet_skips=total_skips(got.reports),
        unlabeled_packets=got.unlabeled,
        file_errors=[
            (relative_name(r.path, root), "; ".join(r.errors)) for r in got.reports if r.errors and not r.failed
        ],
        seconds=time.perf_counter() - started,
    )


def _unlabeled_files(got: Collected, source: Source) -> list[tuple[str, str]]:
    """Files read fine whose packets all went unlabeled (only flow labels leave a readable file without any)."""
    return [
        (relative_name(source.files[r.index], source.root), "no packet of a labeled flow")
        for r in got.reports
        if not r.failed and r.kept and not got.labeled_per_file.get(r.index)
    ]


def _failed_files(reports: Iterable, root: Path) -> list[tuple[str, str]]:
    out = []
    for r in reports:
        if r.failed:
            out.append((relative_name(r.path, root), "; ".join(r.errors) or "unreadable"))
        elif r.kept == 0:
            why = ", ".join(f"{reason} {n}" for reason, n in sorted(r.skip_counts.items(), key=lambda kv: -kv[1]))
            out.append((relative_name(r.path, root), f"no packet became a row ({why or 'no packets'})"))
    return out
