"""Per-file reports: one FileReport for a file read in several pieces (byte ranges, possibly on several workers)."""

from __future__ import annotations

import re

from pktnin.packets import FileReport

# How kernels.capture words a kind of skipped record in a file's errors (CaptureError text of _warn_reason).
_SKIPPED_KIND = re.compile(
    r"^(?P<head>.*): offset (?P<offset>\d+): (?P<what>.*) \(first of (?P<count>\d+) in this file, skipped\)$"
)


def merge_reports(reports: list[FileReport]) -> FileReport:
    """One FileReport for a file from the summaries of its shards (in shard order), as a walk over the whole
    file would have made it: counts added, each kind of skipped record once (first offset, total count), then
    the fatal error (only the last shard can meet one: the index pass never cuts after it)."""
    merged = reports[0]
    for r in reports[1:]:
        merged.format = merged.format or r.format
        merged.records += r.records
        merged.kept += r.kept
        merged.corrupt_records += r.corrupt_records
        for k, v in r.skip_counts.items():
            merged.skip_counts[k] = merged.skip_counts.get(k, 0) + v
        merged.failed = merged.failed and r.failed
        merged.stopped_early = merged.stopped_early or r.stopped_early
    if len(reports) > 1:
        kinds: dict[str, list] = {}  # what -> [offset, count, head]
        others: list[str] = []
        for r in reports:
            for text in r.errors:
                m = _SKIPPED_KIND.match(text)
                if m is None:
                    others.append(text)
                elif m["what"] in kinds:
                    kinds[m["what"]][1] += int(m["count"])
                else:
                    kinds[m["what"]] = [int(m["offset"]), int(m["count"]), m["head"]]
        firsts = sorted((off, what, count, head) for what, (off, count, head) in kinds.items())
        merged.errors = [
            f"{head}: offset {off}: {what} (first of {count} in this file, skipped)"
            for off, what, count, head in firsts
        ] + others
    return merged
