"""The writer stage of the scoring pipeline: Scored pieces and FileEnd markers in, Parquet parts out.

Per-packet Arrow batches go into the open part's packet file, per-flow aggregation into its flow file; at a
FileEnd the file's manifest entry joins the part, and the part is closed (renamed into place) and recorded in
the manifest when the next file to score does not follow this one, or the part is big or old enough. A killed
run so loses at most one part, and `--resume` reuses every recorded one. The final outputs are assembled from
the parts afterwards (pipeline.score_files).
"""

from __future__ import annotations

import queue
import secrets
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pktnin.packets import FileReport
from pktnin.score import manifest as mf
from pktnin.score.flows import FlowAccumulator, flow_schema
from pktnin.score.options import ScoreOptions
from pktnin.score.stages import DONE, Scored, Stages
from pktnin.score.writers import PartWriter, packet_batch, packet_schema

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
    """The open part: packet rows (and flows) of a run of consecutive input files, renamed into place by close()."""

    def __init__(self, parts: Path, name: str, schema: pa.Schema, fschema: pa.Schema | None) -> None:
        self.packet_name = f"{name}.packets.parquet"
        self.flow_name = f"{name}.flows.parquet"
        self.parts = parts
        self.schema, self.fschema = schema, fschema
        self.packets: PartWriter | None = None
        self.flows: PartWriter | None = None
        self.finished: list[tuple[Path, dict]] = []  # (input file, manifest entry) of the files in this part
        self.opened = time.monotonic()

    @property
    def rows(self) -> int:
        return 0 if self.packets is None else self.packets.rows

    def write_packets(self, batch: pa.RecordBatch) -> None:
        if self.packets is None:
            self.packets = PartWriter(self.parts / self.packet_name, self.schema)
        self.packets.write(batch)

    def write_flows(self, table: pa.Table) -> None:
        if self.flows is None:
            self.flows = PartWriter(self.parts / self.flow_name, self.fschema)
        self.flows.write(table)

    def close(self) -> list[tuple[Path, dict]]:
        for writer in (self.packets, self.flows):
            if writer is not None:
                writer.close()
        return self.finished

    def abort(self) -> None:
        for writer in (self.packets, self.flows):
            if writer is not None:
                writer.abort()


class ScoreWriter:
    """Consumes scored pieces and FileEnd markers in order; closes parts and records them in the manifest.

    stamps: file index -> file_stamp taken before reading; next_todo: file index -> index of the next file
    this run scores (None for the last); progress: optional, with add_packets(n) and file_done();
    on_saved: optional, called with the reports of a part's files once the part and the manifest are saved.
    """

    def __init__(
        self,
        opts: ScoreOptions,
        classes: list[str],
        manifest: mf.Manifest,
        parts: Path,
        stamps: dict[int, dict | None],
        next_todo: dict[int, int | None],
        progress=None,
        on_saved=None,
    ) -> None:
        self.opts = opts
        self.classes = pa.array(classes, type=pa.string())
        self.n_classes = len(classes)
        self.schema = packet_schema(classes, opts.probs)
        self.fschema = flow_schema(classes, opts.probs) if opts.flows_out is not None else None
        self.manifest, self.parts = manifest, parts
        self.stamps, self.next_todo = stamps, next_todo
        self.progress, self.on_saved = progress, on_saved
        self.run_id = secrets.token_hex(4)  # part names never collide with the reused parts of earlier runs
        self.part_seq = 0
        self.part: Part | None = None
        self.file_rows = 0
        self.file_counts = np.zeros(self.n_classes, dtype=np.int64)
        self.file_flows: FlowAccumulator | None = None
        self.waiting = ScoredBuffer()  # scored pieces of the current file not yet written
        self.packets = 0
        self.records = 0

    def _open_part(self) -> Part:
        if self.part is None:
            self.part_seq += 1
            self.part = Part(self.parts, f"{self.run_id}-{self.part_seq:06d}", self.schema, self.fschema)
        return self.part

    def scored(self, item: Scored) -> None:
        if self.waiting.add(item):
            self._write_waiting()

    def _write_waiting(self) -> None:
        gathered = self.waiting.take()
        if gathered is None:
            return
        name, meta, probs = gathered
        batch, idx = packet_batch(name, meta, probs, self.classes, self.schema)
        self._open_part().write_packets(batch)
        self.file_rows += len(idx)
        self.file_counts += np.bincount(idx, minlength=self.n_classes)
        if self.fschema is not None:
            if self.file_flows is None:
                self.file_flows = FlowAccumulator(self.n_classes, self.opts.decide == "flow")
            self.file_flows.add(meta, probs)
        self.packets += len(idx)
        if self.progress is not None:
            self.progress.add_packets(len(idx))

    def file_end(self, report: FileReport) -> None:
        self._write_waiting()
        part = self._open_part()
        n_flows = 0
        if self.file_flows is not None:
            table = self.file_flows.table(str(report.path), self.classes, self.fschema)
            part.write_flows(table)
            n_flows = table.num_rows
        entry = {
            "stamp": self.stamps[report.index],
            "part": part.packet_name if self.file_rows else None,
            "flows_part": part.flow_name if n_flows else None,
            "packets": self.file_rows,
            "flows": n_flows,
            "label_counts": self.file_counts.tolist(),
            "report": mf.report_to_dict(report),
        }
        part.finished.append((report.path, entry))
        self.file_rows, self.file_flows = 0, None
        self.file_counts = np.zeros(self.n_classes, dtype=np.int64)
        self.records += report.records
        if self.progress is not None:
            self.progress.file_done()
        # A part covers consecutive input files only, so the final output keeps the input order.
        following = self.next_todo[report.index]
        if (
            following != report.index + 1
            or part.rows >= self.opts.part_rows
            or time.monotonic() - part.opened >= self.opts.part_seconds
        ):
            self.close_part()

    def close_part(self) -> None:
        if self.part is None:
            return
        part, self.part = self.part, None
        finished = part.close()
        self.manifest.record(finished)
        if self.on_saved is not None:
            self.on_saved([mf.report_from_dict(e["report"]) for _, e in finished])

    def abort(self) -> None:
        """Drop the open part (its temporary files); closed parts stay for --resume."""
        if self.part is not None:
            self.part.abort()
            self.part = None


def write_stage(stages: Stages, writer: ScoreWriter, in_q: queue.Queue) -> None:
    """Scored and FileEnd in, until DONE; then the last part is closed."""
    while True:
        item = stages.get(in_q)
        if item is DONE:
            writer.close_part()
            return
        if isinstance(item, Scored):
            writer.scored(item)
        else:
            writer.file_end(item.report)
