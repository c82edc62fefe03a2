"""The engine stage of `--decide flow`: only the first K rows of each flow reach the model, and each row comes
out with its flow's decision (pktnin.flow_decide).

PacketBatch and FileEnd in, Scored and FileEnd out (same order), DONE at the end, as cpu_stages.engine_stage.
The flow state starts empty at every piece of a unit of work (a file, or a byte range of one: scoring.units)
and the piece's waiting flows are decided at its FileEnd; the chain (scoring.chain) makes one FlowScorer per
unit, so local and Ray runs reset at the same places. Scored metadata gains `decision_packets` (rows the flow's
decision used) and `flow_no` (the flow's number in its unit, above PIECE_SHIFT the piece's position in its file), which the
writers turn into the `decided_by` and `decision_packets` columns and the flow table groups by.
"""

from __future__ import annotations

import queue
from collections import deque

import numpy as np

from pktnin.engine.flow_runner import FlowModelRunner
from pktnin.engine.protocols import ModelRunner
from pktnin.flow_decide import FlowDecider, FlowParams, Plan, Released
from pktnin.flow_features import pkt_feats
from pktnin.packets import PacketBatch
from pktnin.scoring.messages import FileEnd, Scored
from pktnin.stages import DONE, Stages
from pktnin.storage import Location

PIECE_SHIFT = 40  # flow_no = piece part << PIECE_SHIFT | flow number in the piece: distinct across a file's pieces


