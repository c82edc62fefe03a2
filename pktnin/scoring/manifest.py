"""The resume manifest: which input files are finished, under which settings, and which part holds their rows.

Layout beside the output OUT:
    OUT.manifest.json   {"version", "settings", "files": {resolved path: entry}}, rewritten atomically (mode 0600)
                        each time a part is closed
    OUT.parts/          Parquet parts, in a directory of mode 0700; one part holds the rows of a run of consecutive
                        input files (and a flow part their flows)
    OUT.lock            held (flock) by the running run; see pktnin.scoring.outdir for the safety rules
An entry: stamp (size, mtime_ns, content), part, flows_part (names or null), packets, flows, label_counts,
report. `content` is a hash of the file's first and last MiB (the whole file when smaller than 2 MiB): a cheap
check that catches content rewritten with its size and mtime restored, without reading whole captures again.
A file is reused on --resume when the settings equal the manifest's, the file is unchanged and every file of
its part is reusable too. Everything else (files not yet in a closed part when the run was killed, changed
files) is scored again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Set
from dataclasses import asdict
from pathlib import Path

from pktnin.packets import FileReport
from pktnin.scoring import outdir

MANIFEST_VERSION = 2
CONTENT_SPAN = 1 << 20  # bytes hashed at each end of an input file

# Part names the writer gives ("<run id>-<seq>.packets.parquet") and their temporaries while written.
_OWN_PART = re.compile(
    r"[0-9a-f]{8}-[0-9]{6}\.(packets|flows)\.parquet|\.[0-9a-f]{8}-[0-9]{6}\.(packets|flows)\.parquet"
    r"\.[A-Za-z0-9_]{8}\.tmp"
)


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def file_key(path: Path) -> str:
    return str(Path(path).resolve())


def file_stamp(path: Path) -> dict | None:
    """Size, mtime and a hash of the first and last CONTENT_SPAN bytes (content None when unreadable); None for
    a stream (stdin, a pipe, a FIFO): it is never reused, and reading it here would take its data."""
    from pktnin.kernels.capture import is_stream

    if is_stream(path):
        return None
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
    return d


def report_from_dict(d: dict) -> FileReport:
    d = dict(d)
    d["path"] = Path(d["path"])
    return FileReport(**d)


class Manifest:
    def __init__(self, path: Path, settings: dict, files: dict | None = None) -> None:
        self.path = Path(path)
        self.settings = settings
        self.files: dict[str, dict] = files or {}

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        """The manifest at `path`, or None when there is none or it cannot be parsed (then nothing is reused).

        Raises outdir.UnsafeOutputError when the name holds a link, someone else's file or one others can write."""
        raw = outdir.read_private(Path(path))
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
        return cls(path, data.get("settings", {}), files)

    def save(self) -> None:
        data = {"version": MANIFEST_VERSION, "settings": self.settings, "files": self.files}
        # compact: the C encoder, fast for many files
        outdir.write_private(self.path, json.dumps(data, separators=(",", ":")).encode())

    def part_names(self) -> set[str]:
        """Names of the part files the entries list (plain names only: nothing outside the parts folder)."""
        names = {e.get(k) for e in self.files.values() for k in ("part", "flows_part")}
        return {n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")}

    def reusable(self, files: list[Path], parts: Path) -> dict[int, dict]:
        """Entries that can be reused as they are, by index in `files`.

        A file is reusable when it is still asked for, its size and mtime are unchanged and its parts exist.
        A part holds the rows of several files, so it is reused only when every file in it is reusable.
        """
        index_of = {file_key(p): i for i, p in enumerate(files)}
        part_ok: dict[str, bool] = {}
        candidates: dict[int, dict] = {}
        for key, entry in self.files.items():
            i = index_of.get(key)
            names = [n for n in (entry.get("part"), entry.get("flows_part")) if n]
            good = (
                i is not None
                and _same_stamp(files[i], entry.get("stamp"))
                and all(isinstance(n, str) and "/" not in n and outdir.own_file(parts / n) for n in names)
            )
            for n in names:
                part_ok[n] = part_ok.get(n, True) and good
            if good:
                assert i is not None  # good needs a listed file
                candidates[i] = entry
        return {
            i: e for i, e in candidates.items() if all(part_ok[n] for n in (e.get("part"), e.get("flows_part")) if n)
        }

    def record(self, finished: list[tuple[Path, dict]]) -> None:
        """Mark files finished (each entry carries its "stamp") and save at once."""
        for path, entry in finished:
            self.files[file_key(path)] = entry
        self.save()


def _same_stamp(path: Path, stamp) -> bool:
    try:
        return stamp is not None and file_stamp(path) == stamp
    except OSError:
        return False


def own_part_name(name: str) -> bool:
    """True for names the writer gives parts (and their temporaries)."""
    return _OWN_PART.fullmatch(name) is not None


def clear_run(out: Path, listed: Set[str] = frozenset()) -> None:
    """Remove the manifest and parts of an earlier run for `out`: the manifest if it is ours, in the parts folder
    the files it lists (`listed`) and files of the writer's naming, ours and regular; the folder if left empty."""
    outdir.remove_own_file(manifest_path(out))
    outdir.remove_in_dir(parts_dir(out), lambda n: n in listed or own_part_name(n), rmdir=True)


def prune_parts(parts: Path, keep: set[str], listed: Set[str] = frozenset()) -> None:
    """Remove parts no reusable entry refers to: those the old manifest listed and the writer's own temporaries
    and unrecorded parts of a killed run. Nothing else in the folder is touched."""
    outdir.remove_in_dir(parts, lambda n: n not in keep and (n in listed or own_part_name(n)))


def open_run(out: Path, settings: dict, resume: bool, targets: list[Path]) -> tuple[Manifest, set[str]]:
    """Prepare the side files of a run writing `targets` (out first), under its lock: remove our temporary files
    left by a killed run, check that nothing is planted, keep the manifest when resuming with the same settings
    (else clear the earlier run), and make the parts folder (0700). Returns the manifest and the part names the
    earlier manifest listed."""
    mpath, parts = manifest_path(out), parts_dir(out)
    for target in targets:
        names = [target.name] + ([mpath.name] if target == out else [])
        outdir.remove_own_temps(target.parent, names)
    trusted = outdir.check_dir(parts)
    old = Manifest.load(mpath)
    listed = old.part_names() if old is not None else set()
    if not resume or old is None or old.settings != settings or not trusted:
        clear_run(out, listed)
        manifest = Manifest(mpath, settings)
    else:
        manifest = old
    outdir.make_dir(parts)
    return manifest, listed
