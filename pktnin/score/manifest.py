"""The resume manifest: which input files are finished, under which settings, and which part holds their rows.

Layout beside the output OUT:
    OUT.manifest.json   {"version", "settings", "files": {resolved path: entry}}, rewritten atomically each
                        time a part is closed
    OUT.parts/          Parquet parts; one part holds the rows of a run of consecutive input files (and a
                        flow part their flows)
An entry: stamp (size, mtime_ns), part, flows_part (names or null), packets, flows, label_counts, report.
A file is reused on --resume when the settings equal the manifest's, the file is unchanged and every file of
its part is reusable too. Everything else (files not yet in a closed part when the run was killed, changed
files) is scored again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from pktnin.atomic import atomic_path
from pktnin.packets import FileReport

MANIFEST_VERSION = 1


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def file_key(path: Path) -> str:
    return str(Path(path).resolve())


def file_stamp(path: Path) -> dict | None:
    """Size and mtime of a regular file; None for a stream (stdin, a pipe), which is never reused."""
    from pktnin.kernels.capture import is_stream

    if is_stream(path):
        return None
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


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
    def load(cls, path: Path) -> "Manifest | None":
        """The manifest at `path`, or None when there is none or it cannot be read (then nothing is reused)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            return None
        return cls(path, data.get("settings", {}), data.get("files", {}))

    def save(self) -> None:
        data = {"version": MANIFEST_VERSION, "settings": self.settings, "files": self.files}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, separators=(",", ":")))  # compact: the C encoder, fast for many files

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
                and all((parts / n).is_file() for n in names)
            )
            for n in names:
                part_ok[n] = part_ok.get(n, True) and good
            if good:
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


def clear_run(out: Path) -> None:
    """Remove the manifest and parts of an earlier run for `out`."""
    manifest_path(out).unlink(missing_ok=True)
    shutil.rmtree(parts_dir(out), ignore_errors=True)


def prune_parts(parts: Path, keep: set[str]) -> None:
    """Remove files in the parts folder that no reusable entry refers to (e.g. temporaries of a killed run)."""
    if not parts.is_dir():
        return
    for p in parts.iterdir():
        if p.name not in keep:
            p.unlink(missing_ok=True)