class FlowScorer:
    """The engine side of one unit in flow mode: its FlowDecider, and model calls on what it asks for.

    Plans wait until `batch_size` model inputs (rows, or flows for a flow model) or `pending_rows` unit rows
    are queued, then one model call serves them all and they are resolved in order: a unit of many small files
    costs a few full model calls, not one small call per file. FileEnd markers go out behind their file's rows.
    """

    def __init__(
        self, runner: ModelRunner | FlowModelRunner, params: FlowParams, batch_size: int,
        parts: dict[int, int] | None = None,
    ) -> None:  # fmt: skip
        # parts: file index -> the position of the unit's piece of that file among the file's pieces (0 for a
        # whole file), so that flow numbers stay distinct across a file's pieces
        self.runner = runner
        self.flow_model = isinstance(runner, FlowModelRunner)
        self.params = params
        self.batch_size = batch_size
        self.n_classes = len(runner.classes)
        self.parts = parts or {}
        self.decider: FlowDecider | None = None
        self.queue: list[tuple[Plan, np.ndarray | None]] = []  # assigned, not resolved: (plan, its model rows)
        self.inputs = 0  # model inputs the queued plans need
        self.queued_rows = 0  # unit rows of the queued plans
        self.chunks: deque[tuple[int, int, Location]] = deque()  # (first unit row, file index, path) per chunk
        self.ends: deque[tuple[int, FileEnd]] = deque()  # FileEnd markers and the unit rows before them
        self.engine_rows = 0  # rows (per-packet model) or flows (flow model) the model was run on

    def batch(self, batch: PacketBatch) -> list:
        """A chunk of the unit's rows; the messages now ready (Scored pieces, FileEnd markers), in order."""
        if self.decider is None:
            self.decider = FlowDecider(self.n_classes, self.params, flow_model=self.flow_model)
        self.chunks.append((self.decider.rows, batch.file_index, batch.path))
        lo = 0
        for plan in self.decider.assign(batch.rows, batch.meta):
            rows = None if self.flow_model else batch.rows[lo : lo + plan.n][plan.send]
            self._queue(plan, rows)
            lo += plan.n
        return self._flush() if self._full() else []

    def file_end(self, end: FileEnd) -> list:
        """The end of a file (or of the unit's byte range of it): its waiting flows are decided, its flows end."""
        if self.decider is None:
            return [end]  # no row yet in this unit
        self._queue(self.decider.end_piece(), None)
        self.ends.append((self.decider.rows, end))
        return self._flush() if self._full() else []

    def done(self) -> list:
        """The unit's end: everything still queued."""
        return self._flush() if self.decider is not None else []

    def _queue(self, plan: Plan, rows: np.ndarray | None) -> None:
        self.queue.append((plan, rows))
        self.inputs += plan.flows_decided if self.flow_model else (0 if rows is None else len(rows))
        self.queued_rows += plan.n

    def _full(self) -> bool:
        return self.inputs >= self.batch_size or self.queued_rows >= self.params.pending_rows

    def _flush(self) -> list:
        assert self.decider is not None
        probs = self._run()
        out: list = []
        k = 0
        for plan, _ in self.queue:
            n = plan.flows_decided if self.flow_model else int(plan.send.sum())
            for r in self.decider.resolve(plan, probs[k : k + n]):
                self._ends_before(r.start, out)  # a file's FileEnd goes before the next file's rows
                out.append(self._scored(r))
            k += n
        self.queue, self.inputs, self.queued_rows = [], 0, 0
        self._ends_before(self.decider.rows - self.decider.held_rows, out)
        return out

    def _ends_before(self, row: int, out: list) -> None:
        """FileEnd markers of the files whose rows all come before unit row `row`."""
        while self.ends and self.ends[0][0] <= row:
            out.append(self.ends.popleft()[1])

    def _run(self) -> np.ndarray:
        """The model on every queued plan's inputs, in order."""
        probs = np.empty((self.inputs, self.n_classes), np.float32)
        if not self.inputs:
            return probs
        self.engine_rows += self.inputs
        runner = self.runner
        if isinstance(runner, FlowModelRunner):
            plans = [plan for plan, _ in self.queue if plan.flows_decided]
            rows = np.concatenate([p.flow_rows for p in plans if p.flow_rows is not None])
            return runner.infer_flows(rows, np.concatenate([flow_feats(p) for p in plans]))
        x = np.concatenate([rows for _, rows in self.queue if rows is not None and len(rows)])
        for lo in range(0, len(x), self.batch_size):
            hi = min(len(x), lo + self.batch_size)
            runner.infer(x[lo:hi], probs[lo:hi])
        return probs

    def _scored(self, r: Released) -> Scored:
        """Released rows as a Scored message of their file, with the flow columns in their metadata."""
        while len(self.chunks) > 1 and self.chunks[1][0] <= r.start:
            self.chunks.popleft()  # rows are released in order: earlier chunks are done
        _, file_index, path = self.chunks[0]
        meta = dict(r.meta)
        meta["decision_packets"] = r.decision_packets
        meta["flow_no"] = r.flow + (self.parts.get(file_index, 0) << PIECE_SHIFT)
        return Scored(file_index, path, meta, r.probs)


def flow_feats(plan: Plan) -> np.ndarray:
    """pkt_feats [F, K, 4] of the flows a plan decides, by pktnin.flow_features (the one definition)."""
    assert plan.flow_rows is not None and plan.flow_meta is not None
    f, k = plan.flow_rows.shape[:2]
    index = np.where(plan.flow_meta["present"], np.arange(f * k).reshape(f, k), -1)
    m = plan.flow_meta
    return pkt_feats(
        plan.flow_rows.reshape(f * k, -1), m["ts_ns"].reshape(-1), m["src_addr"].reshape(f * k, -1),
        m["src_port"].reshape(-1), index,
    )  # fmt: skip


def flow_engine_stage(stages: Stages, scorer: FlowScorer, in_q: queue.Queue, out_q: queue.Queue) -> None:
    """PacketBatch and FileEnd in, Scored (rows with their flow's decision) and FileEnd out, DONE at the end.
    Flows end with their file or byte range: they are decided by its FileEnd."""
    while True:
        item = stages.get(in_q)
        if item is DONE:
            for message in scorer.done():
                stages.put(out_q, message)
            stages.put(out_q, DONE)
            return
        for message in scorer.file_end(item) if isinstance(item, FileEnd) else scorer.batch(item):
            stages.put(out_q, message)
