"""The GPU stages of the scoring pipeline: raw records go to the device and the CUDA prep kernel writes the
engine's input in place (no rows on the host). The runner is an engine.protocols.DeviceRunner.

read        iter_raw: each file's records in RawBatch chunks of at most `batch` records (so a chunk never
            keeps more rows than one engine batch), copied out of the file's read window, then a FileEnd marker
            whose report still lacks `kept` and `skip_counts` (only the prep knows them).
engine      per chunk: kernels.cuda.transform_to_device copies the raw bytes to the device and writes the kept
            rows, normalized, straight into runner.device_input(slot) behind the rows already there; the slot
            goes to the engine (runner.submit) when the next chunk would not fit, or at the end. Two slots:
            chunks are prepared into one while the engine runs the other. Results (runner.collect) leave in
            submission order as Scored pieces; FileEnd markers follow their file's last piece, completed with
            the file's kept count and skip counts. The writer cannot tell this path from the CPU one.

Overlap. The prep runs on its own stream (runner.prep_stream()), not on the engine's: transform_to_device
synchronizes its stream twice per chunk (the skip codes come back for the kept-row scan, the metadata at the
end), and on the engine's stream each sync would also wait for the engine batch queued before it. On its own
stream, the raw copy-in, the three prep kernels and the metadata copy-back for batch k+1 can run on the GPU
while the engine runs batch k on the other slot. What does not overlap: the prep of one chunk with the next
chunk's prep (each waits for its own syncs); the engine's read of slot s with a new prep into slot s (a slot is
reused only after collect() has waited for its copy-out). When transform_to_device returns, the rows are on the
device (its last sync follows the rows kernel on the same stream), so submit() needs no cross-stream event.
Host work (reading and copying the next chunk, handing results to the writer) overlaps the GPU throughout.
Not measured: this path has not run on a real GPU.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pktnin.engine.protocols import DeviceRunner
from pktnin.kernels.capture import RawBatch, ReadStopped
from pktnin.layout import SKIP_REASONS
from pktnin.packets import FileReport, iter_raw_batches
from pktnin.scoring.cpu_stages import input_size
from pktnin.scoring.messages import FileEnd, Scored
from pktnin.scoring.options import ChainSettings
from pktnin.scoring.units import Piece
from pktnin.stages import DONE, Progress, Stages, Stopped
from pktnin.storage import Location, as_path


def device_batch_size(runner: DeviceRunner, batch: int) -> int:
    """Rows per engine call on the GPU path: the requested batch, capped by the engine's max batch."""
    return max(1, min(int(batch), int(runner.max_batch)))


@dataclass
class RawChunk:
    """Records of one chunk of one file, in buffers this chunk owns."""

    file_index: int
    path: Location
    raw: RawBatch


def own_raw(raw: RawBatch) -> RawBatch:
    """A copy of the RawBatch whose buf holds only the span of its records (the file window is released when the
    next windows are read, and a queued chunk must not pin a whole window)."""
    lo = int(raw.pkt_off.min())
    hi = int((raw.pkt_off + raw.caplen).max())
    return RawBatch(
        np.array(raw.buf[lo:hi]),
        raw.pkt_off - lo,
        raw.caplen.copy(),
        raw.wirelen.copy(),
        raw.linktype.copy(),
        raw.ts_ns.copy(),
        raw.frame.copy(),
        raw.base + lo,
        raw.consumed,
    )


