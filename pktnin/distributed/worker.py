"""score_shard: one shard through the scoring stages (read+prep, engine, writer) into one Parquet part.

Layout of the parts folder (pyarrow reads it as a Parquet dataset: it skips names starting with "_"):
    {id}.packets.parquet        the shard's packet rows (absent when the shard kept none)
    _shards/{id}.flows.npz      per-flow partial sums (with --flows), reduced per file on the driver
    _shards/{id}.summary.json   what the shard did; written last, so its presence means the shard is finished

Every file is written under a temporary name and renamed into place, so a worker killed mid-shard leaves no
half file, and a retry (or a resumed run) of a finished shard returns the saved summary without scoring again.
The summary is small (counts, the shard's FileReport, part names): rows never leave the worker but through the
parts folder, which every worker and the driver share.
"""

from __future__ import annotations

import functools
import json
import queue
import re
import time
from pathlib import Path

import numpy as np

from pktnin.atomic import atomic_path
from pktnin.distributed.shards import Shard
from pktnin.engine.protocols import DeviceRunner, ModelRunner
from pktnin.packets import FileReport, iter_packets
from pktnin.score import manifest as mf
from pktnin.score.cpu_stages import read_stage
from pktnin.score.flow_stage import check_device_decide, start_engine
from pktnin.score.flows import FlowAccumulator
from pktnin.score.options import ScoreOptions
from pktnin.score.stages import DONE, Scored, Stages
from pktnin.score.writer_stage import Part, ScoredBuffer
from pktnin.score.writers import packet_batch, packet_schema

STATE_DIR = "_shards"


def summary_path(parts_dir: Path, shard_id: str) -> Path:
    return Path(parts_dir) / STATE_DIR / f"{shard_id}.summary.json"


def flow_state_path(parts_dir: Path, shard_id: str) -> Path:
    return Path(parts_dir) / STATE_DIR / f"{shard_id}.flows.npz"


def load_summary(parts_dir: Path, shard_id: str) -> dict | None:
    """The saved summary of a finished shard whose part files all exist, else None."""
    try:
        summary = json.loads(summary_path(parts_dir, shard_id).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("id") != shard_id:
        return None
    names = [summary.get("part")] + ([STATE_DIR + "/" + summary["flow_state"]] if summary.get("flow_state") else [])
    if not all((Path(parts_dir) / n).is_file() for n in names if n):
        return None
    return summary


def load_flow_state(parts_dir: Path, summary: dict) -> dict[str, np.ndarray]:
    if not summary.get("flow_state"):
        return {}
    with np.load(Path(parts_dir) / STATE_DIR / summary["flow_state"]) as data:
        return {k: data[k] for k in data.files}


class ShardWriter:
    """Scored pieces of one shard -> its packet part, label counts and (with flows) the per-flow partial."""

    def __init__(self, shard: Shard, opts: ScoreOptions, classes: list[str], parts_dir: Path) -> None:
        import pyarrow as pa

        self.shard, self.parts_dir = shard, Path(parts_dir)
        self.classes = pa.array(classes, type=pa.string())
        self.n_classes = len(classes)
        self.part = Part(self.parts_dir, shard.id, packet_schema(classes, opts.probs), None)
        self.flows = FlowAccumulator(self.n_classes, opts.decide == "flow") if opts.flows_out is not None else None
        self.label_counts = np.zeros(self.n_classes, dtype=np.int64)
        self.report: FileReport | None = None
        self.waiting = ScoredBuffer()

    def scored(self, item: Scored) -> None:
        if self.waiting.add(item):
            self._write_waiting()

    def _write_waiting(self) -> None:
        gathered = self.waiting.take()
        if gathered is None:
            return
        name, meta, probs = gathered
        batch, idx = packet_batch(name, meta, probs, self.classes, self.part.schema)
        self.part.write_packets(batch)
        self.label_counts += np.bincount(idx, minlength=self.n_classes)
        if self.flows is not None:
            self.flows.add(meta, probs)

    def finish(self, seconds: float, cpu_seconds: float) -> dict:
        """Close the part and the flow partial, then save and return the summary."""
        self._write_waiting()
        self.part.close()
        rows = self.part.rows
        flow_state = None
        if self.flows is not None and self.flows.flows:
            flow_state = flow_state_path(self.parts_dir, self.shard.id)
            flow_state.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(flow_state) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **self.flows.state())  # type: ignore[arg-type]  # numpy stub reads names as allow_pickle
        assert self.report is not None, "a shard is finished only after its FileEnd"
        summary = {
            "id": self.shard.id,
            "file_index": self.shard.file_index,
            "shard": self.shard.part,
            "shards": self.shard.parts,
            "stamp": self.shard.stamp,
            "part": self.part.packet_name if rows else None,
            "flow_state": flow_state.name if flow_state is not None else None,
            "packets": rows,
            "label_counts": self.label_counts.tolist(),
            "report": mf.report_to_dict(self.report),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
        }
        target = summary_path(self.parts_dir, self.shard.id)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(summary))
        return summary

    def abort(self) -> None:
        self.part.abort()


