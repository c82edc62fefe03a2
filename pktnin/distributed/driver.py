"""The driver side of a sharded scoring run, whatever runs the shards (no Ray import here).

score_sharded(files, opts, classes, execute, ...)
    1. settings (the local run's plus the shard layout), the resume manifest (score.manifest: one format
       for both engines, its entries here keyed by shard id), the parts folder;
    2. shards (distributed.shards, index pass for large files) minus the shards finished before;
    3. execute(todo, parts_dir) -> iterator of shard summaries, in any order; each one is recorded in the
       manifest (saved at most every SAVE_S seconds and at the end: a summary also lies beside its part,
       so a kill in between loses nothing);
    4. the outputs: packet parts concatenated in input order (files, then byte ranges), flows reduced per
       file from the shards' partials, both written atomically; then the parts and manifest are removed
       (with keep_parts the packet parts stay in OUT.parts/ as a Parquet dataset and only flows are written).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pktnin.distributed.shards import (
    DEFAULT_SPLIT_BYTES,
    INDEX_STEP_RECORDS,
    Shard,
    make_shards,
)
from pktnin.distributed.worker import (
    STATE_DIR,
    load_flow_state,
    load_summary,
    merge_reports,
)
from pktnin.score import manifest as mf
from pktnin.score import outdir
from pktnin.score.flows import FlowAccumulator, flow_schema
from pktnin.score.options import ScoreOptions, ScoreResult
from pktnin.score.writers import assemble, packet_schema, write_batches

SAVE_S = 2.0
LAYOUT = "shards-1"  # in the settings: a local run's parts (per file run) are not reused here, nor the reverse

Execute = Callable[[list[Shard], Path], Iterable[dict]]


def run_settings(opts: ScoreOptions, classes: list[str]) -> dict:
    return {**opts.settings(classes), "layout": LAYOUT}


def score_sharded(
    files: list[Path],
    opts: ScoreOptions,
    classes: list[str],
    execute: Execute,
    split_bytes: int = DEFAULT_SPLIT_BYTES,
    progress=None,
    keep_parts: bool = False,
    step_records: int = INDEX_STEP_RECORDS,
) -> ScoreResult:
    """Score `files` by shards run by `execute`; same outputs, manifest and --resume as score.score_files.

    `progress` (optional) has add_packets(n) and file_done(n=1). The side files follow score.outdir's rules
    (one run per output, nothing planted is used or removed)."""
    targets = [opts.out] + ([opts.flows_out] if opts.flows_out is not None else [])
    with outdir.output_lock(targets):
        return _score_locked(files, opts, classes, execute, split_bytes, progress, keep_parts, step_records, targets)


def _score_locked(files, opts, classes, execute, split_bytes, progress, keep_parts, step_records, targets):
    out = opts.out
    settings = run_settings(opts, classes)
    parts = mf.parts_dir(out)
    manifest, _ = mf.open_run(out, settings, opts.resume, targets)
    if not opts.resume:
        _prune(parts, set())  # shard files of an earlier run (open_run removes only the parts it listed)
    outdir.make_dir(parts / STATE_DIR)

    shards = make_shards(files, settings, split_bytes, step_records)
    ids = {s.id for s in shards}
    # Finished shards: recorded in the manifest, or finished by a worker after the manifest's last save.
    finished = {}
    for s in shards:
        summary = load_summary(parts, s.id) if (s.id in manifest.files or opts.resume) else None
        if summary is not None:
            finished[s.id] = summary
    manifest.files = dict(finished)
    manifest.save()
    _prune(parts, ids)
    todo = [s for s in shards if s.id not in finished]
    shards_of_file: dict[int, list[Shard]] = defaultdict(list)
    for s in shards:
        shards_of_file[s.file_index].append(s)
    left = {i: sum(1 for s in group if s.id not in finished) for i, group in shards_of_file.items()}
    resumed = sum(1 for n in left.values() if n == 0)
    if progress is not None and resumed:
        progress.file_done(resumed)

    started = time.perf_counter()
    packets = records = 0
    last_save = time.monotonic()
    for summary in execute(todo, parts):
        finished[summary["id"]] = summary
        manifest.files[summary["id"]] = {k: v for k, v in summary.items() if k != "skipped"}
        if time.monotonic() - last_save >= SAVE_S:
            manifest.save()
            last_save = time.monotonic()
        packets += summary["packets"]
        records += summary["report"]["records"]
        left[summary["file_index"]] -= 1
        if progress is not None:
            progress.add_packets(summary["packets"])
            if left[summary["file_index"]] == 0:
                progress.file_done()
    manifest.save()
    seconds = time.perf_counter() - started
    missing = [s.id for s in shards if s.id not in finished]
    if missing:
        raise RuntimeError(f"{len(missing)} shards did not finish (first: {missing[0]}); rerun with --resume")

    ordered = [finished[s.id] for s in shards]
    schema = packet_schema(classes, opts.probs)
    outputs: list[Path] = []
    rows = sum(s["packets"] for s in ordered)
    metadata = opts.metadata(classes)  # what produced the rows, as in the local engine's outputs
    if not keep_parts:
        rows = assemble([parts / s["part"] for s in ordered if s.get("part")], out, schema, opts.fmt, metadata)
        outputs.append(out)
    else:
        outputs.append(parts)
    n_flows = None
    if opts.flows_out is not None:
        fschema = flow_schema(classes, opts.probs)
        counter = [0]
        n_flows = write_batches(
            _flow_batches(files, shards_of_file, finished, parts, classes, fschema, counter, opts.decide == "flow"),
            opts.flows_out,
            fschema,
            opts.fmt,
            metadata,
        )
        outputs.append(opts.flows_out)
    if not keep_parts:
        _prune(parts, set())
        mf.clear_run(out, manifest.part_names())

    label_counts = np.zeros(len(classes), dtype=np.int64)
    for s in ordered:
        label_counts += np.asarray(s["label_counts"], dtype=np.int64)
    reports = [merge_reports([finished[s.id] for s in shards_of_file[i]]) for i in range(len(files))]
    return ScoreResult(
        files=list(files),
        reports=reports,
        classes=list(classes),
        label_counts=label_counts,
        packets=packets,
        records=records,
        seconds=seconds,
        resumed=resumed,
        rows_written=rows,
        flows_written=n_flows,
        outputs=outputs,
    )


def _flow_batches(
    files, shards_of_file, finished, parts, classes, fschema, counter, by_flow
) -> Iterator[pa.RecordBatch]:
    """Each file's flows, its shards' partials folded in shard order (a flow may span shards)."""
    class_array = pa.array(classes, type=pa.string())
    for i, path in enumerate(files):
        acc = FlowAccumulator(len(classes), by_flow)
        for s in shards_of_file[i]:
            acc.add_partial(load_flow_state(parts, finished[s.id]))
        table = acc.table(str(path), class_array, fschema)
        yield from table.to_batches()


# Files a shard worker writes (and their temporaries while written): nothing else in the folder is touched.
_SHARD_FILE = re.compile(r"(\.?)([0-9a-f]{24})\.(packets\.parquet|summary\.json|flows\.npz)(\.[A-Za-z0-9_]+\.tmp)?")


def _prune(parts: Path, keep: set[str]) -> None:
    """Remove shard files of ours no shard in `keep` (ids) refers to, and every temporary of a killed worker;
    with nothing kept, the state folder too when left empty."""

    def unwanted(name: str) -> bool:
        m = _SHARD_FILE.fullmatch(name)
        return m is not None and (bool(m[1]) or m[2] not in keep)

    outdir.remove_in_dir(parts, unwanted)
    outdir.remove_in_dir(parts / STATE_DIR, unwanted, rmdir=not keep)


def local_execute(runner, opts: ScoreOptions) -> Execute:
    """An `execute` that scores the shards one after another in this process with `runner`."""
    from pktnin.distributed.worker import score_shard

    def execute(todo: list[Shard], parts_dir: Path) -> Iterator[dict]:
        for shard in todo:
            yield score_shard(shard, runner, opts, parts_dir)

    return execute
