"""Inputs and outputs in object storage: S3 and its compatibles (s3://), GCS (gs://), Azure (abfs://), HDFS
(hdfs://), through pyarrow.fs, the one code path for every scheme.

A location is a local path (a Path, or a str that is not a URI) or a URI (always a str: Path would fold its "//").
This module tells them apart (`is_uri`, `as_path`), resolves a URI's filesystem once per bucket or account
(credentials and endpoint from the usual environment and config files: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ~/.aws/config, GOOGLE_APPLICATION_CREDENTIALS, ...), lists a prefix the
way a local folder is listed, opens an input for ranged reads (`open_input`: a local file, or a pyarrow
RandomAccessFile whose reads are ranged GETs: an object is never downloaded whole) and writes objects.

Writing: an object becomes visible only when its upload completes, but pyarrow completes an upload when its
stream is closed or dropped (it has no abort), so a stream that fails midway would publish a partial object.
Hence objects written as a stream (parts, the final outputs) go to a temporary key (`.NAME.xxxxxxxx.tmp`, in the
run's parts prefix) and are copied onto the target only when complete (`Upload`); small objects built in memory
(the manifest, unit summaries, flow partials, the report) are written whole by one request (`put_bytes`).

What a store cannot express of the local output rules (pktnin.outdir): there is no lock (two runs on one output
prefix are not refused), no ownership or permission check (whoever can write the prefix is trusted), no symbolic
links and no directory handles (the parts "folder" is a key prefix, read back by name).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeGuard, TypeVar

import pyarrow.fs as pafs

from pktnin.atomic import atomic_path

Location = Path | str  # a local path, or a URI (kept as str)
T = TypeVar("T")

_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(.*)", re.DOTALL)
_filesystems: dict[str, tuple[pafs.FileSystem, str]] = {}
_lock = threading.Lock()


def is_uri(path: object) -> TypeGuard[str]:
    """True for "scheme://..." (s3://bucket/key, gs://, abfs://, hdfs://, file://)."""
    return isinstance(path, str) and _URI.match(path) is not None


def as_path(path: str | os.PathLike) -> Location:
    """A URI as it is (str), anything else as a Path."""
    return path if is_uri(path) else Path(path)


def join(folder: Location, name: str) -> Location:
    """`folder / name` for a path or a URI prefix."""
    if is_uri(folder):
        return str(folder).rstrip("/") + "/" + name
    return Path(folder) / name


def with_suffix_name(path: Location, tail: str) -> Location:
    """The sibling whose name is `path`'s name + tail (OUT -> OUT.parts, OUT.manifest.json)."""
    if is_uri(path):
        return str(path).rstrip("/") + tail
    path = Path(path)
    return path.with_name(path.name + tail)


def resolved(path: Location) -> str:
    """What names one input or output everywhere: a local path made absolute with its links resolved, a URI as it
    is (a store has no links)."""
    return str(path) if is_uri(path) else os.path.realpath(path)


def base_name(path: Location) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else Path(path).name


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path in it) of a URI; the filesystem is made once per scheme and bucket (or account)."""
    m = _URI.match(uri)
    if m is None:
        raise ValueError(f"not a URI: {uri}")
    scheme, authority, rest = m.groups()
    root = f"{scheme}://{authority}"
    with _lock:
        if root not in _filesystems:
            try:
                _filesystems[root] = pafs.FileSystem.from_uri(root)
            except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise OSError(f"{uri}: cannot open the store: {exc}") from None
        fs, base = _filesystems[root]
    rest = rest.strip("/")
    return fs, (base.rstrip("/") + "/" + rest) if rest else base


IO_THREADS = 16  # requests in flight when many objects are looked at (stamps, sizes)


def io_map(fn: Callable[[Location], T], paths: Sequence[Location]) -> list[T]:
    """[fn(p) for p in paths], run IO_THREADS at a time when some are URIs: each request to a store waits
    on the network, so many small ones are made concurrently; local paths one after another, as always."""
    if not any(is_uri(p) for p in paths):
        return [fn(p) for p in paths]
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="pktnin-store") as pool:
        return list(pool.map(fn, paths))


def _info(uri: str) -> pafs.FileInfo:
    fs, path = resolve(uri)
    return fs.get_file_info(path)


def size_mtime(path: Location) -> tuple[int, int]:
    """(size, mtime in ns) of a file or object; FileNotFoundError when absent."""
    if not is_uri(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    info = _info(str(path))
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{path}: no such object")
    return int(info.size), int(info.mtime_ns or 0)


def exists(path: Location) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    return _info(str(path)).type != pafs.FileType.NotFound


def is_dir(path: Location) -> bool:
    """True for a local folder, or a URI that is a bucket or a prefix holding objects (not an object itself)."""
    if not is_uri(path):
        return Path(path).is_dir()
    return _info(str(path)).type == pafs.FileType.Directory


def open_input(path: Location):  # noqa: ANN201 - a binary file: open()'s, or pyarrow's RandomAccessFile
    """A binary file to read `path` from, seekable; for a URI, reads are ranged GETs (read_at, seek + read)."""
    if not is_uri(path):
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    fs, p = resolve(str(path))
    return fs.open_input_file(p)


def list_files(uri: str) -> list[str]:
    """The objects under a URI, as URIs sorted by name: the object itself when it is one, else every object
    under the prefix, recursively, those under a hidden "folder" (.git, .cache) left out, as for local folders.
    FileNotFoundError when there is nothing at all."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such object or prefix")
    base = uri.rstrip("/")
    found = []
    for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(path.rstrip("/")) + 1 :]
        if any(part.startswith(".") for part in rel.split("/")[:-1]):
            continue
        found.append(base + "/" + rel)
    return sorted(found)