def _write_stage(stages: Stages, writer: ShardWriter, in_q: queue.Queue) -> None:
    while True:
        item = stages.get(in_q)
        if item is DONE:
            return
        if isinstance(item, Scored):
            writer.scored(item)
        else:
            writer.report = item.report


def score_shard(shard: Shard, runner: ModelRunner | DeviceRunner, options: ScoreOptions, parts_dir: Path) -> dict:
    """Score one shard with `runner` into parts_dir; returns its summary (saved beside the part).

    A shard whose summary and part already exist is not scored again: its summary comes back with
    "skipped": True. The file's report in the summary covers this shard's records only (see merge_reports).
    """
    parts_dir = Path(parts_dir)
    done = load_summary(parts_dir, shard.id)
    if done is not None:
        return {**done, "skipped": True}
    _check_stamp(shard)
    started, cpu_started = time.perf_counter(), time.process_time()
    writer = ShardWriter(shard, options, list(runner.classes), parts_dir)
    todo = [(shard.file_index, Path(shard.path))]
    reader_kwargs = shard.reader_kwargs()
    stages = Stages()
    read_q: queue.Queue = queue.Queue(maxsize=4)
    scored_q: queue.Queue = queue.Queue(maxsize=16)
    try:
        if isinstance(runner, DeviceRunner):
            from pktnin.score import gpu_stages

            check_device_decide(options)

            batch = gpu_stages.device_batch_size(runner, options.batch)
            stages.thread("pktnin-read", gpu_stages.read_raw_stage, stages, todo, read_q, batch, reader_kwargs)
            stages.thread("pktnin-engine", gpu_stages.device_engine_stage, stages, runner, batch, options.mask,
                          options.keep_dns, read_q, scored_q)  # fmt: skip
        else:
            source = functools.partial(iter_packets, reader_kwargs=reader_kwargs)
            stages.thread("pktnin-read", read_stage, stages, todo, read_q, options.mask, options.keep_dns,
                          options.prep_threads, source)  # fmt: skip
            start_engine(stages, runner, options, read_q, scored_q, unit=shard.part)
        stages.run(_write_stage, stages, writer, scored_q)
        stages.finish()
        stages.raise_error()
        _check_stamp(shard)  # a file rewritten meanwhile would mix two versions in one output
        summary = writer.finish(time.perf_counter() - started, time.process_time() - cpu_started)
    except BaseException:
        stages.finish()
        writer.abort()
        raise
    return {**summary, "skipped": False}


class ShardChanged(RuntimeError):
    """The shard's file is not the one the shards were cut from."""


def _check_stamp(shard: Shard) -> None:
    from pktnin.distributed.shards import file_stamp

    try:
        stamp = file_stamp(shard.path)
    except OSError:
        return  # unreadable: the read stage reports it as a failed file
    if stamp != shard.stamp:
        raise ShardChanged(f"{shard.path}: changed since the run started (size or mtime); rerun to score it again")


# How kernels.capture words a kind of skipped record in a file's errors (CaptureError text of _warn_reason).
_SKIPPED_KIND = re.compile(
    r"^(?P<head>.*): offset (?P<offset>\d+): (?P<what>.*) \(first of (?P<count>\d+) in this file, skipped\)$"
)


def merge_reports(summaries: list[dict]) -> FileReport:
    """One FileReport for a file from the summaries of its shards (in shard order), as a walk over the whole
    file would have made it: counts added, each kind of skipped record once (first offset, total count), then
    the fatal error (only the last shard can meet one: the index pass never cuts after it)."""
    reports = [mf.report_from_dict(s["report"]) for s in summaries]
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
