"""The build loop: each source read, its packets labeled and sampled per group, split, and written as a dataset.

build_dataset(options) reads the sources the options name (iscx, class_dirs or flow_csv; one or several, rows of
each following the previous one's), collects a seeded capped sample of labeled packets in capture order, assigns
splits (each source keeps its own file split), and writes the directory (dataset.format). Rows go to disk as they
are read; only the small per-row columns (label, file, flow key) are held in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pktnin.dataset import class_dirs, flow_csv, iscx
from pktnin.dataset.format import DatasetWriter, count_per_split, load_dataset
from pktnin.dataset.options import BuildOptions
from pktnin.dataset.sampling import Reservoir, dense_flow_ids, random_split, split_files_by_count
from pktnin.dataset.source import Source, relative_name
from pktnin.schema import concat_meta

# The reader of each source kind: options -> Source.
READERS: dict[str, Callable[[BuildOptions], Source]] = {
    "iscx": iscx.read,
    "class-dirs": class_dirs.read,
    "csv": flow_csv.read,
}

# Progress callback: (files finished, packets read so far), over all sources.
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
    """The per-row columns of the packets a source wrote (its rows went to the writer), in capture order, and
    what reading its files reported."""

    labels: np.ndarray
    file_idx: np.ndarray  # index into the source's files
    flow_key: np.ndarray
    reports: list  # packets.FileReport per file read
    unlabeled: int
    labeled_per_file: dict[int, int]  # packets that got a label, before sampling
    packets_read: int = 0
    packet_meta: dict[str, np.ndarray] = field(default_factory=dict)  # the columns options.packet_meta names


def build_dataset(options: BuildOptions, progress: ProgressFn | None = None) -> BuildReport:
    """Build the dataset `options` describe and write it to options.out (atomically)."""
    started = time.perf_counter()
    per_source = options.per_source()
    sources = read_sources(per_source)
    names = _source_names(sources)
    with DatasetWriter(options.out) as writer:
        collected = []
        files_before, packets_before = 0, 0
        for o, source in zip(per_source, sources):

            def shifted(files: int, packets: int, f0: int = files_before, p0: int = packets_before) -> None:
                assert progress is not None  # only passed on when there is a progress callback
                progress(f0 + files, p0 + packets)

            got = collect(source, o, writer, None if progress is None else shifted)
            collected.append(got)
            files_before += len(got.reports)
            packets_before += got.packets_read
        split = assign_splits(collected, sources, per_source)
        return finish(options, writer, sources, names, collected, split, started)


def read_sources(per_source: list[BuildOptions]) -> list[Source]:
    """Read every source's labels; the later ones use the first one's class list (a CSV source is given it,
    others must have the same)."""
    first = READERS[per_source[0].kind](per_source[0])
    sources = [first]
    for o in per_source[1:]:
        if o.kind == "csv":
            o = replace(o, classes=first.classes)
        source = READERS[o.kind](o)
        if source.classes != first.classes:
            raise ValueError(f"{o.source}: its classes {source.classes} differ from {first.classes} of {first.root}")
        sources.append(source)
    return sources


def collect(
    source: Source, options: BuildOptions, writer: DatasetWriter, progress: ProgressFn | None = None
) -> Collected:
    """Read the source's files, label every kept packet and write a capped, seeded sample per group, in capture
    order. Without a cap every labeled packet is written as it is read."""
    from pktnin import packets

    seed = options.seed
    stream = all(cap is None for cap in source.group_caps)
    if options.packet_meta and not stream:
        raise ValueError(f"{source.root}: packet metadata is stored only for a build that keeps every packet")
    reservoirs = [Reservoir(cap, np.random.default_rng([seed, 0, g])) for g, cap in enumerate(source.group_caps)]
    reports: list = []
    seq_next = 0
    read = 0
    unlabeled = 0
    labeled_per_file: dict[int, int] = {}
    streamed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (labels, file_idx, flow_key) per batch
    meta_parts: dict[str, list[np.ndarray]] = {name: [] for name in options.packet_meta}
    batches = packets.iter_packets(source.files, mask=options.mask, keep_dns=options.keep_dns, reports=reports)
    group_class = np.asarray(source.group_class, np.int64)
    for batch in batches:
        n = len(batch)
        read += n
        classes, groups = source.label_batch(batch)
        keep = classes >= 0
        n_labeled = int(keep.sum())
        unlabeled += n - n_labeled
        labeled_per_file[batch.file_index] = labeled_per_file.get(batch.file_index, 0) + n_labeled
        file_idx = np.full(n, batch.file_index, np.int64)
        flow_key = batch.meta["flow_key"].astype(np.uint64)
        if stream:
            sel = np.flatnonzero(keep)
            writer.append_rows(batch.rows[sel])
            streamed.append((group_class[groups[sel]], file_idx[sel], flow_key[sel]))
            for name, chunks in meta_parts.items():
                chunks.append(batch.meta[name][sel])
        else:
            seq = np.arange(seq_next, seq_next + n, dtype=np.int64)
            seq_next += n
            for g in np.unique(groups[keep]):
                sel = np.flatnonzero(keep & (groups == g))
                reservoirs[g].add(batch.rows[sel], file_idx[sel], flow_key[sel], seq[sel])
        if progress is not None:
            progress(len(reports), read)
    if progress is not None:
        progress(len(reports), read)

    if stream:
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint64))
        labels, file_idx, flow_key = (np.concatenate(column) for column in zip(empty, *streamed))
    else:
        parts = [r.result() for r in reservoirs]
        rows, file_idx, flow_key, seq = (np.concatenate(column) for column in zip(*parts))
        labels = np.concatenate([np.full(len(p[0]), source.group_class[g], np.int64) for g, p in enumerate(parts)])
        order = np.argsort(seq, kind="stable")
        del parts, reservoirs
        writer.append_rows(rows[order])  # the sample is at most the caps' worth of rows
        labels, file_idx, flow_key = labels[order], file_idx[order], flow_key[order]
    packet_meta = {name: concat_meta(chunks, name) for name, chunks in meta_parts.items()}
    return Collected(labels, file_idx, flow_key, reports, unlabeled, labeled_per_file, read, packet_meta)


def assign_splits(collected: list[Collected], sources: list[Source], per_source: list[BuildOptions]) -> np.ndarray:
    """Split code per row, over all sources: packets at random (stratified by class), or whole files, as each
    source gives them or, when it gives none, filling 68/16/16 of each class's packets file by file."""
    options = per_source[0]
    if options.split == "random":
        return random_split(np.concatenate([got.labels for got in collected]), options.seed)
    parts = []
    for got, source in zip(collected, sources):
        if source.file_split is not None:
            per_file = dict(enumerate(source.file_split))
        else:
            per_file = split_files_by_count(got.labels, got.file_idx, options.seed)
        lookup = np.zeros(max(per_file, default=-1) + 1, np.int8)
        for f, code in per_file.items():
            lookup[f] = code
        parts.append(lookup[got.file_idx])
    return np.concatenate(parts)


