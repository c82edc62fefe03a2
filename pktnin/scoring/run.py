"""The one driver of a scoring run, whatever executor scores its units (no Ray import here).

run_units(files, opts, classes, executor, ...)
    1. under the output's lock (outdir): the settings, the resume manifest (scoring.manifest; its entries
       are unit summaries keyed by unit id), the parts folder;
    2. the units (scoring.units: a file, a byte range of a large file, a group of small files) minus those
       finished before: recorded in the manifest, or finished by a worker after its last save (a summary lies
       beside its part);
    3. executor(todo, parts_dir, progress) -> unit summaries, in any order; each one is recorded in the
       manifest (saved at most every SAVE_S seconds, after each unit when `on_saved` is given, and at the end);
    4. the outputs: packet parts concatenated in input order (units are in input order), flows reduced per file
       from its pieces' partials, both written atomically; then the parts and the manifest are removed (with
       keep_parts the packet parts stay in OUT.parts/ as a Parquet dataset and only flows are written).

Executors: unit_run.LocalExecutor (in this process, the default) and distributed.ray_executor.RayExecutor (Ray
Data actors). Both score the same units through the same chain (scoring.chain), so their outputs are equal
row for row. score_files is the local run.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pktnin import outdir
from pktnin.engine.flow_runner import FlowModelRunner
from pktnin.engine.protocols import DeviceRunner, ModelRunner
from pktnin.packets import FileReport, PacketBatch, iter_packets
from pktnin.scoring import manifest as mf
from pktnin.scoring.chain import NO_HOOKS, ChainHooks
from pktnin.scoring.cpu_stages import input_size
from pktnin.scoring.flows import FlowAccumulator, flow_schema
from pktnin.scoring.options import ScoreOptions, ScoreResult
from pktnin.scoring.outputs import check_outputs
from pktnin.scoring.reports import merge_reports
from pktnin.scoring.unit_run import STATE_DIR, LocalExecutor, load_flow_states, load_summary
from pktnin.scoring.units import INDEX_STEP_RECORDS, Piece, Unit, make_units
from pktnin.scoring.writers import ROW_GROUP_ROWS, packet_schema, write_batches_to
from pktnin.stages import Progress
from pktnin.storage import Location, as_path, join

SAVE_S = 2.0


class Executor(Protocol):
    """Scores units into the parts folder; yields each unit's summary (unit_run.score_unit) as it is finished."""

    live_progress: bool  # True: it tells `progress` of packets as they are scored; else the driver does per unit

    def __call__(
        self, units: Sequence[Unit], parts_dir: Location, progress: Progress | None = None
    ) -> Iterable[dict]: ...


def score_files(
    files: Sequence[Location],
    runner: ModelRunner | DeviceRunner | FlowModelRunner,
    opts: ScoreOptions,
    progress: Progress | None = None,
    source: Callable[..., Iterator[PacketBatch]] = iter_packets,
    on_saved: Callable[[list[FileReport]], None] | None = None,
    named: AbstractSet[Location] | None = None,
    hooks: ChainHooks = NO_HOOKS,
) -> ScoreResult:
    """Score `files` (already expanded) in this process with `runner`; write the outputs named in `opts`.

    `source` stands in for packets.iter_packets; `named`: the files the user named (packets.iter_raw_batches:
    others that are not captures are no failure); `hooks`: stages inserted per unit (scoring.chain);
    `on_saved`: see run_units."""
    executor = LocalExecutor(runner, opts, hooks=hooks, source=source, named=named)
    return run_units(files, opts, list(runner.classes), executor, progress=progress, on_saved=on_saved)


def run_units(
    files: Sequence[Location],
    opts: ScoreOptions,
    classes: list[str],
    executor: Executor,
    *,
    progress: Progress | None = None,
    on_saved: Callable[[list[FileReport]], None] | None = None,
    keep_parts: bool = False,
    step_records: int = INDEX_STEP_RECORDS,
) -> ScoreResult:
    """Score `files` by units run by `executor`; returns the ScoreResult.

    `progress` (optional) has add_packets(n), add_bytes(n) and file_done(n=1), and may have set_units(total,
    done) and unit_done(); `on_saved` is called with the reports of each finished unit's pieces once the unit
    and the manifest are saved. The outputs are checked first (scoring.outputs.check_outputs: OutputError). When
    not one input could be read, no output is written. One run per output at a time: a second one raises
    outdir.OutputBusyError; side files planted by someone else raise outdir.UnsafeOutputError (see outdir)."""
    targets: list[Location] = [opts.out] + ([opts.flows_out] if opts.flows_out is not None else [])
    with outdir.output_lock(targets):
        run = _Run(files, opts, classes, targets, step_records)
        try:
            return run.score(executor, progress, on_saved, keep_parts)
        finally:
            run.held.close()


