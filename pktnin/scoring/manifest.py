"""The resume manifest: which input files are finished, under which settings, and which part holds their rows.

Layout beside the output OUT:
    OUT.manifest.json   {"version", "settings", "files": {unit id: the unit's summary}}, rewritten atomically
                        (mode 0600) as units finish
    OUT.parts/          a directory of mode 0700: one Parquet part per unit of work, and under _units/ each unit's
                        summary and flow partials (scoring.unit_run)
    OUT.lock            held (flock) by the running run; see pktnin.outdir for the safety rules
A unit's id hashes its files' stamps (size, mtime_ns, content) and the run's settings, so a unit is reused on
--resume only when the settings are the same and its files unchanged. `content` is a hash of the file's first
and last MiB (the whole file when smaller than 2 MiB): a cheap check that catches content rewritten with its
size and mtime restored, without reading whole captures again. Everything else (units not finished when the
run was killed, changed files) is scored again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Set
from dataclasses import asdict

from pktnin import outdir
from pktnin.kernels.capture import Issue, is_stream
from pktnin.packets import FileReport
from pktnin.storage import (
    Location,
    StoreDir,
    as_path,
    base_name,
    is_uri,
    join,
    open_input,
    resolved,
    size_mtime,
    with_suffix_name,
)

MANIFEST_VERSION = 4
CONTENT_SPAN = 1 << 20  # bytes hashed at each end of an input file
UNITS_DIR = "_units"  # in the parts folder: the units' summaries and flow partials

# Files a unit writes (and their temporaries while written): nothing else in the parts folder is touched.
_UNIT_FILE = re.compile(r"(\.?)([0-9a-f]{24})\.(packets\.parquet|summary\.json|flows\.npz)(\.[A-Za-z0-9_]+\.tmp)?")


def manifest_path(out: Location) -> Location:
    return with_suffix_name(out, ".manifest.json")


def parts_dir(out: Location) -> Location:
    return with_suffix_name(out, ".parts")


def file_key(path: Location) -> str:
    return resolved(path)


def file_stamp(path: str | os.PathLike) -> dict | None:
    """Size, mtime and a hash of the first and last CONTENT_SPAN bytes (content None when unreadable); None for
    a stream (stdin, a pipe, a FIFO): it is never reused, and reading it here would take its data."""
    if is_stream(path):
        return None
    if is_uri(path):  # the same stamp from the object's listing and two ranged reads
        size, mtime_ns = size_mtime(path)
        with open_input(path) as fh:
            h = hashlib.blake2b(digest_size=16)
            h.update(fh.read_at(min(CONTENT_SPAN, size), 0))
            if size > CONTENT_SPAN:
                start = max(CONTENT_SPAN, size - CONTENT_SPAN)
                h.update(fh.read_at(size - start, start))
        return {"size": size, "mtime_ns": mtime_ns, "content": h.hexdigest()}
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            h = hashlib.blake2b(digest_size=16)
            h.update(fh.read(CONTENT_SPAN))
            if st.st_size > CONTENT_SPAN:
                fh.seek(max(CONTENT_SPAN, st.st_size - CONTENT_SPAN))
                h.update(fh.read(CONTENT_SPAN))
            content = h.hexdigest()
    except PermissionError:
        st, content = os.stat(path), None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "content": content}


def report_to_dict(report: FileReport) -> dict:
    d = asdict(report)
    d["path"] = str(report.path)
    d["issues"] = [issue.to_dict() for issue in report.issues]
    return d


def report_from_dict(d: dict) -> FileReport:
    d = dict(d)
    d["path"] = as_path(d["path"])
    d["issues"] = [Issue.from_dict(i) for i in d["issues"]]
    return FileReport(**d)


class Manifest:
    def __init__(self, path: Location, settings: dict, files: dict | None = None) -> None:
        self.path = as_path(path)
        self.settings = settings
        self.files: dict[str, dict] = files or {}
        self.temps: outdir.HeldDir | StoreDir | None = None  # where save() makes its temporary file (the parts folder)
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file at `path`, read or written

    @classmethod
    def load(cls, path: Location) -> Manifest | None:
        """The manifest at `path`, or None when there is none or it cannot be parsed (then nothing is reused).

        Raises outdir.UnsafeOutputError when the name holds a link, someone else's file or one others can write."""
        raw = outdir.read_private(as_path(path))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            return None
        files = data.get("files", {})
        if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
            return None
        manifest = cls(path, data.get("settings", {}), files)
        manifest.identity = outdir.identity(path)
        return manifest

    def save(self) -> None:
        data = {"version": MANIFEST_VERSION, "settings": self.settings, "files": self.files}
        # compact: the C encoder, fast for many files
        self.identity = outdir.write_private(self.path, json.dumps(data, separators=(",", ":")).encode(), self.temps)

    def part_names(self) -> set[str]:
        """Names of the part files the entries list (plain names only: nothing outside the parts folder)."""
        names = {e.get("part") for e in self.files.values()}
        return {n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")}


def own_unit_file(name: str) -> bool:
    """True for names a unit gives its files (and their temporaries)."""
    return _UNIT_FILE.fullmatch(name) is not None


def prune_units(parts: Location, keep: Set[str] = frozenset()) -> None:
    """Remove the unit files of ours no unit in `keep` (ids) refers to, and every temporary of a killed worker;
    with nothing kept, the units folder too when left empty. Nothing else in the folder is touched."""

    def unwanted(name: str) -> bool:
        m = _UNIT_FILE.fullmatch(name)
        return m is not None and (bool(m[1]) or m[2] not in keep)

    outdir.remove_in_dir(parts, unwanted)
    outdir.remove_in_dir(join(parts, UNITS_DIR), unwanted, rmdir=not keep)


def clear_run(out: Location, listed: Set[str] = frozenset(), manifest: Manifest | None = None) -> None:
    """Remove the manifest and parts of a run for `out`: `manifest` if it is still the file read or written (a
    file of that name that is no manifest stays), in the parts folder the files listed (`listed`) and files of
    the units' naming, ours and regular; the folder if left empty."""
    if manifest is not None:
        outdir.remove_if_same(manifest.path, manifest.identity)
    prune_units(parts_dir(out))
    outdir.remove_in_dir(parts_dir(out), lambda n: n in listed or own_unit_file(n), rmdir=True)


def open_run(out: Location, settings: dict, resume: bool, targets: list[Location]) -> tuple[Manifest, set[str]]:
    """Prepare the side files of a run writing `targets` (out first), under its lock: remove the temporary files
    a killed run left in its parts folder, check that nothing is planted, keep the manifest when resuming with the same settings
    (else clear the earlier run), and make the parts folder (0700). Returns the manifest and the part names the
    earlier manifest listed."""
    mpath, parts = manifest_path(out), parts_dir(out)
    trusted = outdir.check_dir(parts)
    if trusted:  # temporary files a killed run left in its private folder (runs make none beside the output)
        temps = [outdir.temp_pattern(base_name(n)) for n in [mpath, *targets]]
        outdir.remove_in_dir(parts, lambda n: any(p.fullmatch(n) for p in temps))
    old = Manifest.load(mpath)
    listed = old.part_names() if old is not None else set()
    if not resume or old is None or old.settings != settings or not trusted:
        clear_run(out, listed, old)
        manifest = Manifest(mpath, settings)
    else:
        manifest = old
    outdir.make_dir(parts)
    return manifest, listed
