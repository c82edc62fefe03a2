"""Atomic output: write to a temporary name in the destination directory, then rename over the target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(
    target: str | os.PathLike,
    suffix: str = ".tmp",
    mode: int | None = None,
    replace: Callable[[Path, Path], None] = os.replace,
) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target`, on error it is removed.

    `suffix` ends the temporary name (a writer that insists on an extension, as Keras does, gets it). `mode` is
    applied after the body wrote the file; None gives the permissions a plain open() would. `replace(tmp,
    target)` puts the file in place (e.g. one that refuses to replace what is not the user's own).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    if mode is None:  # mkstemp creates the file 0600
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # after the body: a writer may have replaced the file
        replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
