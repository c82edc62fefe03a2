"""Which kind of source a path is: a flow-label CSV, an ISCX VPN-nonVPN tree, or a folder of class folders."""

from __future__ import annotations

import os
from pathlib import Path

from pktnin.dataset.iscx import iscx_label
from pktnin.errors import OptionError
from pktnin.packets import find_captures

SOURCE_KINDS = ("auto", "iscx", "class-dirs", "csv")


def detect_source(source: str | os.PathLike) -> str:
    """The kind of a source: "csv" for a .csv file (or a folder holding labels.csv), "iscx" when most captures in
    the tree are named like ISCX VPN-nonVPN files, else "class-dirs"."""
    p = Path(source)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return "csv"
        raise OptionError(f"{p}: a source file must be a flow-label .csv")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if (p / "labels.csv").is_file():
        return "csv"
    names = [f.name for f in find_captures([p])]
    if names and sum(iscx_label(n) is not None for n in names) * 2 > len(names):
        return "iscx"
    return "class-dirs"