class _Run:
    """One run under its lock: the manifest, the units, what is finished."""

    def __init__(self, files: Sequence[Location], opts: ScoreOptions, classes: list[str], targets: list[Location],
                 step_records: int) -> None:  # fmt: skip
        self.files, self.opts, self.classes = list(files), opts, list(classes)
        settings = opts.settings(classes)
        self.parts = mf.parts_dir(opts.out)
        check_outputs(opts, settings, self.files)  # before anything is touched: refuse rather than lose earlier work
        self.manifest, _ = mf.open_run(opts.out, settings, opts.resume, targets)
        outdir.make_dir(join(self.parts, STATE_DIR))
        # Held for the whole run: the driver reads back through it only, and publishes nothing if the folder's
        # name stops leading to it (a swap in a shared directory cannot feed the outputs other rows).
        self.held = outdir.hold_dir(self.parts)
        self.manifest.temps = self.held
        self.units = make_units(self.files, settings, opts.unit_bytes, opts.unit_files, step_records)
        # Finished units: recorded in the manifest, or finished by a worker after the manifest's last save.
        self.finished: dict[str, dict] = {}
        for u in self.units:
            if u.reusable and (u.id in self.manifest.files or opts.resume):
                summary = load_summary(self.parts, u.id, self.held)
                if summary is not None:
                    self.finished[u.id] = summary
        self.manifest.files = dict(self.finished)
        self.manifest.save()
        mf.prune_units(self.parts, set(self.finished))
        self.unit_bytes = {u.id: sum(_piece_bytes(p) for p in u.pieces) for u in self.units}
        self.units_of_file: dict[int, list[Unit]] = defaultdict(list)
        for u in self.units:
            for p in u.pieces:
                self.units_of_file[p.file_index].append(u)

    def score(
        self,
        executor: Executor,
        progress: Progress | None,
        on_saved: Callable[[list[FileReport]], None] | None,
        keep_parts: bool,
    ) -> ScoreResult:
        opts = self.opts
        todo = [u for u in self.units if u.id not in self.finished]
        left = {i: sum(1 for u in us if u.id not in self.finished) for i, us in self.units_of_file.items()}
        resumed = sum(1 for n in left.values() if n == 0)
        if progress is not None and resumed:
            progress.file_done(resumed)
        add_bytes = getattr(progress, "add_bytes", None)  # optional: a progress may count packets only
        set_units, unit_done = getattr(progress, "set_units", None), getattr(progress, "unit_done", None)  # optional
        if set_units is not None:  # units of work done of all, earlier runs' included
            set_units(len(self.units), len(self.finished))
        if add_bytes is not None and self.finished:  # work done by an earlier run: at the bar's start
            add_bytes(sum(self.unit_bytes[i] for i in self.finished), 0)

        started = time.perf_counter()
        packets = records = 0
        nodes: dict[str, int] = defaultdict(int)
        last_save = time.monotonic()
        self.held.check_unchanged()
        for summary in executor(todo, self.parts, progress):
            self.finished[summary["id"]] = summary
            self.manifest.files[summary["id"]] = {k: v for k, v in summary.items() if k != "skipped"}
            if on_saved is not None or time.monotonic() - last_save >= SAVE_S:
                self.manifest.save()
                last_save = time.monotonic()
            packets += summary["packets"]
            records += summary["records"]
            if summary.get("node"):
                nodes[summary["node"]] += 1
            if progress is not None and not executor.live_progress:  # told per unit: its bytes are scored work
                if add_bytes is not None:
                    add_bytes(self.unit_bytes[summary["id"]], summary["packets"])
                progress.add_packets(summary["packets"])
            if unit_done is not None:
                unit_done()
            for f in summary["files"]:
                left[f["file_index"]] -= 1
                if progress is not None and left[f["file_index"]] == 0:
                    progress.file_done()
            if on_saved is not None:
                on_saved([mf.report_from_dict(f["report"]) for f in summary["files"]])
            # units write by name: stop before the next one when the parts folder is no longer the one held
            self.held.check_unchanged()
        self.manifest.save()
        seconds = time.perf_counter() - started
        missing = [u.id for u in self.units if u.id not in self.finished]
        if missing:
            raise RuntimeError(f"{len(missing)} units did not finish (first: {missing[0]}); rerun with --resume")

        ordered = [self.finished[u.id] for u in self.units]
        reports = [self._file_report(i) for i in range(len(self.files))]
        outputs: list[Location] = []
        rows, n_flows = 0, None
        if any(not (r.failed or r.not_capture) for r in reports):  # a run that read nothing writes nothing
            rows, n_flows = self._assemble(ordered, outputs, keep_parts)
        if not keep_parts:
            mf.clear_run(opts.out, self.manifest.part_names(), self.manifest)

        label_counts = np.zeros(len(self.classes), dtype=np.int64)
        for s in ordered:
            for f in s["files"]:
                label_counts += np.asarray(f["label_counts"], dtype=np.int64)
        return ScoreResult(
            files=self.files,
            reports=reports,
            classes=self.classes,
            label_counts=label_counts,
            packets=packets,
            records=records,
            seconds=seconds,
            resumed=resumed,
            rows_written=rows,
            flows_written=n_flows,
            outputs=outputs,
            units=len(self.units),
            nodes=dict(nodes),
        )

    def _pieces_of(self, index: int) -> Iterator[tuple[dict, int, dict]]:
        """(unit summary, piece number in the unit, piece entry) of file `index`, in order."""
        for u in self.units_of_file[index]:
            summary = self.finished[u.id]
            for number, f in enumerate(summary["files"]):
                if f["file_index"] == index:
                    yield summary, number, f

    def _file_report(self, index: int) -> FileReport:
        return merge_reports([mf.report_from_dict(f["report"]) for _, _, f in self._pieces_of(index)])

    def _assemble(self, ordered: list[dict], outputs: list[Location], keep_parts: bool) -> tuple[int, int | None]:
        """Write the outputs: every one staged first, read from the parts through the held folder, then all put
        in place together once the folder is checked unchanged; a failure publishes none of them."""
        opts, classes = self.opts, self.classes
        fmt = opts.fmt
        assert fmt is not None  # ScoreOptions sets it when made
        metadata = opts.metadata(classes)
        rows = sum(s["packets"] for s in ordered)
        n_flows = None
        self.held.check_unchanged()
        with self.held.staging() as staging:
            if keep_parts:
                outputs.append(self.parts)
            else:
                schema = packet_schema(classes, opts.probs)
                names = [s["part"] for s in ordered if s.get("part")]
                with staging.create(opts.out) as sink:
                    rows = write_batches_to(sink, self._part_batches(names), schema, fmt, metadata)
                outputs.append(opts.out)
            if opts.flows_out is not None:
                fschema = flow_schema(classes, opts.probs)
                with staging.create(opts.flows_out) as sink:
                    n_flows = write_batches_to(sink, self._flow_batches(fschema), fschema, fmt, metadata)
                outputs.append(opts.flows_out)
            staging.publish()
        return rows, n_flows

    def _part_batches(self, names: list[str]) -> Iterator[pa.RecordBatch]:
        for name in names:
            with self.held.open_private(name) as fh:
                yield from pq.ParquetFile(fh).iter_batches(batch_size=ROW_GROUP_ROWS)

    def _flow_batches(self, fschema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """Each file's flows, its pieces' partials folded in order (a flow may span the byte ranges of a file)."""
        class_array = pa.array(self.classes, type=pa.string())
        states: dict[str, dict[int, dict[str, np.ndarray]]] = {}
        for i, path in enumerate(self.files):
            acc = FlowAccumulator(len(self.classes), self.opts.decide == "flow")
            for summary, number, f in self._pieces_of(i):
                if f["flows"]:
                    if summary["id"] not in states:
                        states = {summary["id"]: load_flow_states(self.parts, summary, self.held)}  # one at a time
                    acc.add_partial(states[summary["id"]][number])
            yield from acc.table(str(path), class_array, fschema).to_batches()


def _piece_bytes(piece: Piece) -> int:
    """Bytes of a piece: its byte range, or the whole file's size when the units were cut (0 for a stream)."""
    size = piece.stamp["size"] if piece.stamp is not None else input_size(as_path(piece.path))
    if piece.whole:
        return size
    return (size if piece.stop is None else piece.stop) - (piece.start or 0)
