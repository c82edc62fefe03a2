"""The CPU stages of the scoring pipeline: read+prep (packets.iter_packets) and the engine (runner.infer).

read+prep   one file at a time (the numba kernels release the GIL): PacketBatch chunks of uint8 rows, then a
            FileEnd marker carrying the file's report.
engine      runs the model on each whole batch of rows where the prep wrote them; what is left of a chunk is
            copied into a fixed [batch, 1500] input buffer across file boundaries, run when it is full (or at
            the end). Each piece comes back as Scored, in order, FileEnd markers after their file's last piece.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pktnin.engine.protocols import ModelRunner
from pktnin.layout import ROW_LEN
from pktnin.packets import FileReport, PacketBatch, iter_packets
from pktnin.score.stages import DONE, FileEnd, Scored, Stages

READ_CHUNK = 8192  # records per read+prep chunk: ~12 MB of rows


def read_stage(
    stages: Stages,
    todo: list[tuple[int, Path]],
    out_q: queue.Queue,
    mask: str,
    keep_dns: bool,
    threads: int | None,
    source: Callable[..., Iterator[PacketBatch]] = iter_packets,
) -> None:
    """PacketBatch chunks and a FileEnd per (index, path) in todo, then DONE. `source` stands in for
    packets.iter_packets; `threads` (None: numba's default) sets the prep kernels' threads."""
    if threads:
        import numba

        # numba.config sets its settings at run time from the environment, invisible to a type checker
        numba.set_num_threads(max(1, min(threads, getattr(numba.config, "NUMBA_NUM_THREADS"))))  # per thread in numba
    for index, path in todo:
        reports: list[FileReport] = []
        for batch in source([path], mask=mask, keep_dns=keep_dns, reports=reports, max_records=READ_CHUNK,
                            first_index=index):
            stages.put(out_q, batch)
        stages.put(out_q, FileEnd(reports[0]))
    stages.put(out_q, DONE)


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
