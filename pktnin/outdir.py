"""Safety of the files a run keeps beside its output, in a directory that may be shared with other users.

The run's side files have predictable names (OUT.lock, OUT.manifest.json, OUT.parts/), so in a shared directory
someone else may have planted them. The rules:
- never follow a symbolic link: the manifest and the lock are opened with O_NOFOLLOW, the parts directory is
  checked with lstat and opened with O_NOFOLLOW | O_DIRECTORY, and its files are removed through that handle;
- trust (read, reuse) only what the running user owns and nobody else can write: the manifest and the parts
  directory must be ours and not group/other-writable, each part ours and a regular file; anything else planted
  under those names stops the run with UnsafeOutputError instead of being used or removed;
- create the parts directory fresh with mode 0700, write the manifest 0600;
- remove only files whose names the run knows (listed in the manifest, or of its own naming patterns), that are
  regular files owned by the running user;
- one run per output at a time: an exclusive flock on OUT.lock, refused with OutputBusyError.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pktnin.errors import UsageError

# Temporary files of pktnin.atomic.atomic_path and of write_private: ".NAME." + mkstemp's 8 characters + ".tmp".
_TEMP_TAIL = r"\.[A-Za-z0-9_]{8}\.tmp"


class UnsafeOutputError(UsageError):
    """A side file of the output is a symbolic link, someone else's, or writable by others: not used."""


class OutputBusyError(UsageError):
    """Another run holds the lock on this output."""


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def temp_pattern(name: str) -> re.Pattern:
    """Names of the temporary files written beside a target called `name`."""
    return re.compile(re.escape("." + name) + _TEMP_TAIL)


def _uid() -> int:
    return os.geteuid()


def _private(st: os.stat_result) -> bool:
    return st.st_uid == _uid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _what(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link (not followed)"
    if st.st_uid != _uid():
        return f"belongs to another user (uid {st.st_uid})"
    return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"


def _refuse(path: Path, why: str) -> UnsafeOutputError:
    return UnsafeOutputError(f"{path} {why}; remove it or choose another output name")


# -- the lock ------------------------------------------------------------------------------------------------
@contextmanager
def output_lock(outs: Iterable[Path]) -> Iterator[None]:
    """Hold an exclusive lock on each output (OUT.lock beside it) for the duration; removed afterwards."""
    held: list[tuple[Path, int]] = []
    try:
        for out in sorted({Path(o).absolute() for o in outs}):
            held.append((lock_path(out), _lock_one(lock_path(out), out)))
        yield
    finally:
        for path, fd in reversed(held):
            _unlock_one(path, fd)


def _lock_one(path: Path, out: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse(path, "is a symbolic link (not followed)") from None
            raise UnsafeOutputError(f"cannot open the lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(
                f"another pktnin run is writing {out} (it holds {path}); wait for it to finish or choose another output"
            ) from None
        st, now = os.fstat(fd), _lstat(path)
        if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise _refuse(path, "is not a regular file")
            return fd
        os.close(fd)  # the run that held it removed it meanwhile: lock the file now at that name


def _unlock_one(path: Path, fd: int) -> None:
    try:
        st, now = os.fstat(fd), _lstat(path)
        # Remove it while still holding it, and only if it is our own file at that name.
        if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) and st.st_uid == _uid():
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- private files -------------------------------------------------------------------------------------------
def read_private(path: Path) -> bytes | None:
    """The content of `path` if it is a regular file of ours that nobody else can write; None when absent.

    Raises UnsafeOutputError when something else is there (a symbolic link, someone else's file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "is a symbolic link (not followed)") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "is not a regular file")
        if not _private(st):
            raise _refuse(path, _what(st))
        return fh.read()


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a 0600 file holding `data` (temporary name .NAME.XXXXXXXX.tmp beside it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_own_temps(directory: Path, names: Iterable[str]) -> list[str]:
    """Remove temporary files left beside the targets `names` by a killed run: exact pattern, ours, regular."""
    patterns = [temp_pattern(n) for n in names]
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for entry in entries:
        if any(p.fullmatch(entry) for p in patterns) and _remove_own_file(directory / entry):
            removed.append(entry)
    return removed


def _remove_own_file(path: Path, dir_fd: int | None = None) -> bool:
    try:
        st = os.lstat(path, dir_fd=dir_fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == _uid():
            os.unlink(path, dir_fd=dir_fd)
            return True
    except FileNotFoundError:
        pass
    return False


def remove_own_file(path: Path) -> bool:
    """Remove `path` if it is a regular file of ours (never through a link); True if removed."""
    return _remove_own_file(path)


# -- the parts directory -------------------------------------------------------------------------------------
def check_dir(path: Path) -> bool:
    """True when `path` is a directory of ours that nobody else can write, False when absent.

    Raises UnsafeOutputError for a symbolic link or anything that is not our own directory; a directory of
    ours that others could write is made private (0700) but reported False: nothing in it is trusted."""
    st = _lstat(path)
    if st is None:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "is a symbolic link (not followed)")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "is not a directory")
    if st.st_uid != _uid():
        raise _refuse(path, f"belongs to another user (uid {st.st_uid})")
    if _private(st):
        return True
    with _open_dir(path) as fd:
        os.fchmod(fd, 0o700)
    return False


def make_dir(path: Path) -> None:
    """Create `path` with mode 0700 unless it is already our own private directory."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not check_dir(path):
            raise _refuse(path, "could not be made private") from None


@contextmanager
def _open_dir(path: Path) -> Iterator[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(path, "is not a directory (a symbolic link is not followed)") from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != _uid():
            raise _refuse(path, f"belongs to another user (uid {st.st_uid})")
        yield fd
    finally:
        os.close(fd)


def remove_in_dir(path: Path, wanted: Callable[[str], bool], rmdir: bool = False) -> None:
    """Remove the regular files of ours in directory `path` whose name `wanted(name)` accepts, through a handle
    on the directory (never a link); with `rmdir`, then the directory itself if it is left empty."""
    if _lstat(path) is None:
        return
    with _open_dir(path) as fd:
        for name in os.listdir(fd):
            if wanted(name):
                _remove_own_file(Path(name), dir_fd=fd)
    if not rmdir:
        return
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty: files that are not ours to remove stay


def own_file(path: Path) -> bool:
    """True when `path` is a regular file (not a link) owned by the running user that others cannot write."""
    st = _lstat(path)
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_uid == _uid() and not st.st_mode & stat.S_IWOTH


# -- writability -------------------------------------------------------------------------------------------------
class OutputNotWritableError(OSError):
    """The output's directory cannot take the file (read-only, no permission, full)."""


PROBE_BYTES = 1 << 16


def check_writable(target: Path, need_bytes: int = 0) -> None:
    """Fail early, in one line, when `target` cannot be written: a probe file (PROBE_BYTES) is written and removed
    beside it, and the free space must hold `need_bytes`. Creates the missing parent directories."""
    target = Path(target)
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
        try:
            os.write(fd, bytes(PROBE_BYTES))
        finally:
            os.close(fd)
            os.unlink(tmp)
        vfs = os.statvfs(parent)
        free = vfs.f_bavail * vfs.f_frsize
    except OSError as exc:
        raise OutputNotWritableError(f"cannot write {target}: {exc.strerror or exc}") from None
    if need_bytes > free:
        raise OutputNotWritableError(
            f"cannot write {target}: it needs {need_bytes:,} bytes and {parent} has {free:,} free"
        )