def iter_raw(
    files: Iterable[Location],
    reports: list[FileReport],
    max_records: int,
    first_index: int = 0,
    reader_kwargs: dict | None = None,
    named: AbstractSet[Location] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[RawChunk]:
    """packets.iter_packets without the transform: RawChunks, and one FileReport per file appended to `reports`
    when the file is finished (`kept` and `skip_counts` are left to whoever runs the transform)."""
    for report, raw in iter_raw_batches(files, max_records, first_index, reader_kwargs, named, should_stop):
        if raw is None:
            reports.append(report)
        else:
            yield RawChunk(report.index, report.path, own_raw(raw))


def read_raw_stage(
    stages: Stages,
    pieces: Sequence[Piece],
    out_q: queue.Queue,
    max_records: int,
    *,
    named: AbstractSet[Location] | None = None,
    progress: Progress | None = None,
) -> None:
    """RawChunks and a FileEnd (kept and skip counts still missing) per piece (a file or a byte range of one),
    then DONE. `progress` (optional) gets add_bytes(n) as files are read."""
    add_bytes = getattr(progress, "add_bytes", None)
    for piece in pieces:
        index, path = piece.file_index, as_path(piece.path)
        reports: list[FileReport] = []
        read = 0
        try:
            for chunk in iter_raw([path], reports, max_records, first_index=index, reader_kwargs=piece.reader_kwargs(),
                                  named=named, should_stop=stages.stop.is_set):  # fmt: skip
                stages.put(out_q, chunk)
                if add_bytes is not None and chunk.raw.consumed > read:
                    add_bytes(chunk.raw.consumed - read)
                    read = chunk.raw.consumed
        except ReadStopped:  # a wait on a stream ended because the run is stopping
            raise Stopped from None
        if add_bytes is not None:
            add_bytes(max(0, input_size(path) - read))
        stages.put(out_q, FileEnd(reports[0]))
    stages.put(out_q, DONE)


@dataclass
class _SlotBatch:
    """Rows gathered in one slot's device input: pieces (start, n, file_index, path, meta) and FileEnd markers,
    in arrival order."""

    slot: int
    rows: Any  # the slot's device input (numba device array, which has no type hints)
    fill: int = 0
    items: list = field(default_factory=list)


def device_engine_stage(
    stages: Stages,
    runner: DeviceRunner,
    settings: ChainSettings,
    in_q: queue.Queue,
    out_q: queue.Queue,
) -> None:
    """RawChunk and FileEnd in, Scored and FileEnd (completed with kept and skip counts) out, DONE at the end.
    Engine calls of device_batch_size(runner, settings.batch) rows."""
    from pktnin.kernels.cuda import transform_to_device

    batch_size = device_batch_size(runner, settings.batch)
    mask, keep_dns = settings.mask, settings.keep_dns
    outbuf = np.empty((batch_size, len(runner.classes)), dtype=np.float32)
    num_slots = int(runner.num_slots)
    prep_stream = runner.prep_stream()
    in_flight: deque[_SlotBatch] = deque()  # submitted, oldest first
    current: _SlotBatch | None = None  # being filled
    skips: dict[int, np.ndarray] = {}  # file index -> skip counts of its chunks so far
    kept: dict[int, int] = {}

    def collect_oldest() -> None:
        done = in_flight.popleft()
        probs = runner.collect(done.slot, outbuf)
        for item in done.items:
            if isinstance(item, FileEnd):
                stages.put(out_q, item)
            else:
                start, n, file_index, path, meta = item
                stages.put(out_q, Scored(file_index, path, meta, probs[start : start + n].copy()))

    def submit_current() -> None:
        nonlocal current
        if current is not None and current.fill:
            runner.submit(current.slot, current.fill)
            in_flight.append(current)
        current = None  # a slot that kept no rows holds no items (markers only join batches with rows)

    def open_batch() -> _SlotBatch:
        if len(in_flight) >= num_slots:
            collect_oldest()
        busy = {b.slot for b in in_flight}
        slot = next(s for s in range(num_slots) if s not in busy)
        return _SlotBatch(slot, runner.device_input(slot))

    while True:
        item = stages.get(in_q)
        if item is DONE:
            submit_current()
            while in_flight:
                collect_oldest()
            stages.put(out_q, DONE)
            return
        if isinstance(item, FileEnd):
            report = item.report
            counts = skips.pop(report.index, None)
            report.kept = kept.pop(report.index, 0)
            if counts is not None:
                report.skip_counts.update({SKIP_REASONS[i]: int(c) for i, c in enumerate(counts) if i and c})
            # The marker follows the file's last rows, wherever they are.
            if current is not None and current.items:
                current.items.append(item)
            elif in_flight:
                in_flight[-1].items.append(item)
            else:
                stages.put(out_q, item)
            continue
        chunk: RawChunk = item
        n_raw = chunk.raw.n
        if n_raw > batch_size:
            raise ValueError(f"{chunk.path}: a chunk of {n_raw} records exceeds the engine batch of {batch_size}")
        if current is not None and current.fill + n_raw > batch_size:
            submit_current()  # the chunk might not fit: it keeps at most n_raw rows
        if current is None:
            current = open_batch()
        with runner.device_context():
            meta = transform_to_device(
                chunk.raw, current.rows[current.fill : batch_size], mask, keep_dns, stream=prep_stream
            )
        counts = meta.pop("skip_counts")
        meta.pop("skip", None)
        skips[chunk.file_index] = skips.get(chunk.file_index, 0) + counts
        k = int(meta["index"].shape[0])
        kept[chunk.file_index] = kept.get(chunk.file_index, 0) + k
        if k:
            current.items.append((current.fill, k, chunk.file_index, chunk.path, meta))
            current.fill += k
