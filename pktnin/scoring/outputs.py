"""Checks on a scoring run's outputs before any work starts, and the per-file report.

A run refuses up front, with what to do instead, rather than fail after scoring everything or lose work:
- an output path that is a folder, or whose suffix names the other format;
- an existing output (unless `force`);
- an earlier run's finished files in OUT.manifest.json that this run would throw away: a run without `resume`,
  or `resume` with other settings (unless `force`; the message lists the settings that differ).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from pktnin import outdir
from pktnin.atomic import atomic_path
from pktnin.errors import UsageError
from pktnin.names import name_text
from pktnin.packets import FileReport
from pktnin.scoring import manifest as mf
from pktnin.scoring.options import ScoreOptions
from pktnin.scoring.writers import FORMATS
from pktnin.storage import Location, as_path, is_dir, is_uri, put_bytes

REPORT_FORMATS = (".json", ".csv")


class OutputError(UsageError):
    """An output cannot be written as asked, or writing it would discard earlier results."""


def check_outputs(opts: ScoreOptions, settings: dict, files: list[Location] | None = None) -> None:
    """Raise OutputError when the outputs of `opts` cannot or must not be written (`files`: the inputs, whose
    spelling a resumed run must keep)."""
    continuing = check_progress(opts, settings, files)
    targets = [("--out", opts.out)] + ([("--flows", opts.flows_out)] if opts.flows_out is not None else [])
    for option, target in targets:
        if is_dir(target):
            example = f"{str(target).rstrip('/')}/predictions.{opts.fmt}"
            raise OutputError(f"{option} {target} is a folder: name a file, e.g. {example}")
        suffix = Path(str(target)).suffix.lower().lstrip(".")
        if suffix in FORMATS and suffix != opts.fmt:
            raise OutputError(f"{option} {target} ends in .{suffix} but the format is {opts.fmt}: change one of them")
        if is_uri(target):
            outdir.check_target(option, target, opts.force or continuing)
            continue
        target = Path(target)
        if target.parent.exists() and not target.parent.is_dir():
            raise OutputError(f"{option} {target}: {target.parent} is not a folder")
        outdir.check_target(option, target, opts.force or continuing)
    if opts.report is not None:
        if Path(str(opts.report)).suffix.lower() not in REPORT_FORMATS:
            raise OutputError(f"--report {opts.report}: the report is .json or .csv")
        if is_dir(opts.report):
            raise OutputError(f"--report {opts.report} is a folder: name a file")
        outdir.check_target("--report", opts.report, opts.force or continuing)


def check_progress(opts: ScoreOptions, settings: dict, files: list[Location] | None = None) -> bool:
    """Refuse to start over an earlier run's finished files unless asked to continue them or `force`, and to
    continue them with an input spelled otherwise (the file column would mix both spellings).
    True when this run continues an earlier one (whose outputs it was started to replace)."""
    if opts.force:
        return False
    earlier = mf.Manifest.load(mf.manifest_path(opts.out))
    if earlier is None or not earlier.files:
        return False
    n_files = sum(len(e.get("files", [])) for e in earlier.files.values())
    done = f"{mf.manifest_path(opts.out)} holds {n_files} finished files of an earlier run"
    if not opts.resume:
        raise OutputError(f"{done}: rerun with --resume to continue it, or --force to discard it")
    if earlier.settings != settings:
        raise OutputError(
            f"{done} with other settings ({settings_diff(earlier.settings, settings)}): rerun with the earlier "
            "settings to continue, or --force to discard its files and start over"
        )
    changed = spelling_changes(files or [], earlier.files)
    if changed:
        old, new = changed[0]
        raise OutputError(
            f"{done}, which named {old!r} as {new!r} is named now: the file column keeps one spelling per run; "
            "name the inputs as the earlier run did to continue, or --force to start over"
        )
    return True


def spelling_changes(files: list[Location], entries: dict[str, dict]) -> list[tuple[str, str]]:
    """(earlier spelling, spelling now) of each input that an earlier run's unit summaries named otherwise."""
    now = {mf.file_key(f): str(f) for f in files}
    changes = []
    for entry in entries.values():
        pieces = entry.get("files")
        for piece in pieces if isinstance(pieces, list) else []:
            report = piece.get("report") if isinstance(piece, dict) else None
            old = report.get("path") if isinstance(report, dict) else None
            if isinstance(old, str) and now.get(mf.file_key(as_path(old)), old) != old:
                changes.append((old, now[mf.file_key(as_path(old))]))
    return changes


def settings_diff(old: dict, new: dict) -> str:
    """`name: old -> new` for each setting that differs."""
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys)


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------------------------------------
# The per-file report (--report)

REPORT_COLUMNS = (
    "file", "status", "format", "compression", "records", "rows", "corrupt_records", "error", "error_offset", "skips"
)  # fmt: skip


def report_rows(reports: Iterable[FileReport]) -> list[dict]:
    """One JSON-ready row per input file: status (ok, partial, failed, not a capture), the first error and its
    offset, records read, rows scored, corrupt records skipped, packets skipped per reason."""
    rows = []
    for r in reports:
        fatal = r.fatal if (r.failed or r.stopped_early) else None
        rows.append({
            "file": str(r.path),
            "status": r.status,
            "format": r.format,
            "compression": r.compression,
            "records": r.records,
            "rows": r.kept,
            "corrupt_records": r.corrupt_records,
            "error": fatal.line(r.path) if fatal is not None else ("; ".join(r.errors) or None),
            "error_offset": r.error_offset,
            "skips": dict(r.skip_counts),
        })  # fmt: skip
    return rows


def write_report(reports: Iterable[FileReport], path: str | Location) -> None:
    """The per-file report as JSON (a list of rows) or CSV (skips as one JSON column), written atomically (to a
    store: in one upload)."""
    rows = report_rows(reports)
    if Path(str(path)).suffix.lower() == ".csv":
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        for row in rows:  # UTF-8 text: a name's stray bytes as \xNN (the JSON report keeps them exact)
            text = {k: name_text(v) if isinstance(v, str) else v for k, v in row.items()}
            writer.writerow({**text, "skips": json.dumps(row["skips"], sort_keys=True)})
        data = buf.getvalue()
    else:
        data = json.dumps(rows, indent=1) + "\n"
    if is_uri(path):
        put_bytes(path, data.encode())
        return
    with atomic_path(Path(path), replace=outdir.replace_own) as tmp:
        tmp.write_text(data)
