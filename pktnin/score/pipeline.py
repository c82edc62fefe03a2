"""The scoring pipeline: read+prep thread -> engine thread -> writer (calling thread), bounded queues between.

With a TensorRT runner, read and prep are split differently (raw records to the GPU, the CUDA kernel writing
the engine's input): see pktnin.score.gpu_stage. Everything after the engine is shared.

read+prep   packets.iter_packets, one file at a time (numba kernels release the GIL): PacketBatch chunks,
            then a FileEnd marker carrying the file's report.
engine      copies rows into a fixed [batch, 1500] input buffer across file boundaries, runs the model when
            it is full (or at the end), and hands each piece back with its probabilities, in order.
writer      per-packet Arrow batches into the file's Parquet part, per-flow aggregation, and at each FileEnd
            the part is renamed into place and the manifest updated (so a killed run can resume).
At the end the parts are streamed into the final output(s), written atomically, and the parts removed.

An exception in any stage sets a shared stop flag; every queue wait polls it, so no stage blocks forever and
the first error is raised to the caller.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import pyarrow as pa

from pktnin.layout import ROW_LEN
from pktnin.packets import FileReport, PacketBatch, iter_packets, mask_code
from pktnin.score import manifest as mf
from pktnin.score import outdir
from pktnin.score.flows import FlowAccumulator, flow_schema
from pktnin.score.writers import FORMATS, PartWriter, assemble, packet_batch, packet_schema

READ_CHUNK = 8192  # records per read+prep chunk: ~12 MB of rows
READ_QUEUE = 4  # chunks waiting for the engine
SCORED_QUEUE = 16  # scored pieces waiting for the writer
WRITE_ROWS = 16384  # scored rows gathered before they become one Arrow batch
POLL_S = 0.1


class ModelRunner(Protocol):
    classes: list[str]

    def infer(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray: ...


@dataclass
class ScoreOptions:
    out: Path
    flows_out: Path | None = None
    fmt: str = "parquet"
    probs: bool = False
    resume: bool = False
    keep_dns: bool = False
    mask: str = "paper"
    batch: int = 256
    # numba threads for read+prep. One by default: on the CPU the engine is the bottleneck and needs the cores,
    # and idle OpenMP workers spin, starving the engine and the writer. None: numba's default (all cores).
    prep_threads: int | None = 1
    model_id: str = ""  # identifies the model's content (hash), for the manifest
    # A part (and the manifest) is saved when it holds this many rows or is this old at the end of a file:
    # a kill loses at most that much work, and many small files do not cost a rename each.
    part_rows: int = 262144
    part_seconds: float = 10.0

    def settings(self, classes: list[str]) -> dict:
        """What makes two runs' parts interchangeable."""
        return {
            "model": self.model_id,
            "classes": list(classes),
            "mask": self.mask,
            "keep_dns": self.keep_dns,
            "format": self.fmt,
            "probs": self.probs,
            "flows": self.flows_out is not None,
        }


@dataclass
class ScoreResult:
    files: list[Path]
    reports: list[FileReport]
    classes: list[str]
    label_counts: np.ndarray  # packets per class, all files (resumed ones included)
    packets: int  # packets scored in this run
    records: int  # packet records read in this run
    seconds: float  # wall time of this run's scoring (not counting the final assembly)
    resumed: int  # files taken from an earlier run
    rows_written: int
    flows_written: int | None
    outputs: list[Path] = field(default_factory=list)

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0


# -- messages between stages -------------------------------------------------------------------------------
@dataclass
class FileEnd:
    report: FileReport


@dataclass
class Scored:
    file_index: int
    path: Path
    meta: dict[str, np.ndarray]
    probs: np.ndarray  # float32 [n, C], owned by this message


_DONE = object()


class _Stopped(Exception):
    """Raised inside a stage when another stage failed."""


class _Stages:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
        self.stop.set()

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                pass

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                pass

    def thread(self, name: str, target: Callable, *args) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self.fail(exc)

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t


