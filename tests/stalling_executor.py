"""A local executor that stops dead after a number of units, for child processes that a test kills mid-run
(tests/test_distributed.py, tests/test_object_storage.py)."""

from __future__ import annotations

import time

from pktnin.scoring.unit_run import LocalExecutor


class StallingExecutor(LocalExecutor):
    """Yields its first `units` unit summaries, prints "stalled" and sleeps: the parent kills it there."""

    def __init__(self, runner, opts, units: int) -> None:
        super().__init__(runner, opts)
        self.units = units

    def __call__(self, todo, parts, progress=None):
        for k, summary in enumerate(super().__call__(todo, parts, progress)):
            yield summary
            if k == self.units - 1:
                print("stalled", flush=True)
                time.sleep(120)
