"""score_unit: one unit of work through the stage chain into one Parquet part and a summary; the in-process
executor.

Layout of the parts folder (pyarrow reads it as a Parquet dataset: it skips names starting with "_"):
    {id}.packets.parquet        the unit's packet rows (absent when the unit kept none)
    _units/{id}.flows.npz       per-flow partial sums of its pieces (with --flows), reduced per file at the end
    _units/{id}.summary.json    what the unit did; written last, so its presence means the unit is finished

Every file is written under a temporary name and renamed into place, so a worker killed mid-unit leaves no half
file, and a retry (or a resumed run) of a finished unit returns the saved summary without scoring again. The
summary is small (per piece: counts, the FileReport, the stamp; the part's name): rows never leave the worker
but through the parts folder, which every worker and the driver share.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet

import numpy as np

from pktnin.engine.flow_runner import FlowModelRunner
from pktnin.engine.protocols import DeviceRunner, ModelRunner
from pktnin.outdir import HeldDir, UnsafeOutputError
from pktnin.packets import PacketBatch, iter_packets
from pktnin.scoring.chain import NO_HOOKS, ChainHooks, ChainSettings, start_chain
from pktnin.scoring.manifest import UNITS_DIR
from pktnin.scoring.options import ScoreOptions
from pktnin.scoring.units import Unit
from pktnin.scoring.writer_stage import UnitWriter, write_stage
from pktnin.stages import Progress, Stages
from pktnin.storage import Location, StoreDir, join, open_input, put_bytes

STATE_DIR = UNITS_DIR


def summary_path(parts_dir: Location, unit_id: str) -> Location:
    return join(parts_dir, f"{STATE_DIR}/{unit_id}.summary.json")


def flow_state_path(parts_dir: Location, unit_id: str) -> Location:
    return join(parts_dir, f"{STATE_DIR}/{unit_id}.flows.npz")


def load_summary(parts_dir: Location, unit_id: str, held: HeldDir | StoreDir | None = None) -> dict | None:
    """The saved summary of a finished unit whose part files all exist, else None. With `held` (the driver's
    handle on the parts folder) everything is read through it, never by name."""
    try:
        if held is not None:
            with held.open_private(f"{STATE_DIR}/{unit_id}.summary.json") as fh:
                summary = json.loads(fh.read())
        else:
            with open_input(summary_path(parts_dir, unit_id)) as fh:
                summary = json.loads(fh.read())
    except (OSError, ValueError, UnsafeOutputError):  # absent, unreadable, or not a private file of ours
        return None
    if not isinstance(summary, dict) or summary.get("id") != unit_id or not isinstance(summary.get("files"), list):
        return None
    if any(f.get("changed") for f in summary["files"]):  # a file changed while it was read: score it again
        return None
    names = [summary.get("part")] + ([STATE_DIR + "/" + summary["flow_state"]] if summary.get("flow_state") else [])
    if not all(isinstance(n, str) and _is_file(parts_dir, n, held) for n in names if n):
        return None
    return summary


def _is_file(parts_dir: Location, name: str, held: HeldDir | StoreDir | None) -> bool:
    try:
        (open_input(join(parts_dir, name)) if held is None else held.open_private(name)).close()
        return True
    except (OSError, UnsafeOutputError):  # absent, or not a private file of ours
        return False


def load_flow_states(
    parts_dir: Location, summary: dict, held: HeldDir | StoreDir | None = None
) -> dict[int, dict[str, np.ndarray]]:
    """The per-flow partials of a unit's pieces, by the piece's number in the unit (read through `held` when
    given)."""
    if not summary.get("flow_state"):
        return {}
    out: dict[int, dict[str, np.ndarray]] = {}
    name = f"{STATE_DIR}/{summary['flow_state']}"
    with held.open_private(name) if held is not None else open_input(join(parts_dir, name)) as fh:
        with np.load(io.BytesIO(fh.read())) as data:  # small; a store's file is read in one request
            for key in data.files:
                number, field = key.split(".", 1)
                out.setdefault(int(number), {})[field] = data[key]
    return out


def score_unit(
    unit: Unit,
    runner: ModelRunner | DeviceRunner | FlowModelRunner,
    opts: ScoreOptions,
    parts_dir: Location,
    *,
    hooks: ChainHooks = NO_HOOKS,
    source: Callable[..., Iterator[PacketBatch]] = iter_packets,
    named: AbstractSet[Location] | None = None,
    progress: Progress | None = None,
    node: str | None = None,
) -> dict:
    """Score one unit with `runner` into parts_dir; returns its summary (saved beside the part), with "skipped"
    True when an earlier try had finished it. Each piece's report covers that piece's records only (a file cut
    into byte ranges: see reports.merge_reports). `node`: the Ray node scoring it, kept in the summary."""
    if unit.reusable:
        done = load_summary(parts_dir, unit.id)
        if done is not None:
            return {**done, "skipped": True}
    started, cpu_started = time.perf_counter(), time.process_time()
    writer = UnitWriter(unit, opts, list(runner.classes), parts_dir, progress)
    stages = Stages()
    try:
        scored_q = start_chain(stages, runner, unit, ChainSettings.of(opts), hooks, source=source, named=named,
                               progress=progress)  # fmt: skip
        stages.run(write_stage, stages, writer, scored_q)
        stages.finish()
        stages.raise_error()
        part, flow_states = writer.close()
        summary = _save_summary(unit, writer.finished, part, flow_states, parts_dir, started, cpu_started, node)
    except BaseException:
        stages.finish()
        writer.abort()
        raise
    return {**summary, "skipped": False}


def _save_summary(
    unit: Unit,
    finished: list[dict],
    part: str | None,
    flow_states: dict[str, np.ndarray],
    parts_dir: Location,
    started: float,
    cpu_started: float,
    node: str | None,
) -> dict:
    flow_state = None
    if flow_states:
        flow_state = f"{unit.id}.flows.npz"
        data = io.BytesIO()
        np.savez(data, **flow_states)  # type: ignore[arg-type]  # numpy stub reads names as allow_pickle
        put_bytes(flow_state_path(parts_dir, unit.id), data.getvalue())
    summary = {
        "id": unit.id,
        "part": part,
        "flow_state": flow_state,
        "packets": sum(f["packets"] for f in finished),
        "records": sum(f["report"]["records"] for f in finished),
        "files": finished,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "node": node,
    }
    put_bytes(summary_path(parts_dir, unit.id), json.dumps(summary).encode())
    return summary


class LocalExecutor:
    """The in-process executor (the default): units one after another in this process, each through its own
    chain of threads and bounded queues. `hooks`, `source` and `named` as for score_unit."""

    live_progress = True  # packets and bytes are told as they are scored

    def __init__(
        self,
        runner: ModelRunner | DeviceRunner | FlowModelRunner,
        opts: ScoreOptions,
        *,
        hooks: ChainHooks = NO_HOOKS,
        source: Callable[..., Iterator[PacketBatch]] = iter_packets,
        named: AbstractSet[Location] | None = None,
    ) -> None:
        self.runner, self.opts = runner, opts
        self.hooks, self.source, self.named = hooks, source, named

    def __call__(self, units: Sequence[Unit], parts_dir: Location, progress: Progress | None = None) -> Iterator[dict]:
        for unit in units:
            yield score_unit(unit, self.runner, self.opts, parts_dir, hooks=self.hooks, source=self.source,
                             named=self.named, progress=progress)  # fmt: skip