# -- stages ------------------------------------------------------------------------------------------------
def read_stage(
    stages: _Stages,
    todo: list[tuple[int, Path]],
    out_q: queue.Queue,
    mask: str,
    keep_dns: bool,
    threads: int | None,
    source: Callable[..., Iterator[PacketBatch]] = iter_packets,
) -> None:
    if threads:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # per thread in numba
    for index, path in todo:
        reports: list[FileReport] = []
        for batch in source([path], mask=mask, keep_dns=keep_dns, reports=reports, max_records=READ_CHUNK,
                            first_index=index):
            stages.put(out_q, batch)
        stages.put(out_q, FileEnd(reports[0]))
    stages.put(out_q, _DONE)


def engine_stage(stages: _Stages, runner: ModelRunner, batch_size: int, in_q: queue.Queue, out_q: queue.Queue) -> None:
    n_classes = len(runner.classes)
    # Runners take uint8 rows whatever their model's input; a float32 model is normalized inside the runner.
    inbuf = np.empty((batch_size, ROW_LEN), dtype=np.uint8)
    outbuf = np.empty((batch_size, n_classes), dtype=np.float32)
    fill = 0
    # In arrival order: (start, n, batch, lo) for rows waiting in inbuf, or FileEnd markers behind them.
    pending: list = []

    def run_model() -> None:
        nonlocal fill
        if fill:
            runner.infer(inbuf[:fill], outbuf)
        for item in pending:
            if isinstance(item, FileEnd):
                stages.put(out_q, item)
            else:
                start, n, batch, lo = item
                meta = {k: v[lo : lo + n] for k, v in batch.meta.items()}
                stages.put(out_q, Scored(batch.file_index, batch.path, meta, outbuf[start : start + n].copy()))
        pending.clear()
        fill = 0

    while True:
        item = stages.get(in_q)
        if item is _DONE:
            run_model()
            stages.put(out_q, _DONE)
            return
        if isinstance(item, FileEnd):
            if pending:
                pending.append(item)
            else:
                stages.put(out_q, item)
            continue
        batch: PacketBatch = item
        lo = 0
        while lo < len(batch):
            n = min(batch_size - fill, len(batch) - lo)
            inbuf[fill : fill + n] = batch.rows[lo : lo + n]
            pending.append((fill, n, batch, lo))
            fill += n
            lo += n
            if fill == batch_size:
                run_model()


# -- the writer side ---------------------------------------------------------------------------------------
class _Part:
    """The open part: packet rows (and flows) of a run of consecutive input files, renamed into place by close()."""

    def __init__(self, parts: Path, name: str, schema: pa.Schema, fschema: pa.Schema | None) -> None:
        self.packet_name = f"{name}.packets.parquet"
        self.flow_name = f"{name}.flows.parquet"
        self.parts = parts
        self.schema, self.fschema = schema, fschema
        self.packets: PartWriter | None = None
        self.flows: PartWriter | None = None
        self.finished: list[tuple[Path, dict]] = []  # (input file, manifest entry) of the files in this part
        self.opened = time.monotonic()

    @property
    def rows(self) -> int:
        return 0 if self.packets is None else self.packets.rows

    def write_packets(self, batch: pa.RecordBatch) -> None:
        if self.packets is None:
            self.packets = PartWriter(self.parts / self.packet_name, self.schema)
        self.packets.write(batch)

    def write_flows(self, table: pa.Table) -> None:
        if self.flows is None:
            self.flows = PartWriter(self.parts / self.flow_name, self.fschema)
        self.flows.write(table)

    def close(self) -> list[tuple[Path, dict]]:
        for writer in (self.packets, self.flows):
            if writer is not None:
                writer.close()
        return self.finished

    def abort(self) -> None:
        for writer in (self.packets, self.flows):
            if writer is not None:
                writer.abort()


