"""The writer stage of a unit: Scored pieces and FileEnd markers in, one Parquet part out.

Per-packet Arrow batches go into the unit's part (renamed into place when the unit is finished); per piece of
the unit, its counts, report and per-flow partial sums are kept for the unit's summary (unit_run). The final
outputs are assembled from the parts afterwards (scoring.run).
"""

from __future__ import annotations

import queue

import numpy as np
import pyarrow as pa

from pktnin.packets import FileReport
from pktnin.scoring.flows import FlowAccumulator
from pktnin.scoring.manifest import report_to_dict
from pktnin.scoring.messages import Scored
from pktnin.scoring.options import ScoreOptions
from pktnin.scoring.units import Unit
from pktnin.scoring.writers import PartWriter, packet_batch, packet_schema
from pktnin.stages import DONE, Progress, Stages
from pktnin.storage import Location, join

WRITE_ROWS = 16384  # scored rows gathered before they become one Arrow batch


class ScoredBuffer:
    """Scored pieces of one file gathered until WRITE_ROWS: pieces are at most one engine batch, and one Arrow
    batch per gathered piece makes the Arrow work per call worth its overhead."""

    def __init__(self) -> None:
        self.items: list[Scored] = []
        self.rows = 0

    def add(self, item: Scored) -> bool:
        """Keep `item`; True when enough rows wait to be written."""
        self.items.append(item)
        self.rows += len(item.probs)
        return self.rows >= WRITE_ROWS

    def take(self) -> tuple[str, dict[str, np.ndarray], np.ndarray] | None:
        """(file name, metadata, probabilities) of every waiting piece, concatenated; None when nothing waits."""
        if not self.items:
            return None
        items, self.items, self.rows = self.items, [], 0
        meta = {k: np.concatenate([it.meta[k] for it in items]) for k in items[0].meta}
        return str(items[0].path), meta, np.concatenate([it.probs for it in items])


class Part:
    """The packet rows of one unit, written under a temporary name and renamed into place by close()."""

    def __init__(self, parts: Location, name: str, schema: pa.Schema) -> None:
        self.packet_name = f"{name}.packets.parquet"
        self.parts = parts
        self.schema = schema
        self.packets: PartWriter | None = None

    @property
    def rows(self) -> int:
        return 0 if self.packets is None else self.packets.rows

    def write_packets(self, batch: pa.RecordBatch) -> None:
        if self.packets is None:
            self.packets = PartWriter(join(self.parts, self.packet_name), self.schema)
        self.packets.write(batch)

    def close(self) -> None:
        if self.packets is not None:
            self.packets.close()

    def abort(self) -> None:
        if self.packets is not None:
            self.packets.abort()


class UnitWriter:
    """Scored pieces and FileEnd markers of one unit -> its packet part, and per piece (a file or a byte range
    of one) its counts, report and, with flows, its per-flow partial sums; finish() saves the flow partials and
    the unit's summary (unit_run). `progress` (optional) gets add_packets(n) as rows arrive scored."""

    def __init__(
        self, unit: Unit, opts: ScoreOptions, classes: list[str], parts_dir: Location, progress: Progress | None = None
    ) -> None:
        self.unit, self.parts_dir = unit, parts_dir
        self.classes = pa.array(classes, type=pa.string())
        self.n_classes = len(classes)
        self.part = Part(self.parts_dir, unit.id, packet_schema(classes, opts.probs))
        self.with_flows = opts.flows_out is not None
        self.by_flow = opts.decide == "flow"  # the flow table's rows: the flows the decision stage saw
        self.progress = progress
        self.piece_of = {p.file_index: p for p in unit.pieces}
        self.finished: list[dict] = []  # per finished piece, in order
        self.flow_states: dict[str, np.ndarray] = {}  # "<piece number>.<name>": the pieces' flow partials
        self.waiting = ScoredBuffer()  # scored pieces of the current file not yet written
        self._new_piece()

    def _new_piece(self) -> None:
        self.rows = 0
        self.counts = np.zeros(self.n_classes, dtype=np.int64)
        self.flows = FlowAccumulator(self.n_classes, self.by_flow) if self.with_flows else None

    def scored(self, item: Scored) -> None:
        if self.progress is not None:  # told as scored, not when written: rows wait to be written in big batches
            self.progress.add_packets(len(item.probs))
        if self.waiting.add(item):
            self._write_waiting()

    def _write_waiting(self) -> None:
        gathered = self.waiting.take()
        if gathered is None:
            return
        name, meta, probs = gathered
        batch, idx = packet_batch(name, meta, probs, self.classes, self.part.schema)
        self.part.write_packets(batch)
        self.rows += len(idx)
        self.counts += np.bincount(idx, minlength=self.n_classes)
        if self.flows is not None:
            self.flows.add(meta, probs)

    def file_end(self, report: FileReport) -> None:
        self._write_waiting()
        piece = self.piece_of[report.index]
        # Read to its end (or its error) by now: a file rewritten meanwhile would mix two versions in one output,
        # so it is this file's error, and its piece is never reused (unit_run.load_summary).
        changed = piece.changed()
        if changed:
            report.changed_while_read()
        number = len(self.finished)
        has_flows = self.flows is not None and self.flows.flows > 0
        if has_flows:
            assert self.flows is not None
            self.flow_states.update({f"{number}.{k}": v for k, v in self.flows.state().items()})
        self.finished.append(
            {
                "file_index": piece.file_index,
                "piece": piece.part,
                "pieces": piece.parts,
                "stamp": piece.stamp,
                "packets": self.rows,
                "label_counts": self.counts.tolist(),
                "report": report_to_dict(report),
                "flows": has_flows,
                "changed": changed,
            }
        )
        self._new_piece()

    def close(self) -> tuple[str | None, dict[str, np.ndarray]]:
        """Close the part; (its name, None when it holds no row) and the flow partials to save."""
        self._write_waiting()
        self.part.close()
        return (self.part.packet_name if self.part.rows else None), self.flow_states

    def abort(self) -> None:
        """Drop the part's temporary file."""
        self.part.abort()


def write_stage(stages: Stages, writer: UnitWriter, in_q: queue.Queue) -> None:
    """Scored and FileEnd in, until DONE."""
    while True:
        item = stages.get(in_q)
        if item is DONE:
            return
        if isinstance(item, Scored):
            writer.scored(item)
        else:
            writer.file_end(item.report)
