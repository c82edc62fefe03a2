"""The messages between the scoring stages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pktnin.packets import FileReport
from pktnin.storage import Location


@dataclass
class FileEnd:
    """Follows the last item of one input file (or of its byte range); carries the file's report."""

    report: FileReport


@dataclass
class Scored:
    """Probabilities of consecutive kept packets of one file, with their metadata."""

    file_index: int
    path: Location
    meta: dict[str, np.ndarray]
    probs: np.ndarray  # float32 [n, C], owned by this message
