"""Runner specs for the Ray tests; imported inside Ray actors (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pktnin.distributed.ray_engine import RunnerSpec


class _DyingRunner:
    """Wraps a runner; on its second model call, if the marker file exists, removes it and kills the process."""

    def __init__(self, runner, marker: Path) -> None:
        self._runner, self._marker, self._calls = runner, marker, 0
        self.classes = runner.classes

    def infer(self, rows, out):
        self._calls += 1
        if self._calls == 2 and self._marker.exists():
            self._marker.unlink()
            os._exit(1)  # the actor dies mid-shard: some rows scored, the part not yet closed
        return self._runner.infer(rows, out)


@dataclass(frozen=True)
class DyingSpec(RunnerSpec):
    marker: str = ""

    def __call__(self, threads: int):
        return _DyingRunner(super().__call__(threads), Path(self.marker))


class _CuttingRunner:
    """Wraps a runner; on its first model call, if the marker file exists, removes it and truncates `target` to
    half its size (a capture cut short while the run reads it)."""

    def __init__(self, runner, marker: Path, target: Path) -> None:
        self._runner, self._marker, self._target = runner, marker, target
        self.classes = runner.classes

    def infer(self, rows, out):
        if self._marker.exists():
            self._marker.unlink()
            os.truncate(self._target, os.path.getsize(self._target) // 2)
        return self._runner.infer(rows, out)


@dataclass(frozen=True)
class CuttingSpec(RunnerSpec):
    marker: str = ""
    target: str = ""

    def __call__(self, threads: int):
        return _CuttingRunner(super().__call__(threads), Path(self.marker), Path(self.target))
