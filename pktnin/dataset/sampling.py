"""Sampling and splitting: a seeded per-group reservoir sample, the packet-level and file-level splits, and
dense flow ids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pktnin.dataset.format import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from pktnin.layout import ROW_LEN

# The paper's random packet-level split.
SPLIT_FRACTIONS = (0.68, 0.16, 0.16)


class Reservoir:
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
        assert self._full is not None  # the reservoir is full from here on
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
        split[idx[:n_train]] = SPLIT_TRAIN
        split[idx[n_train : n_train + n_val]] = SPLIT_VAL
        split[idx[n_train + n_val :]] = SPLIT_TEST
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
            assignment[int(files[i])] = int(min(np.searchsorted(bounds, middle, side="right"), SPLIT_TEST))
            before += counts[i]
    return assignment


def dense_flow_ids(file_idx: np.ndarray, flow_key: np.ndarray) -> np.ndarray:
    """Flow ids 0..F-1, one per distinct (file, bidirectional flow key)."""
    if not len(file_idx):
        return np.zeros(0, np.int64)
    pairs = np.stack([file_idx.astype(np.uint64), flow_key.astype(np.uint64)], axis=1)
    _, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)
