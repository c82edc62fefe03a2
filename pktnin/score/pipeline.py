"""score_files: the scoring run, stage by stage, with bounded queues between the stages.

    CPU runner     read+prep thread (cpu_stages.read_stage) -> engine thread (cpu_stages.engine_stage)
    DeviceRunner   raw read thread (gpu_stages.read_raw_stage) -> prep+engine thread (gpu_stages.device_engine_stage)
    then           writer (writer_stage.write_stage, in the calling thread): Parquet parts + the resume manifest

The writer cannot tell the two paths apart. When every file is finished, the parts are streamed into the final
output(s), written atomically, and the parts and the manifest removed. Stages, messages and error handling:
score.stages.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pktnin.engine.protocols import DeviceRunner, ModelRunner
from pktnin.packets import FileReport, PacketBatch, iter_packets
from pktnin.score import manifest as mf
from pktnin.score import outdir
from pktnin.score.cpu_stages import read_stage
from pktnin.score.flow_stage import check_device_decide, start_engine
from pktnin.score.options import ScoreOptions, ScoreResult
from pktnin.score.outputs import check_outputs
from pktnin.score.stages import Stages
from pktnin.score.writer_stage import ScoreWriter, write_stage
from pktnin.score.writers import assemble

READ_QUEUE = 4  # chunks waiting for the engine
SCORED_QUEUE = 16  # scored pieces waiting for the writer


def score_files(
    files: list[Path],
    runner: ModelRunner | DeviceRunner,
    opts: ScoreOptions,
    progress=None,
    source: Callable[..., Iterator[PacketBatch]] = iter_packets,
    on_saved: Callable[[list[FileReport]], None] | None = None,
    named: set[Path] | None = None,
) -> ScoreResult:
    """Score `files` (already expanded) with `runner`; write the outputs named in `opts`.

    With a DeviceRunner (TensorRT), packets are prepared on the GPU straight into the engine's input
    (score.gpu_stages) and `source` is not used; otherwise on the CPU.
    `progress` (optional) has add_packets(n) and file_done(); `source` stands in for packets.iter_packets;
    `on_saved` is called with the reports of the files of each part once the part and the manifest are saved.
    `named`: the files the user named (packets.iter_raw_batches: others that are not captures are no failure).
    The outputs are checked first (score.outputs.check_outputs: OutputError). When not one input could be
    read, no output is written.
    One run per output at a time: a second one raises outdir.OutputBusyError; side files planted by someone else
    raise outdir.UnsafeOutputError (see score.outdir).
    """
    targets = [opts.out] + ([opts.flows_out] if opts.flows_out is not None else [])
    with outdir.output_lock(targets):
        return _score_locked(files, runner, opts, progress, source, on_saved, targets, named)


def _score_locked(files, runner, opts, progress, source, on_saved, targets, named) -> ScoreResult:
    out = opts.out
    classes = list(runner.classes)
    settings = opts.settings(classes)
    parts = mf.parts_dir(out)
    check_outputs(opts, settings)  # before anything is touched: refuse rather than lose earlier work
    manifest, listed = mf.open_run(out, settings, opts.resume, targets)

    # Files finished by an earlier run are reused; the rest are scored now.
    entries = manifest.reusable(files, parts)
    todo = [(i, p) for i, p in enumerate(files) if i not in entries]
    stamps = {i: mf.file_stamp(p) for i, p in todo}  # taken before reading: a file changed meanwhile is redone
    next_todo = {i: (todo[k + 1][0] if k + 1 < len(todo) else None) for k, (i, _) in enumerate(todo)}
    manifest.files = {mf.file_key(files[i]): e for i, e in entries.items()}
    manifest.save()
    mf.prune_parts(parts, {e[k] for e in entries.values() for k in ("part", "flows_part") if e.get(k)}, listed)
    if progress is not None and entries:
        progress.file_done(len(entries))

    writer = ScoreWriter(opts, classes, manifest, parts, stamps, next_todo, progress, on_saved)
    stages = Stages()
    read_q: queue.Queue = queue.Queue(maxsize=READ_QUEUE)
    scored_q: queue.Queue = queue.Queue(maxsize=SCORED_QUEUE)
    started = time.perf_counter()
    try:
        if isinstance(runner, DeviceRunner):
            check_device_decide(opts)
            # GPU: raw records go to the device; the CUDA prep kernel writes the engine's input.
            from pktnin.score import gpu_stages

            batch = gpu_stages.device_batch_size(runner, opts.batch)
            stages.thread("pktnin-read", gpu_stages.read_raw_stage, stages, todo, read_q, batch, None, named,
                          progress)  # fmt: skip
            stages.thread("pktnin-engine", gpu_stages.device_engine_stage, stages, runner, batch, opts.mask,
                          opts.keep_dns, read_q, scored_q)  # fmt: skip
        else:
            stages.thread("pktnin-read", read_stage, stages, todo, read_q, opts.mask, opts.keep_dns,
                          opts.prep_threads, source, named, progress)  # fmt: skip
            start_engine(stages, runner, opts, read_q, scored_q)
        stages.run(write_stage, stages, writer, scored_q)
    finally:
        stages.finish()
        writer.abort()
    stages.raise_error()
    seconds = time.perf_counter() - started

    # Every file is finished: assemble the outputs in input order, then drop the parts and the manifest.
    ordered = [manifest.files[mf.file_key(p)] for p in files]
    reports = [mf.report_from_dict(e["report"]) for e in ordered]
    outputs: list[Path] = []
    rows, n_flows = 0, None
    if any(not (r.failed or r.not_capture) for r in reports):  # a run that read nothing writes nothing
        metadata = opts.metadata(classes)
        rows = assemble(unique_parts(ordered, "part", parts), out, writer.schema, opts.fmt, metadata)
        outputs.append(out)
        if writer.fschema is not None:
            n_flows = assemble(unique_parts(ordered, "flows_part", parts), opts.flows_out, writer.fschema, opts.fmt,
                               metadata)  # fmt: skip
            outputs.append(opts.flows_out)
    mf.clear_run(out, manifest.part_names())

    label_counts = np.zeros(len(classes), dtype=np.int64)
    for e in ordered:
        label_counts += np.asarray(e["label_counts"], dtype=np.int64)
    return ScoreResult(
        files=list(files),
        reports=reports,
        classes=classes,
        label_counts=label_counts,
        packets=writer.packets,
        records=writer.records,
        seconds=seconds,
        resumed=len(entries),
        rows_written=rows,
        flows_written=n_flows,
        outputs=outputs,
    )


def unique_parts(entries: list[dict], key: str, parts: Path) -> list[Path]:
    """Part files in the order their first file appears (a part holds several consecutive files)."""
    names = dict.fromkeys(e[key] for e in entries if e.get(key))
    return [parts / n for n in names]