def list_names(prefix: str) -> list[str]:
    """Names of the objects directly under a URI prefix (not recursive); [] when there are none."""
    fs, path = resolve(prefix)
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return []
    return [e.base_name for e in entries if e.type == pafs.FileType.File]


def read_bytes(uri: str) -> bytes | None:
    """The whole object, or None when absent."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as fh:
            return bytes(fh.read())
    except FileNotFoundError:
        return None


def put_bytes(path: Location, data: bytes) -> None:
    """Write a small file or object whole: locally through a temporary file renamed into place; to a store in
    one upload, which becomes visible only complete (the bytes are all written before the stream closes)."""
    if not is_uri(path):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return
    fs, p = resolve(str(path))
    with fs.open_output_stream(p) as fh:
        fh.write(data)


def remove(uri: str) -> bool:
    """Delete an object; True if it was there."""
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
        return True
    except FileNotFoundError:
        return False


def remove_matching(prefix: str, wanted: Callable[[str], bool], rmdir: bool = False) -> None:
    """Delete the objects directly under `prefix` whose name `wanted(name)` accepts; with `rmdir`, then the
    prefix's own "folder" marker objects when no object is left under it (a store such as S3 keeps an empty
    marker where a deleted object's folder was)."""
    for name in list_names(prefix):
        if wanted(name):
            remove(prefix.rstrip("/") + "/" + name)
    if rmdir:
        fs, path = resolve(prefix)
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        if (
            not any(e.type == pafs.FileType.File for e in entries)
            and fs.get_file_info(path).type != pafs.FileType.NotFound
        ):
            fs.delete_dir(path)  # markers only: nothing else is left under it


def temp_uri(target: str, folder: str | None = None) -> str:
    """A temporary key in `folder` (default: beside `target`), named as pktnin.atomic names local temporary
    files."""
    head, _, name = target.rstrip("/").rpartition("/")
    return f"{(folder or head).rstrip('/')}/.{name}.{secrets.token_hex(4)}.tmp"


class Upload:
    """An object written as a stream under a temporary key, copied onto `target` by commit(); discard() (or an
    error inside `with`) deletes the temporary object. A killed process completes no upload at all."""

    def __init__(self, target: str, folder: str | None = None) -> None:
        self.target = target
        self.tmp = temp_uri(target, folder)
        self.fs, self.tmp_path = resolve(self.tmp)
        self.stream = self.fs.open_output_stream(self.tmp_path)

    def commit(self) -> None:
        if not self.stream.closed:
            self.stream.close()
        target = resolve(self.target)[1]
        try:
            self.fs.move(self.tmp_path, target)  # S3, GCS: a server-side copy then a delete; HDFS: a rename
        except NotImplementedError:  # pyarrow's ArrowNotImplementedError: Azure without a hierarchical namespace
            self.fs.copy_file(self.tmp_path, target)
            self.fs.delete_file(self.tmp_path)

    def discard(self) -> None:
        try:
            if not self.stream.closed:
                self.stream.close()  # completes the temporary upload: deleted right after
        finally:
            remove(self.tmp)


class StoreDir:
    """The parts prefix of a run on a store: what outdir.HeldDir is for a local parts folder, as far as a store
    can express it (no handle: objects are read back by name; no ownership to check)."""

    def __init__(self, prefix: str) -> None:
        self.path = prefix.rstrip("/")

    def close(self) -> None:
        pass

    def check_unchanged(self) -> None:
        pass  # a prefix cannot be swapped for another "folder"

    def open_private(self, name: str):  # noqa: ANN201 - a pyarrow RandomAccessFile
        """Read object `name` (a plain name or "sub/name") under the prefix; FileNotFoundError when absent,
        ValueError for a name that is not plain (a summary read back names its part: never outside the prefix)."""
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"{self.path}/{name} is not a plain name under the run's prefix")
        return open_input(self.path + "/" + name)

    def staging(self) -> StoreStaging:
        return StoreStaging(self.path)


class StoreStaging:
    """The outputs of a run on a store, uploaded under temporary keys in the run's parts prefix (a killed run
    leaves them there only, where the next run removes them) and copied onto their targets together by
    publish(); an error (leaving the `with`) deletes what is staged, so a failed run publishes nothing."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.staged: list[Upload] = []

    def __enter__(self) -> StoreStaging:
        return self

    def __exit__(self, *_exc: object) -> None:
        for upload in self.staged:
            try:
                upload.discard()
            except OSError:
                pass  # a temporary object left: named .NAME.xxxxxxxx.tmp, removed by the next run
        self.staged = []

    def create(self, target: Location):  # noqa: ANN201 - a pyarrow output stream
        upload = Upload(str(target), self.folder)
        self.staged.append(upload)
        return upload.stream

    def publish(self) -> None:
        for upload in self.staged:  # every stream closed (upload complete) before anything is put in place
            if not upload.stream.closed:
                upload.stream.close()
        while self.staged:
            self.staged[0].commit()
            self.staged.pop(0)
