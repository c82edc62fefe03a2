"""A dataset's flows with their first K rows: what flow models train on and flow decisions are scored against.

Each flow of a dataset (its `flow.npy` ids, one per capture file and bidirectional flow) becomes one item: the
positions of its first k_max rows (capture order) in the dataset, their pkt_feats (pktnin.flow_features; needs a
dataset built with `--packet-meta ts_ns,src_addr,src_port,dst_port`), its label, split, file and source, and how
many rows (payload packets) it has: in a flow decision every one of them gets the flow's label, so packet-level
metrics weigh each flow by that count. Saved as one .npz (no rows: they stay in the dataset's rows.npy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pktnin.atomic import atomic_path
from pktnin.dataset.format import Dataset
from pktnin.flow_features import first_k_index, pkt_feats

K_MAX = 8
NEEDED_META = ("ts_ns", "src_addr", "src_port", "dst_port")


@dataclass
class FlowSet:
    """Per flow (F of them, in order of their first row): index int64 [F, K] into the dataset's rows (-1: no
    packet), feats float32 [F, K, 4], src_port/dst_port of the first row, label, split, capture_file, source (0 for a
    one-source dataset), packets (rows of the flow) and flow (its id in flow.npy)."""

    index: np.ndarray
    feats: np.ndarray
    src_port: np.ndarray
    dst_port: np.ndarray
    label: np.ndarray
    split: np.ndarray
    capture_file: np.ndarray  # index into the dataset's meta["sources"]
    source: np.ndarray
    packets: np.ndarray
    flow: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def k_max(self) -> int:
        return int(self.index.shape[1])

    def select(self, which: np.ndarray) -> FlowSet:
        return FlowSet(**{f.name: getattr(self, f.name)[which] for f in fields(self)})

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as out:
                np.savez(out, **{f.name: getattr(self, f.name) for f in fields(self)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FlowSet:
        with np.load(path) as saved:
            return cls(**{f.name: saved[f.name] for f in fields(cls)})


def flow_set(data: Dataset, k_max: int = K_MAX) -> FlowSet:
    """The FlowSet of every flow of `data` (its rows in capture order, as a dataset build writes them)."""
    missing = [name for name in NEEDED_META if name not in data.packet_meta]
    if missing:
        raise ValueError(
            f"{data.path}: the dataset stores no {', '.join(missing)} per row; build it with "
            f"--packet-meta {','.join(NEEDED_META)}"
        )
    if data.file is None:
        raise ValueError(f"{data.path}: the dataset records no capture file per row (file.npy)")
    meta = data.packet_meta
    flows, index = first_k_index(data.flow, k_max)
    first = index[:, 0]
    ids, counts = np.unique(data.flow, return_counts=True)
    packets = counts[np.searchsorted(ids, flows)]
    labels = np.asarray(data.labels)
    mixed = np.flatnonzero((labels[np.maximum(index, 0)] != labels[first][:, None]) & (index >= 0))
    if mixed.size:  # flow labels give every packet of a flow one label; a dataset that does not is not flows
        raise ValueError(f"{data.path}: {len(np.unique(mixed))} flows hold rows of different labels")
    feats = np.zeros((len(flows), k_max, 4), np.float32)
    for start in range(0, len(flows), 4096):  # a block of flows at a time from the memory-mapped rows
        part = index[start : start + 4096]
        used = np.unique(part[part >= 0])
        local = np.where(part >= 0, np.searchsorted(used, part), -1)
        rows = np.asarray(data.rows[used])
        feats[start : start + len(part)] = pkt_feats(
            rows, meta["ts_ns"][used], meta["src_addr"][used], meta["src_port"][used], local
        )
    source = np.zeros(len(flows), np.int16) if data.source is None else np.asarray(data.source)[first]
    return FlowSet(
        index=index,
        feats=feats,
        src_port=np.asarray(meta["src_port"])[first],
        dst_port=np.asarray(meta["dst_port"])[first],
        label=labels[first].astype(np.int16),
        split=np.asarray(data.split)[first].astype(np.int8),
        capture_file=np.asarray(data.file)[first].astype(np.int32),
        source=source.astype(np.int16),
        packets=packets.astype(np.int64),
        flow=flows.astype(np.int64),
    )


def first_rows(data: Dataset, flows: FlowSet, k: int) -> np.ndarray:
    """uint8 [F, k, 1500]: each flow's first k rows, zero rows for empty slots."""
    index = flows.index[:, :k]
    out = np.zeros((*index.shape, data.rows.shape[1]), np.uint8)
    used = index >= 0
    order = np.argsort(index[used])  # read the memory map in row order
    gathered = np.empty((order.size, data.rows.shape[1]), np.uint8)
    gathered[order] = data.rows[index[used][order]]
    out[used] = gathered
    return out
