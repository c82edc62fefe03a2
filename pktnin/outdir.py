"""Safety of the files a run keeps beside its output, in a directory that may be shared with other users.

The run's side files have predictable names (OUT.lock, OUT.manifest.json, OUT.parts/), so in a shared directory
someone else may have planted them. The rules:
- never follow a symbolic link: the manifest and the lock are opened with O_NOFOLLOW, the parts directory is
  checked with lstat and opened with O_NOFOLLOW | O_DIRECTORY, and its files are removed through that handle;
- trust (read, reuse) only what the running user owns and nobody else can write: the manifest and the parts
  directory must be ours and not group/other-writable, each part ours and a regular file; anything else planted
  under those names stops the run with UnsafeOutputError instead of being used or removed;
- create the parts directory fresh with mode 0700, write the manifest 0600;
- remove only what the run made: in its private parts directory, files of its own naming; beside the output, the
  lock only when this run created it (or a killed run did: it holds LOCK_MARK) and the manifest it wrote, each
  compared by device and inode; nothing else, whatever its name (temporary files are made inside the parts
  directory, so none is ever left beside the output);
- hold the parts directory open for the whole run (HeldDir): read back through that handle only, and publish
  nothing when its name no longer leads to it (renamed away, swapped for a link or another directory);
- one run per output at a time: an exclusive flock on OUT.lock, refused with OutputBusyError.

An output on an object store (a URI, pktnin.storage) keeps what a store can express: an existing object is
replaced only when allowed, only objects of the run's naming are removed, the outputs are published at the end
once all are complete; there is no lock, no ownership and no handle on its prefix (see pktnin.storage).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pktnin import storage
from pktnin.errors import UsageError
from pktnin.storage import Location, StoreDir, is_uri

# Temporary files of pktnin.atomic.atomic_path and of HeldDir.create: ".NAME." + 8 characters + ".tmp".
_TEMP_TAIL = r"\.[A-Za-z0-9_]{8}\.tmp"
LOCK_MARK = b"pktnin run lock\n"  # what a lock file a run created holds: a killed run's lock is known by it


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


# -- outputs the user names ---------------------------------------------------------------------------------
def check_target(option: str, path: Location, may_replace: bool) -> None:
    """Refuse, before any work, an output name the run must not write: a symbolic link (dangling or not; never
    followed), anything but a regular file, another user's file, an existing file unless `may_replace`, or a
    folder the file cannot be created in. Raises UnsafeOutputError, or UsageError for an existing file. On a
    store: a prefix holding objects, or an existing object unless `may_replace`."""
    if is_uri(path):
        if storage.is_dir(path):
            raise UsageError(f"{option} {path} is a prefix holding objects: name an object")
        if storage.exists(path) and not may_replace:
            raise UsageError(f"{option} {path} exists: choose another name, or --force to replace it")
        return
    path = Path(path)
    st = _lstat(path)
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeOutputError(
                f"{option} {path} is a symbolic link (not followed): remove it or choose another name"
            )
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeOutputError(f"{option} {path} is not a regular file: choose another name")
        if st.st_uid != _uid():
            raise UnsafeOutputError(f"{option} {path} belongs to another user (uid {st.st_uid}): choose another name")
        if not may_replace:
            raise UsageError(f"{option} {path} exists: choose another name, or --force to replace it")
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists() and parent != parent.parent:  # missing folders are created: check the first that is
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {parent} (permission denied)")


def replace_own(tmp: Path, target: Path) -> None:
    """Rename `tmp` onto `target` unless something not ours appeared there since the run was checked: a link
    (rename would replace the link itself, never follow it), a non-regular file, another user's file."""
    st = _lstat(target)
    if st is not None and not (stat.S_ISREG(st.st_mode) and st.st_uid == _uid()):
        raise _refuse(target, _what(st) if stat.S_ISLNK(st.st_mode) or st.st_uid != _uid() else "is not a regular file")
    os.replace(tmp, target)


# -- the lock ------------------------------------------------------------------------------------------------
@contextmanager
def output_lock(outs: Iterable[Location]) -> Iterator[None]:
    """Hold an exclusive lock on each output (OUT.lock beside it) for the duration; removed afterwards."""
    held: list[tuple[Path, int, bool]] = []
    try:
        for out in sorted({Path(o).absolute() for o in outs if not is_uri(o)}):  # a store has no lock
            held.append((lock_path(out), *_lock_one(lock_path(out), out)))
        yield
    finally:
        for path, fd, created in reversed(held):
            _unlock_one(path, fd, created)


