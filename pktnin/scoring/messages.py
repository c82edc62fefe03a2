"""The messages between the scoring stages, and what a run reports its progress to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pktnin.packets import FileReport


@dataclass
class FileEnd:
    """Follows the last item of one input file (or of its byte range); carries the file's report."""

    report: FileReport


@dataclass
class Scored:
    """Probabilities of consecutive kept packets of one file, with their metadata."""

    file_index: int
    path: Path
    meta: dict[str, np.ndarray]
    probs: np.ndarray  # float32 [n, C], owned by this message


class Progress(Protocol):
    """What a run tells as it goes (the command line's progress bar)."""

    def add_packets(self, n: int) -> None: ...

    def add_bytes(self, n: int) -> None: ...

    def file_done(self, n: int = 1) -> None: ...
