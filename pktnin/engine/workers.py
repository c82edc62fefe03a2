"""Several single-thread ONNX Runtime sessions behind one runner face, as an alternative to one session with
several intra-op threads.

A small network leaves a multi-thread session's cores idle between its many small operators (each operator is
split across the threads and every thread waits for the slowest); single-thread sessions each score their own
slice of the batch end to end, without that synchronization. Which layout is faster depends on the model and
the machine, so pktnin.engine.precision measures both and keeps the faster one.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pktnin.engine.ort_runner import OnnxRuntimeRunner
from pktnin.engine.runner_base import DEFAULT_MAX_BATCH, Runner
from pktnin.errors import OptionError

MIN_ROWS_PER_WORKER = 16  # below this a slice costs more to hand out than it saves


class SessionPoolRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self, onnx_path: str | os.PathLike, workers: int, max_batch: int = DEFAULT_MAX_BATCH, graph_opt: str = "all"
    ) -> None:
        super().__init__()
        if workers < 2:
            raise OptionError(f"a session pool needs at least 2 workers, got {workers}")
        self.path = Path(onnx_path)
        self.workers = int(workers)
        self.graph_opt = graph_opt
        self._max_batch = int(max_batch)
        self._runners: list[OnnxRuntimeRunner] = []
        self._pool: ThreadPoolExecutor | None = None

    def load(self) -> SessionPoolRunner:
        if self._pool is not None:
            return self
        runners = []
        try:
            for _ in range(self.workers):
                runners.append(
                    OnnxRuntimeRunner(
                        self.path, intra_threads=1, inter_threads=1, graph_opt=self.graph_opt, max_batch=self._max_batch
                    ).load()
                )
        except BaseException:
            for r in runners:
                r.close()
            raise
        self._runners = runners
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pktnin-session")
        self.precision = runners[0].precision
        self.info = runners[0].info
        return self

    def _infer(self, rows: np.ndarray, out: np.ndarray, n: int) -> np.ndarray:
        assert self._pool is not None  # infer() checked: loaded
        size = max(MIN_ROWS_PER_WORKER, -(-n // self.workers))
        # ONNX Runtime releases the GIL while it runs, so the sessions work in parallel.
        jobs = [
            self._pool.submit(runner.infer, rows[lo : lo + size], out[lo : min(n, lo + size)])
            for runner, lo in zip(self._runners, range(0, n, size))
        ]
        for job in jobs:
            job.result()
        return out[:n]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for runner in self._runners:
            runner.close()
        self._runners = []
        self._pool = None
        self.info = None
