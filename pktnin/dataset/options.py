"""The options of a dataset build, checked when made: an invalid combination never reaches the build loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pktnin.dataset.detect import SOURCE_KINDS, detect_source
from pktnin.dataset.iscx import ISCX_TASKS
from pktnin.errors import OptionError
from pktnin.layout import mask_code
from pktnin.schema import META_COLUMNS

SPLIT_MODES = ("random", "by-file")


@dataclass
class BuildOptions:
    """What to build from where. Made with kind "auto", split None or pcaps None, it holds the resolved values:
    the detected kind, by-file for a CSV source and random otherwise, pcaps/ beside the CSV."""

    source: Path  # a flow-label CSV (or a folder holding labels.csv), an ISCX tree, or a folder of class folders
    out: Path  # the dataset directory to write
    kind: str = "auto"  # one of SOURCE_KINDS
    split: str | None = None  # one of SPLIT_MODES
    seed: int = 0  # sampling and random splits
    max_per_class: int | None = None  # seeded sample of at most this many packets per class (ISCX: a default)
    mask: str = "paper"
    keep_dns: bool = False
    task: str | None = None  # ISCX only: A (applications) or B (traffic types, the default)
    label_column: str = "task_category"  # CSV only
    pcaps: Path | None = None  # CSV only: the capture folder
    # Further sources whose rows follow this one's in the same dataset: (source, capture folder or None) pairs,
    # each of the same kind of use as `source`/`pcaps`; each keeps its own file split.
    more_sources: Sequence[tuple[Path, Path | None]] = ()
    classes: list[str] | None = None  # CSV only: the class list to use instead of the CSV's own
    # Metadata columns of pktnin.schema to store per row (one <name>.npy each), e.g. for flow features.
    packet_meta: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        self.out = Path(self.out)
        if self.kind not in SOURCE_KINDS:
            raise OptionError(f"unknown source kind {self.kind!r}; choose from {', '.join(SOURCE_KINDS)}")
        if self.kind == "auto":
            self.kind = detect_source(self.source)
        if self.kind == "csv" and self.source.is_dir():
            self.source = self.source / "labels.csv"
        if self.task is not None and self.kind != "iscx":
            raise OptionError("--task applies to an ISCX source only")
        if self.pcaps is not None and self.kind != "csv":
            raise OptionError("--pcaps applies to a CSV source only")
        if self.split is None:
            self.split = "by-file" if self.kind == "csv" else "random"
        if self.split not in SPLIT_MODES:
            raise OptionError(f"unknown split mode {self.split!r}; choose random or by-file")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise OptionError(f"--max-per-class must be at least 1, got {self.max_per_class}")
        mask_code(self.mask)
        self.packet_meta = tuple(self.packet_meta)
        unknown = sorted(set(self.packet_meta) - set(META_COLUMNS))
        if unknown:
            raise OptionError(f"unknown packet metadata {unknown}; choose from {', '.join(META_COLUMNS)}")
        if self.packet_meta and self.max_per_class is not None:
            raise OptionError("packet metadata is stored only for a build that keeps every packet (no --max-per-class)")
        if self.kind == "iscx":
            task = self.task or "B"
            if task not in ISCX_TASKS:
                raise OptionError(f"unknown ISCX task {task!r}; choose A (applications) or B (traffic types)")
            self.task = ISCX_TASKS[task]
        if self.kind == "csv":
            self.pcaps = Path(self.pcaps) if self.pcaps is not None else self.source.parent / "pcaps"
        if self.classes is not None and self.kind != "csv":
            raise OptionError("a given class list applies to a CSV source only")
        self.more_sources = tuple((Path(s), None if p is None else Path(p)) for s, p in self.more_sources)
        self.per_source()  # checks every further source now

    def per_source(self, classes: list[str] | None = None) -> list[BuildOptions]:
        """One options object per source, this one first; the further sources take this one's split mode,
        seed, cap, mask, label column and (when given) `classes`, the class list every source must share."""
        first = replace(self, more_sources=()) if self.more_sources else self
        out = [first]
        for source, pcaps in self.more_sources:
            out.append(replace(first, source=source, pcaps=pcaps, kind="auto", classes=classes))
        return out