class _Writer:
    """Consumes scored pieces and FileEnd markers in order; closes parts and records them in the manifest."""

    def __init__(self, opts: ScoreOptions, classes: list[str], manifest: mf.Manifest, parts: Path,
                 stamps: dict[int, dict], next_todo: dict[int, int | None], progress, on_saved) -> None:
        self.opts = opts
        self.classes = pa.array(classes, type=pa.string())
        self.n_classes = len(classes)
        self.schema = packet_schema(classes, opts.probs)
        self.fschema = flow_schema(classes, opts.probs) if opts.flows_out is not None else None
        self.manifest, self.parts = manifest, parts
        self.stamps, self.next_todo = stamps, next_todo
        self.progress, self.on_saved = progress, on_saved
        self.run_id = secrets.token_hex(4)  # part names never collide with the reused parts of earlier runs
        self.part_seq = 0
        self.part: _Part | None = None
        self.file_rows = 0
        self.file_counts = np.zeros(self.n_classes, dtype=np.int64)
        self.file_flows: FlowAccumulator | None = None
        self.waiting: list[Scored] = []  # scored pieces of the current file not yet written
        self.waiting_rows = 0
        self.packets = 0
        self.records = 0

    def _open_part(self) -> _Part:
        if self.part is None:
            self.part_seq += 1
            self.part = _Part(self.parts, f"{self.run_id}-{self.part_seq:06d}", self.schema, self.fschema)
        return self.part

    def scored(self, item: Scored) -> None:
        # Pieces are at most one engine batch; gathering them makes the Arrow work per call worth its overhead.
        self.waiting.append(item)
        self.waiting_rows += len(item.probs)
        if self.waiting_rows >= WRITE_ROWS:
            self._write_waiting()

    def _write_waiting(self) -> None:
        if not self.waiting:
            return
        items, self.waiting, self.waiting_rows = self.waiting, [], 0
        meta = {k: np.concatenate([it.meta[k] for it in items]) for k in items[0].meta}
        probs = np.concatenate([it.probs for it in items])
        batch, idx = packet_batch(str(items[0].path), meta, probs, self.classes, self.schema)
        self._open_part().write_packets(batch)
        self.file_rows += len(idx)
        self.file_counts += np.bincount(idx, minlength=self.n_classes)
        if self.fschema is not None:
            if self.file_flows is None:
                self.file_flows = FlowAccumulator(self.n_classes)
            self.file_flows.add(meta, probs)
        self.packets += len(idx)
        if self.progress is not None:
            self.progress.add_packets(len(idx))

    def file_end(self, report: FileReport) -> None:
        self._write_waiting()
        part = self._open_part()
        n_flows = 0
        if self.file_flows is not None:
            table = self.file_flows.table(str(report.path), self.classes, self.fschema)
            part.write_flows(table)
            n_flows = table.num_rows
        entry = {
            "stamp": self.stamps[report.index],
            "part": part.packet_name if self.file_rows else None,
            "flows_part": part.flow_name if n_flows else None,
            "packets": self.file_rows,
            "flows": n_flows,
            "label_counts": self.file_counts.tolist(),
            "report": mf.report_to_dict(report),
        }
        part.finished.append((report.path, entry))
        self.file_rows, self.file_flows = 0, None
        self.file_counts = np.zeros(self.n_classes, dtype=np.int64)
        self.records += report.records
        if self.progress is not None:
            self.progress.file_done()
        # A part covers consecutive input files only, so the final output keeps the input order.
        following = self.next_todo[report.index]
        if (
            following != report.index + 1
            or part.rows >= self.opts.part_rows
            or time.monotonic() - part.opened >= self.opts.part_seconds
        ):
            self.close_part()

    def close_part(self) -> None:
        if self.part is None:
            return
        part, self.part = self.part, None
        finished = part.close()
        self.manifest.record(finished)
        if self.on_saved is not None:
            self.on_saved([mf.report_from_dict(e["report"]) for _, e in finished])

    def abort(self) -> None:
        if self.part is not None:
            self.part.abort()
            self.part = None


def is_device_runner(runner) -> bool:
    """True for runners whose prep can write straight into their device input (TensorRTRunner)."""
    return callable(getattr(runner, "device_input", None))


