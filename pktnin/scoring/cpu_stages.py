"""The CPU stages of the scoring pipeline: read+prep (packets.iter_packets) and the engine (runner.infer).

read+prep   one file at a time (the numba kernels release the GIL): PacketBatch chunks of uint8 rows, then a
            FileEnd marker carrying the file's report.
engine      runs the model on each whole batch of rows where the prep wrote them; what is left of a chunk is
            copied into a fixed [batch, 1500] input buffer across file boundaries, run when it is full (or at
            the end). Each piece comes back as Scored, in order, FileEnd markers after their file's last piece.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet

import numba
import numpy as np

from pktnin.engine.protocols import ModelRunner
from pktnin.kernels.capture import ReadStopped, is_stream
from pktnin.layout import ROW_LEN
from pktnin.packets import FileReport, PacketBatch, iter_packets
from pktnin.scoring.messages import FileEnd, Scored
from pktnin.scoring.options import ChainSettings
from pktnin.scoring.units import Piece
from pktnin.stages import DONE, Progress, Stages, Stopped
from pktnin.storage import Location, as_path, size_mtime

READ_CHUNK = 8192  # records per read+prep chunk: ~12 MB of rows


def read_stage(
    stages: Stages,
    pieces: Sequence[Piece],
    out_q: queue.Queue,
    settings: ChainSettings,
    *,
    source: Callable[..., Iterator[PacketBatch]] = iter_packets,
    named: AbstractSet[Location] | None = None,
    progress: Progress | None = None,
) -> None:
    """PacketBatch chunks and a FileEnd per piece (a file or a byte range of one), then DONE. `source` stands in
    for packets.iter_packets; settings.prep_threads (None: numba's default) sets the prep kernels' threads;
    `named`: the files the user named (packets.iter_raw_batches); `progress` (optional) gets add_bytes(n, packets)
    as files are read."""
    threads, mask, keep_dns = settings.prep_threads, settings.mask, settings.keep_dns
    if threads:
        # numba.config sets its settings at run time from the environment, invisible to a type checker
        numba.set_num_threads(max(1, min(threads, getattr(numba.config, "NUMBA_NUM_THREADS"))))  # per thread in numba
    add_bytes = getattr(progress, "add_bytes", None)
    for piece in pieces:
        index, path = piece.file_index, as_path(piece.path)
        reports: list[FileReport] = []
        read = 0
        # A byte range only: a file is read whole, and a source standing in for iter_packets needs no range.
        ranged = {} if piece.whole else {"reader_kwargs": piece.reader_kwargs()}
        try:
            for batch in source([path], mask=mask, keep_dns=keep_dns, reports=reports, max_records=READ_CHUNK,
                                first_index=index, named=named, should_stop=stages.stop.is_set,
                                **ranged):  # fmt: skip
                stages.put(out_q, batch)
                if add_bytes is not None:  # with the packets to score in them: the bar counts scored work
                    add_bytes(max(0, batch.consumed - read), len(batch))
                    read = max(read, batch.consumed)
        except ReadStopped:  # a wait on a stream ended because the run is stopping
            raise Stopped from None
        if add_bytes is not None:
            add_bytes(max(0, input_size(path) - read), 0)  # the rest: records skipped, or the file ended early
        stages.put(out_q, FileEnd(reports[0]))
    stages.put(out_q, DONE)


def input_size(path: Location) -> int:
    """Bytes of a regular file or an object (0 for a stream or a file that cannot be read): the progress bar's
    unit."""
    try:
        return 0 if is_stream(path) else size_mtime(path)[0]
    except OSError:
        return 0


def engine_stage(stages: Stages, runner: ModelRunner, batch_size: int, in_q: queue.Queue, out_q: queue.Queue) -> None:
    """PacketBatch and FileEnd in, Scored and FileEnd out (same order), DONE at the end."""
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
        if item is DONE:
            run_model()
            stages.put(out_q, DONE)
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
            if fill == 0 and len(batch) - lo >= batch_size:
                # A whole model batch inside this chunk: the engine reads the rows where the prep wrote them.
                runner.infer(batch.rows[lo : lo + batch_size], outbuf)
                meta = {k: v[lo : lo + batch_size] for k, v in batch.meta.items()}
                stages.put(out_q, Scored(batch.file_index, batch.path, meta, outbuf.copy()))
                lo += batch_size
                continue
            n = min(batch_size - fill, len(batch) - lo)
            inbuf[fill : fill + n] = batch.rows[lo : lo + n]
            pending.append((fill, n, batch, lo))
            fill += n
            lo += n
            if fill == batch_size:
                run_model()