def _lock_one(path: Path, out: Path) -> tuple[int, bool]:
    """(descriptor, created): the lock held on `path`; created when this run made the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        created = True
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileExistsError:  # a killed run's lock, the lock of a run in progress, or someone's file
                created = False
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            continue  # removed between the two opens: try again
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
            if created:
                os.write(fd, LOCK_MARK)
            return fd, created
        os.close(fd)  # the run that held it removed it meanwhile: lock the file now at that name


def _unlock_one(path: Path, fd: int, created: bool) -> None:
    try:
        st, now = os.fstat(fd), _lstat(path)
        # Remove it while still holding it: only the file this run locked, ours, made by this run or by a run
        # that was killed (it holds the mark); a file of the same name the user made stays.
        ours = now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) and st.st_uid == _uid()
        if ours and (created or os.pread(fd, len(LOCK_MARK) + 1, 0) == LOCK_MARK):
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- private files -------------------------------------------------------------------------------------------
def read_private(path: Location) -> bytes | None:
    """The content of `path` if it is a regular file of ours that nobody else can write; None when absent.

    Raises UnsafeOutputError when something else is there (a symbolic link, someone else's file). An object in
    a store is read as it is."""
    if is_uri(path):
        return storage.read_bytes(path)
    path = Path(path)
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


def write_private(path: Location, data: bytes, temps: HeldDir | StoreDir | None = None) -> tuple[int, int]:
    """Replace `path` atomically with a 0600 file holding `data`; returns its (device, inode). The temporary file
    is made in `temps` (the run's parts directory: a kill leaves nothing beside the output), else beside `path`.
    An object in a store is written in one upload (no mode: the store's permissions apply)."""
    if is_uri(path):
        storage.put_bytes(path, data)
        return STORE_IDENTITY
    path = Path(path)
    assert not isinstance(temps, StoreDir)
    if temps is not None:
        name, fh = temps.create(path.name)
        try:
            with fh:
                fh.write(data)
            st = os.stat(name, dir_fd=temps.fd)
            os.rename(name, path, src_dir_fd=temps.fd)
            return st.st_dev, st.st_ino
        except BaseException:
            temps.discard(name)
            raise
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            st = os.fstat(fh.fileno())
        os.replace(tmp, path)
        return st.st_dev, st.st_ino
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


STORE_IDENTITY = (0, 0)  # the identity of an object in a store: it has no device and inode to compare


def identity(path: Location) -> tuple[int, int]:
    """(device, inode) of a file (not followed through a link); STORE_IDENTITY for an object in a store."""
    if is_uri(path):
        return STORE_IDENTITY
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def remove_if_same(path: Location, identity: tuple[int, int] | None) -> bool:
    """Remove `path` if it is still the file of that (device, inode), ours, never through a link. An object in
    a store is removed when the run read or wrote it (`identity` given): a store cannot say more."""
    if is_uri(path):
        return identity is not None and storage.remove(path)
    path = Path(path)
    st = _lstat(path)
    if identity is None or st is None or (st.st_dev, st.st_ino) != identity or not stat.S_ISREG(st.st_mode):
        return False
    return _remove_own_file(path)


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
def check_dir(path: Location) -> bool:
    """True when `path` is a directory of ours that nobody else can write, False when absent.

    Raises UnsafeOutputError for a symbolic link or anything that is not our own directory; a directory of
    ours that others could write is made private (0700) but reported False: nothing in it is trusted.
    A prefix in a store is trusted as it is (it has no owner to check)."""
    if is_uri(path):
        return True
    path = Path(path)
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


def make_dir(path: Location) -> None:
    """Create `path` with mode 0700 unless it is already our own private directory (a prefix in a store needs
    no making)."""
    if is_uri(path):
        return
    path = Path(path)
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


def remove_in_dir(path: Location, wanted: Callable[[str], bool], rmdir: bool = False) -> None:
    """Remove the regular files of ours in directory `path` whose name `wanted(name)` accepts, through a handle
    on the directory (never a link); with `rmdir`, then the directory itself if it is left empty. In a store:
    the objects directly under the prefix whose name `wanted` accepts."""
    if is_uri(path):
        storage.remove_matching(path, wanted, rmdir)
        return
    path = Path(path)
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


class HeldDir:
    """A run's private directory held open for the whole run. Files are made and read through the handle (never
    through a link; read back only regular files of ours that nobody else can write), so a name swapped under
    the run cannot feed it other files; `check_unchanged` says whether the name still leads to this directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refuse(self.path, "is not a directory (a symbolic link is not followed)") from None
            raise
        st = os.fstat(self.fd)
        if not _private(st):
            os.close(self.fd)
            raise _refuse(self.path, _what(st))
        self.identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> HeldDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_unchanged(self) -> None:
        """Raise UnsafeOutputError when the directory's name no longer leads to the directory held."""
        st = _lstat(self.path)
        if st is None or not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != self.identity:
            raise UnsafeOutputError(
                f"{self.path} was replaced while the run used it (renamed away, or another directory or a link put "
                "in its place): nothing is published; rerun in a directory only you can write"
            )

    def _dir(self, parts: list[str]) -> int:
        """A descriptor of the subfolder `parts` (each component opened without following links)."""
        fd = os.dup(self.fd)
        for part in parts:
            try:
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            finally:
                os.close(fd)
            fd = sub
        return fd

    def open_private(self, name: str) -> BinaryIO:
        """Read file `name` (a plain name, or one under a subfolder: "a/b") of the directory held: a regular
        file of ours that nobody else can write, else UnsafeOutputError (FileNotFoundError when absent)."""
        *folders, base = name.split("/")
        if not base or any(p in ("", ".", "..") for p in [*folders, base]):
            raise _refuse(self.path / name, "is not a plain name in the run's directory")
        dir_fd = self._dir(folders)
        try:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse(self.path / name, "is a symbolic link (not followed)") from None
            raise
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _private(st):
            os.close(fd)
            raise _refuse(self.path / name, "is not a regular file" if not stat.S_ISREG(st.st_mode) else _what(st))
        return os.fdopen(fd, "rb")

    def create(self, target_name: str) -> tuple[str, BinaryIO]:
        """(name, binary file) of a new temporary file for `target_name`, made in the directory held (0600)."""
        while True:
            name = f".{target_name}.{secrets.token_hex(4)}.tmp"
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=self.fd)  # fmt: skip
            except FileExistsError:
                continue
            return name, os.fdopen(fd, "wb")

    def discard(self, name: str) -> None:
        _remove_own_file(Path(name), dir_fd=self.fd)

    def staging(self) -> Staging:
        return Staging(self)


def hold_dir(path: Location) -> HeldDir | StoreDir:
    """The run's parts folder held for the run (HeldDir), or its prefix in a store (storage.StoreDir)."""
    return StoreDir(path) if is_uri(path) else HeldDir(Path(path))


class Staging:
    """The outputs of a run, written to temporary files and put in place together by publish(): after the
    held directory is checked unchanged and every target is free of anything not ours, or not at all. Temporary
    files are made in the held directory (none is left beside an output by a kill) unless the target is on
    another file system, then beside it. Used as a context: an error discards what is staged."""

    def __init__(self, held: HeldDir) -> None:
        self.held = held
        self.staged: list[tuple[str, Path, bool]] = []  # (temporary name or path, target, in the held directory)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *_exc: object) -> None:
        for tmp, _, in_held in self.staged:  # what publish() renamed is gone already
            if in_held:
                self.held.discard(tmp)
            else:
                Path(tmp).unlink(missing_ok=True)
        self.staged = []

    def create(self, target: Location) -> BinaryIO:
        """A binary file that publish() will put at `target`."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        umask = os.umask(0)
        os.umask(umask)
        if os.stat(target.parent).st_dev == self.held.identity[0]:
            name, fh = self.held.create(target.name)
            self.staged.append((name, target, True))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            self.staged.append((name, target, False))
            fh = os.fdopen(fd, "wb")
        os.fchmod(fh.fileno(), 0o666 & ~umask)  # what a plain open() would give the output
        return fh

    def publish(self) -> None:
        self.held.check_unchanged()
        for _, target, _ in self.staged:
            st = _lstat(target)
            if st is not None and not (stat.S_ISREG(st.st_mode) and st.st_uid == _uid()):
                why = _what(st) if stat.S_ISLNK(st.st_mode) or st.st_uid != _uid() else "is not a regular file"
                raise _refuse(target, why)
        while self.staged:
            tmp, target, in_held = self.staged[0]
            if in_held:
                os.rename(tmp, target, src_dir_fd=self.held.fd)
            else:
                os.replace(tmp, target)
            self.staged.pop(0)


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
