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

import numpy as np

from pktnin.flow_decide import FlowDecider, FlowParams, Plan, Released
from pktnin.packets import PacketBatch
from pktnin.scoring.flow_model import FlowModelRunner
from pktnin.scoring.messages import FileEnd, Scored
from pktnin.stages import DONE, Stages

PIECE_SHIFT = 40  # flow_no = piece part << PIECE_SHIFT | flow number in the piece: distinct across a file's pieces


class FlowScorer:
    """The engine side of one run in flow mode: FlowDeciders (one per unit) and model calls on what they ask."""

    def __init__(self, runner, params: FlowParams, batch_size: int, parts: dict[int, int] | None = None) -> None:
        # parts: file index -> the position of the unit's piece of that file among the file's pieces (0 for a
        # whole file), so that flow numbers stay distinct across a file's pieces
        self.runner = runner
        self.flow_model = isinstance(runner, FlowModelRunner)
        self.params = params
        self.batch_size = batch_size
        self.n_classes = len(runner.classes)
        self.parts = parts or {}
        self.decider: FlowDecider | None = None
        self.open = False  # the decider holds a unit that has not ended
        self.engine_rows = 0  # rows (per-packet model) or flows (flow model) the model was run on

    def batch(self, rows: np.ndarray, meta: dict[str, np.ndarray]) -> list[Released]:
        """Rows of the current unit, in order; the rows whose decision is now known."""
        if self.decider is None:
            self.decider = FlowDecider(self.n_classes, self.params, flow_model=self.flow_model)
            self.open = True
        elif not self.open:
            self.decider.reset()  # a new unit: cheaper than a new table for many small files
            self.open = True
        out: list[Released] = []
        lo = 0
        for plan in self.decider.assign(rows, meta):
            out += self.decider.resolve(plan, self._run(plan, rows[lo : lo + plan.n]))
            lo += plan.n
        return out

    def unit_end(self) -> list[Released]:
        """The unit's end: its waiting flows decided, its last rows released; the next rows start a new unit."""
        if self.decider is None or not self.open:
            return []
        plan = self.decider.finish()
        out = self.decider.resolve(plan, self._run(plan, None))
        self.open = False
        return out

    def _run(self, plan: Plan, rows: np.ndarray | None) -> np.ndarray:
        if self.flow_model:
            if not plan.flows_decided:
                return np.empty((0, self.n_classes), np.float32)
            assert plan.flow_rows is not None and plan.flow_meta is not None
            self.engine_rows += plan.flows_decided
            return self.runner.infer_flows(plan.flow_rows, flow_feats(plan))
        idx = np.flatnonzero(plan.send)
        probs = np.empty((len(idx), self.n_classes), np.float32)
        if len(idx):
            assert rows is not None
            for lo in range(0, len(idx), self.batch_size):
                hi = min(len(idx), lo + self.batch_size)
                self.runner.infer(rows[idx[lo:hi]], probs[lo:hi])
        self.engine_rows += len(idx)
        return probs

    def scored(self, file_index: int, path, released: list[Released]) -> list[Scored]:
        """Released rows as Scored messages with the flow columns in their metadata."""
        out = []
        for r in released:
            meta = dict(r.meta)
            meta["decision_packets"] = r.decision_packets
            meta["flow_no"] = r.flow + (self.parts.get(file_index, 0) << PIECE_SHIFT)
            out.append(Scored(file_index, path, meta, r.probs))
        return out


def flow_feats(plan: Plan) -> np.ndarray:
    """pkt_feats [F, K, 4] of the flows a plan decides, by pktnin.flow_features (the one definition)."""
    from pktnin.flow_features import pkt_feats

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
    current: PacketBatch | None = None  # a chunk of the unit now read
    while True:
        item = stages.get(in_q)
        if item is DONE or isinstance(item, FileEnd):
            if current is not None:
                for s in scorer.scored(current.file_index, current.path, scorer.unit_end()):
                    stages.put(out_q, s)
                current = None
            stages.put(out_q, item)
            if item is DONE:
                return
            continue
        current = item
        for s in scorer.scored(item.file_index, item.path, scorer.batch(item.rows, item.meta)):
            stages.put(out_q, s)