def finish(
    options: BuildOptions,
    writer: DatasetWriter,
    sources: list[Source],
    names: list[str],
    collected: list[Collected],
    split: np.ndarray,
    started: float,
) -> BuildReport:
    """Write the per-row columns and meta, and report what was left out. With several sources, capture files are
    named `<source name>/<file>` and meta["inputs"] describes each source (its files are a range of
    meta["sources"], the index source.npy holds)."""
    from pktnin.packets import total_skips

    several = len(sources) > 1
    first = sources[0]
    labels = np.concatenate([got.labels for got in collected])
    if not len(labels):
        raise ValueError(f"{', '.join(str(s.root) for s in sources)}: no packet got a label; nothing to write")
    offsets = np.cumsum([0] + [len(s.files) for s in sources])
    file_idx = np.concatenate([got.file_idx + offsets[i] for i, got in enumerate(collected)])
    flow_key = np.concatenate([got.flow_key for got in collected])
    source_idx = np.concatenate([np.full(len(got.labels), i, np.int64) for i, got in enumerate(collected)])
    flow = dense_flow_ids(file_idx, flow_key)

    def prefixed(i: int, name: str) -> str:
        return f"{names[i]}/{name}" if several else name

    skipped, file_errors, files = [], [], []
    for i, (source, got) in enumerate(zip(sources, collected)):
        left_out = source.skipped + _unlabeled_files(got, source) + _failed_files(got.reports, source.root)
        skipped += [(prefixed(i, f), why) for f, why in left_out]
        file_errors += [
            (prefixed(i, relative_name(r.path, source.root)), "; ".join(r.errors))
            for r in got.reports
            if r.errors and not r.failed
        ]
        files += [prefixed(i, relative_name(f, source.root)) for f in source.files]
    meta: dict[str, Any] = dict(
        source_kind=first.kind if len({s.kind for s in sources}) == 1 else "mixed",
        task=first.task,
        label_column=first.label_column,
        split_mode=options.split,
        seed=options.seed,
        mask=options.mask,
        keep_dns=options.keep_dns,
        max_per_class=first.max_per_class,
    )
    if several:
        meta["labels_csv"] = [s.extra_meta["labels_csv"] for s in sources if "labels_csv" in s.extra_meta]
    else:
        meta.update(first.extra_meta)
    meta.update(
        classes=first.classes,
        source=[str(s.root.resolve()) for s in sources] if several else str(first.root.resolve()),
        sources=files,
        files_with_rows=len(np.unique(file_idx)),
        skipped_files=[{"file": f, "reason": r} for f, r in skipped],
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if several:
        meta["inputs"] = [
            dict(
                name=names[i],
                kind=s.kind,
                root=str(s.root.resolve()),
                files=[int(offsets[i]), int(offsets[i + 1])],
                counts=count_per_split(collected[i].labels, split[source_idx == i], first.classes),
                **s.extra_meta,
            )
            for i, s in enumerate(sources)
        ]
    packet_meta = {name: np.concatenate([got.packet_meta[name] for got in collected]) for name in options.packet_meta}
    if packet_meta:
        meta["packet_meta"] = list(packet_meta)
    writer.finish(
        labels, split, flow, meta, file_index=file_idx, source_index=source_idx if several else None,
        packet_meta=packet_meta,
    )  # fmt: skip
    reports = [r for got in collected for r in got.reports]
    return BuildReport(
        out=options.out,
        meta=load_dataset(options.out).meta,
        skipped_files=skipped,
        packet_skips=total_skips(reports),
        unlabeled_packets=sum(got.unlabeled for got in collected),
        file_errors=file_errors,
        seconds=time.perf_counter() - started,
    )


def _source_names(sources: list[Source]) -> list[str]:
    """A short distinct name per source: the folder holding its labels CSV (or its root), numbered on a clash."""
    names: list[str] = []
    for s in sources:
        base = Path(s.extra_meta["labels_csv"]).parent.name if "labels_csv" in s.extra_meta else s.root.name
        name, k = base or "source", 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


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
