"""The stage chain of one unit of work, built here only: every executor and iter_scores start it the same way.

    CPU runner     read+prep thread (cpu_stages.read_stage) -> [after_prep] -> engine thread (cpu_stages.engine_stage,
                   or with --decide flow flow_stage.flow_engine_stage: only the first K rows of each flow reach
                   the model, each row leaves with its flow's decision)
    DeviceRunner   raw read thread (gpu_stages.read_raw_stage) -> prep+engine thread (gpu_stages.device_engine_stage)
    then           [after_engine] -> the queue a sink takes Scored pieces and FileEnd markers from, up to DONE

The sink is the caller's: unit_run.score_unit writes a part, api.iter_scores yields record batches.

Hooks. A stage can be inserted per unit between the prep and the engine (PacketBatch and FileEnd messages) and
between the engine and the sink (Scored and FileEnd messages). ChainHooks holds a factory for each; the factory
is called once per unit, with the unit, so whatever state its stage keeps (a flow table, say) is made for that
unit and dropped with it: units are the same on every executor, so the outputs are too. Each inserted stage runs
in a thread of its own behind a bounded queue, and hands on any number of messages per message it takes;
FileEnd markers must go on after the file's last piece.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

from pktnin.engine.flow_runner import FlowModelRunner
from pktnin.engine.protocols import DeviceRunner, ModelRunner
from pktnin.errors import OptionError
from pktnin.packets import PacketBatch, iter_packets
from pktnin.scoring import gpu_stages
from pktnin.scoring.cpu_stages import engine_stage, read_stage
from pktnin.scoring.flow_stage import FlowScorer, flow_engine_stage
from pktnin.scoring.options import ChainSettings
from pktnin.scoring.units import Unit
from pktnin.stages import DONE, Progress, Stages
from pktnin.storage import Location

READ_QUEUE = 4  # chunks waiting for the engine
SCORED_QUEUE = 16  # scored pieces waiting for the sink
HOOK_QUEUE = 4  # messages waiting behind an inserted stage


class UnitStage(Protocol):
    """A stage inserted for one unit: takes every message in order and returns those to hand on."""

    def __call__(self, item: object) -> Iterable[object]: ...

    def finish(self) -> Iterable[object]:
        """At the end of the unit: the messages it still holds."""
        ...


MakeStage = Callable[[Unit], UnitStage]


@dataclass(frozen=True)
class ChainHooks:
    """Stages inserted per unit (see the module's text). after_prep works on the CPU path only: on the GPU
    the prep writes straight into the engine's input."""

    after_prep: MakeStage | None = None
    after_engine: MakeStage | None = None


NO_HOOKS = ChainHooks()


def hook_stage(stages: Stages, stage: UnitStage, in_q: queue.Queue, out_q: queue.Queue) -> None:
    """Run an inserted stage between two queues, up to DONE."""
    while True:
        item = stages.get(in_q)
        if item is DONE:
            for out in stage.finish():
                stages.put(out_q, out)
            stages.put(out_q, DONE)
            return
        for out in stage(item):
            stages.put(out_q, out)


def _insert(stages: Stages, name: str, make: MakeStage | None, unit: Unit, in_q: queue.Queue) -> queue.Queue:
    if make is None:
        return in_q
    out_q: queue.Queue = queue.Queue(maxsize=HOOK_QUEUE)
    stages.thread(name, hook_stage, stages, make(unit), in_q, out_q)
    return out_q


def start_chain(
    stages: Stages,
    runner: ModelRunner | DeviceRunner | FlowModelRunner,
    unit: Unit,
    settings: ChainSettings,
    hooks: ChainHooks = NO_HOOKS,
    *,
    source: Callable[..., Iterator[PacketBatch]] = iter_packets,
    named: AbstractSet[Location] | None = None,
    progress: Progress | None = None,
) -> queue.Queue:
    """Start the threads of `unit`'s chain on `stages`; returns the queue the sink reads (ending with DONE).

    `source` stands in for packets.iter_packets (CPU path); `named`: the files the user named
    (packets.iter_raw_batches); `progress` (optional) gets add_bytes(n) as files are read."""
    read_q: queue.Queue = queue.Queue(maxsize=READ_QUEUE)
    scored_q: queue.Queue = queue.Queue(maxsize=SCORED_QUEUE)
    if isinstance(runner, DeviceRunner):
        # GPU: raw records go to the device; the CUDA prep kernel writes the engine's input.
        if hooks.after_prep is not None:
            raise OptionError("a stage after the prep needs a CPU engine: on the GPU the prep feeds the engine")
        if settings.decide == "flow":
            raise OptionError("--decide flow runs on the CPU engines (ONNX Runtime, OpenVINO), not on TensorRT")
        batch = gpu_stages.device_batch_size(runner, settings.batch)
        stages.thread("pktnin-read", gpu_stages.read_raw_stage, stages, unit.pieces, read_q, batch, named=named,
                      progress=progress)  # fmt: skip
        stages.thread("pktnin-engine", gpu_stages.device_engine_stage, stages, runner, settings, read_q, scored_q)
    else:
        stages.thread("pktnin-read", read_stage, stages, unit.pieces, read_q, settings, source=source, named=named,
                      progress=progress)  # fmt: skip
        engine_q = _insert(stages, "pktnin-after-prep", hooks.after_prep, unit, read_q)
        if settings.decide == "flow":
            # One FlowScorer per unit: the flow state of one unit never meets another's.
            scorer = FlowScorer(runner, settings.flow, settings.batch, {p.file_index: p.part for p in unit.pieces})
            stages.thread("pktnin-engine", flow_engine_stage, stages, scorer, engine_q, scored_q)
        elif isinstance(runner, FlowModelRunner):
            raise OptionError(f"{runner.path.name} is a flow model: it decides per flow (--decide flow)")
        else:
            stages.thread("pktnin-engine", engine_stage, stages, runner, settings.batch, engine_q, scored_q)
    return _insert(stages, "pktnin-after-engine", hooks.after_engine, unit, scored_q)
