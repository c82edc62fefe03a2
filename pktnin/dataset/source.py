"""What a source (ISCX tree, class folders, flow-label CSV) hands the build loop: the capture files, the classes,
how each packet batch is labeled and sampled, and what the source adds to the dataset's meta."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Labels one PacketBatch: returns (class id per packet, -1 = leave out; sampling group per packet).
LabelFn = Callable[[object], tuple[np.ndarray, np.ndarray]]


@dataclass
class Source:
    """A source read and checked, before any packet is read. Group g keeps at most group_caps[g] packets (None:
    all) of class group_class[g]; file_split, when given, is the split code of each file for a by-file split."""

    kind: str  # meta["source_kind"]
    task: str
    label_column: str | None
    max_per_class: int | None  # the cap recorded in meta
    root: Path  # file names in meta and reports are relative to it
    files: list[Path]
    classes: list[str]
    label_batch: LabelFn
    group_caps: Sequence[int | None]
    group_class: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) left out before reading
    file_split: list[int] | None = None
    extra_meta: dict = field(default_factory=dict)


def label_by_file(file_class: Sequence[int], file_group: Sequence[int]) -> LabelFn:
    """A LabelFn for sources that label whole files: every packet takes its file's class and sampling group."""
    class_of_file = np.array(file_class, np.int64)
    group_of_file = np.array(file_group, np.int64)

    def label_batch(batch) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch)
        return np.full(n, class_of_file[batch.file_index]), np.full(n, group_of_file[batch.file_index])

    return label_batch


def source_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    return root


def relative_name(path: Path, root: Path) -> str:
    """`path` relative to `root` when it lies below it, else as given."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
