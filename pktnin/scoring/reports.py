"""Per-file reports: one FileReport for a file read in several pieces (byte ranges, possibly on several workers)."""

from __future__ import annotations

from dataclasses import replace

from pktnin.kernels.capture import Issue
from pktnin.packets import FileReport


def merge_reports(reports: list[FileReport]) -> FileReport:
    """One FileReport for a file from the reports of its pieces (in piece order), as a walk over the whole file
    would have made it: counts added, each kind of skipped record once (first offset, counts added by kind),
    then the first fatal error (a walk stops there)."""
    if len(reports) == 1:
        return reports[0]
    merged = replace(reports[0], skip_counts=dict(reports[0].skip_counts))
    for r in reports[1:]:
        merged.format = merged.format or r.format
        merged.records += r.records
        merged.kept += r.kept
        merged.corrupt_records += r.corrupt_records
        for k, v in r.skip_counts.items():
            merged.skip_counts[k] = merged.skip_counts.get(k, 0) + v
        merged.failed = merged.failed and r.failed
    skipped: dict[str, Issue] = {}
    fatal: Issue | None = None
    for r in reports:
        for issue in r.issues:
            if issue.fatal:
                fatal = fatal or issue
            elif issue.kind in skipped:
                skipped[issue.kind] = replace(skipped[issue.kind], count=skipped[issue.kind].count + issue.count)
            else:
                skipped[issue.kind] = issue
    merged.issues = sorted(skipped.values(), key=lambda i: i.offset or 0) + ([fatal] if fatal is not None else [])
    merged.stopped_early = fatal is not None and not merged.failed
    return merged