def score_files(
    files: list[Path],
    runner: ModelRunner,
    opts: ScoreOptions,
    progress=None,
    source: Callable[..., Iterator[PacketBatch]] = iter_packets,
    on_saved: Callable[[list[FileReport]], None] | None = None,
) -> ScoreResult:
    """Score `files` (already expanded) with `runner`; write the outputs named in `opts`.

    With a runner that has device_input() (TensorRT), packets are prepared on the GPU straight into the
    engine's input (pktnin.score.gpu_stage) and `source` is not used; otherwise on the CPU.
    `progress` (optional) has add_packets(n) and file_done(); `source` stands in for packets.iter_packets;
    `on_saved` is called with the reports of the files of each part once the part and the manifest are saved.
    One run per output at a time: a second one raises outdir.OutputBusyError; side files planted by someone else
    raise outdir.UnsafeOutputError (see pktnin.score.outdir).
    """
    targets = [Path(opts.out)] + ([Path(opts.flows_out)] if opts.flows_out is not None else [])
    with outdir.output_lock(targets):
        return _score_locked(files, runner, opts, progress, source, on_saved, targets)


def _score_locked(files, runner, opts, progress, source, on_saved, targets) -> ScoreResult:
    if opts.fmt not in FORMATS:
        raise ValueError(f"unknown output format {opts.fmt!r}; choose from {', '.join(FORMATS)}")
    if opts.batch < 1:
        raise ValueError(f"batch must be at least 1, got {opts.batch}")
    mask_code(opts.mask)
    out = Path(opts.out)
    classes = list(runner.classes)
    settings = opts.settings(classes)
    parts = mf.parts_dir(out)

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

    writer = _Writer(opts, classes, manifest, parts, stamps, next_todo, progress, on_saved)
    stages = _Stages()
    read_q: queue.Queue = queue.Queue(maxsize=READ_QUEUE)
    scored_q: queue.Queue = queue.Queue(maxsize=SCORED_QUEUE)
    started = time.perf_counter()
    if is_device_runner(runner):
        # GPU: raw records go to the device; the CUDA prep kernel writes the engine's input (see gpu_stage).
        from pktnin.score import gpu_stage

        batch = gpu_stage.device_batch_size(runner, opts.batch)
        threads = [
            stages.thread("pktnin-read", gpu_stage.read_raw_stage, stages, todo, read_q, batch),
            stages.thread(
                "pktnin-engine", gpu_stage.device_engine_stage, stages, runner, batch, opts.mask, opts.keep_dns,
                read_q, scored_q,
            ),
        ]
    else:
        threads = [
            stages.thread(
                "pktnin-read", read_stage, stages, todo, read_q, opts.mask, opts.keep_dns, opts.prep_threads, source
            ),
            stages.thread("pktnin-engine", engine_stage, stages, runner, opts.batch, read_q, scored_q),
        ]
    try:
        while True:
            item = stages.get(scored_q)
            if item is _DONE:
                writer.close_part()
                break
            if isinstance(item, Scored):
                writer.scored(item)
            else:
                writer.file_end(item.report)
    except _Stopped:
        pass
    except BaseException as exc:
        stages.fail(exc)
    finally:
        stages.stop.set()
        for t in threads:
            # Stages stop within one chunk or one engine call; wait for them even through a second Ctrl-C, so
            # the process never exits while a native library is still running in another thread.
            while t.is_alive():
                try:
                    t.join()
                except KeyboardInterrupt:
                    pass
        writer.abort()
    if stages.errors:
        raise stages.errors[0]
    seconds = time.perf_counter() - started

    # Every file is finished: assemble the outputs in input order, then drop the parts and the manifest.
    ordered = [manifest.files[mf.file_key(p)] for p in files]
    rows = assemble(_unique_parts(ordered, "part", parts), out, writer.schema, opts.fmt)
    outputs = [out]
    n_flows = None
    if writer.fschema is not None:
        n_flows = assemble(_unique_parts(ordered, "flows_part", parts), opts.flows_out, writer.fschema, opts.fmt)
        outputs.append(Path(opts.flows_out))
    mf.clear_run(out, manifest.part_names())

    label_counts = np.zeros(len(classes), dtype=np.int64)
    for e in ordered:
        label_counts += np.asarray(e["label_counts"], dtype=np.int64)
    return ScoreResult(
        files=list(files),
        reports=[mf.report_from_dict(e["report"]) for e in ordered],
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


def _unique_parts(entries: list[dict], key: str, parts: Path) -> list[Path]:
    """Part files in the order their first file appears (a part holds several consecutive files)."""
    names = dict.fromkeys(e[key] for e in entries if e.get(key))
    return [parts / n for n in names]
