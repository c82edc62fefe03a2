"""File names as text.

On POSIX a file name is bytes; Python holds a name that is not valid UTF-8 with its stray bytes as lone
surrogates (PEP 383), which UTF-8 text (Arrow strings, Parquet, CSV, the terminal) cannot hold. Such a name is
still read and scored; where it is written as text, each byte that is not UTF-8 is shown as \\xNN (`name_text`).
The JSON report and summary keep the exact name: JSON escapes the surrogates (\\udcNN), and
`os.fsencode(json.loads(...))` gives the name's bytes back.
"""

from __future__ import annotations

import os


def name_text(path: str | os.PathLike) -> str:
    """`path` as valid UTF-8 text: unchanged when it is, else with each stray byte written as \\xNN."""
    name = os.fspath(path)
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
