"""The Python API: score captures into an Arrow table or a stream of record batches, or into files as
`pktnin score` does (the command is built on ScoreJob), and turn captures into rows.

    import pktnin
    table = pktnin.score(["a.pcap", "captures/"])          # pyarrow.Table, one row per scored packet
    df = table.to_pandas()
    for batch in pktnin.iter_scores(["big.pcap"]):          # pyarrow.RecordBatch, bounded memory
        ...
    rows = pktnin.preprocess(["a.pcap"])                    # dict of numpy arrays: x [N,1500], frame, ...

Paths are capture files, folders (walked recursively) or "-" (standard input). `model` is a .onnx, .keras or
.plan file or a bundled model's name; None takes the bundled default.
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pktnin.distributed.run import RayOptions, score_on_ray
from pktnin.engine.bundled import resolve_model
from pktnin.engine.cache import file_sha256
from pktnin.engine.flow_runner import FlowModelRunner, is_flow_model
from pktnin.engine.protocols import DeviceRunner
from pktnin.engine.runner_base import EngineChoice, Runner
from pktnin.engine.runners import open_runner_with_choice
from pktnin.errors import OptionError, UsageError
from pktnin.extras import check_model_file, missing_extra
from pktnin.flow_decide import FlowParams
from pktnin.packets import FileReport, find_captures, find_inputs, named_captures
from pktnin.rowfile import PrepOptions, row_arrays, save_row_file
from pktnin.scoring.chain import ChainSettings, start_chain
from pktnin.scoring.manifest import manifest_path, parts_dir
from pktnin.scoring.messages import FileEnd, Scored
from pktnin.scoring.options import DEFAULT_UNIT_BYTES, DEFAULT_UNIT_FILES, ScoreOptions, ScoreResult
from pktnin.scoring.outputs import check_outputs, write_report
from pktnin.scoring.run import score_files
from pktnin.scoring.units import make_units
from pktnin.scoring.warmup import warm_kernels
from pktnin.scoring.writer_stage import ScoredBuffer
from pktnin.scoring.writers import packet_batch, packet_schema
from pktnin.stages import DONE, Progress, Stages, Stopped
from pktnin.storage import Location, as_path, is_uri

PathLike = str | os.PathLike
DEFAULT_BATCH = 512


@dataclass
class ScoreJob:
    """A scoring run set up and checked (inputs found, model opened, outputs checked), ready to run once."""

    files: list[Location]
    named: AbstractSet[Location]
    runner: Runner | FlowModelRunner  # a ModelRunner, a DeviceRunner or a flow model
    opts: ScoreOptions
    model_path: Path
    backend: str = "auto"
    ray: RayOptions | None = None  # score the units on Ray instead of in this process
    choice: EngineChoice | None = None  # what runs the model and why
    # seconds spent apart from scoring: "model" (load and engine choice), "kernels" (numba compile or cache
    # load), "ray_start"; after run, "scoring" (the units) and "outputs" (checks, assembly, cleanup)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def prepare(
        cls,
        paths: Sequence[PathLike],
        out: PathLike,
        model: PathLike | None = None,
        *,
        flows: PathLike | None = None,
        fmt: str | None = None,
        probs: bool = False,
        resume: bool = False,
        force: bool = False,
        report: PathLike | None = None,
        keep_dns: bool = False,
        mask: str = "paper",
        backend: str = "auto",
        precision: str = "auto",
        engine_workers: int | None = None,
        batch: int = DEFAULT_BATCH,
        threads: int | None = None,
        prep_threads: int | None = None,
        ray: RayOptions | None = None,
        unit_bytes: int = DEFAULT_UNIT_BYTES,
        unit_files: int = DEFAULT_UNIT_FILES,
        decide: str | None = None,
        flow_packets: int | None = None,
        flow: FlowParams | None = None,
    ) -> ScoreJob:
        """Raises UsageError (OptionError, OutputError) or FileNotFoundError for what cannot work, before any
        packet is read. `unit_bytes`, `unit_files`: the units of work (scoring.units). `decide`: packet or flow
        (None: flow for a flow model, else packet); `flow_packets`: K, the rows of each flow the decision uses (a
        flow model's own K by default); `flow`: a flow_decide.FlowParams for the timeouts and limits of the flow
        table."""
        opts = ScoreOptions(
            out=as_path(out), flows_out=None if flows is None else as_path(flows), fmt=fmt, probs=probs,
            resume=resume, force=force, report=None if report is None else as_path(report),
            keep_dns=keep_dns, mask=mask, batch=batch, prep_threads=prep_threads, unit_bytes=unit_bytes,
            unit_files=unit_files,
        )  # fmt: skip
        files = find_inputs(paths)
        targets = [opts.out, manifest_path(opts.out)] + [p for p in (opts.flows_out, opts.report) if p is not None]
        files = [f for f in files if not _own_output(f, targets, parts_dir(opts.out))]
        if not files:
            raise UsageError("no capture files found in the given paths")
        started = time.perf_counter()
        runner, model_path, choice = open_model(model, backend, threads, batch, precision, engine_workers)
        timings = {"model": time.perf_counter() - started}
        try:
            decide, flow = flow_options(runner, decide, flow_packets, flow)
            opts = replace(
                opts,
                decide=decide,
                flow=flow,
                prep_threads=prep_threads or _default_prep_threads(runner),
                model_id=_model_id(model_path, runner),
                model_name=Path(model_path).name,
                engine=choice.label,
                agreement=json.dumps(choice.agreement, sort_keys=True),
            )
            check_outputs(opts, opts.settings(list(runner.classes)), files)
        except BaseException:
            runner.close()
            raise
        return cls(files, named_captures(files, paths), runner, opts, Path(model_path), backend, ray, choice, timings)

    def run(self, progress: Progress | None = None) -> ScoreResult:
        """Score every file into the outputs; returns the ScoreResult. Closes the model."""
        started = time.perf_counter()
        try:
            if self.ray is not None:
                result = score_on_ray(self.files, self.opts, self.runner, self.model_path, self.backend, self.ray,
                                      progress, named=self.named, timings=self.timings)  # fmt: skip
            else:
                if not isinstance(self.runner, DeviceRunner):  # the GPU path compiles its own kernels
                    kernels = time.perf_counter()
                    warm_kernels()
                    self.timings["kernels"] = time.perf_counter() - kernels
                result = score_files(self.files, self.runner, self.opts, progress=progress, named=self.named)
        finally:
            self.runner.close()
        if self.opts.report is not None:
            write_report(result.reports, self.opts.report)
        apart = sum(self.timings.get(k, 0.0) for k in ("kernels", "ray_start"))
        self.timings["scoring"] = result.seconds
        self.timings["outputs"] = max(0.0, time.perf_counter() - started - apart - result.seconds)
        return result


def score_to_files(
    paths: Sequence[PathLike],
    out: PathLike,
    model: PathLike | None = None,
    progress: Progress | None = None,
    **kw: Any,
) -> ScoreResult:
    """Score into files as `pktnin score` does (keywords as ScoreJob.prepare); returns the ScoreResult."""
    return ScoreJob.prepare(paths, out, model, **kw).run(progress)


def iter_scores(
    paths: Sequence[PathLike],
    model: PathLike | None = None,
    *,
    probs: bool = False,
    keep_dns: bool = False,
    mask: str = "paper",
    backend: str = "auto",
    precision: str = "auto",
    engine_workers: int | None = None,
    batch: int = DEFAULT_BATCH,
    threads: int | None = None,
    prep_threads: int | None = None,
    reports: list[FileReport] | None = None,
    decide: str | None = None,
    flow_packets: int | None = None,
    flow: FlowParams | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of per-packet predictions (the columns `pktnin score` writes), in input order, as they
    are scored: memory stays bounded whatever the inputs' size. `reports`, when given, receives one FileReport
    per input file as it is finished. Stopping the iteration early stops the run. `decide`, `flow_packets`,
    `flow`: as ScoreJob.prepare."""
    opts = ScoreOptions(out=Path("-"), fmt="parquet", probs=probs, keep_dns=keep_dns, mask=mask, batch=batch,
                        prep_threads=prep_threads)  # fmt: skip
    files = find_inputs(paths)
    named = named_captures(files, paths)
    runner, model_path, choice = open_model(model, backend, threads, batch, precision, engine_workers)
    try:
        decide, flow = flow_options(runner, decide, flow_packets, flow)
        opts = replace(opts, prep_threads=prep_threads or _default_prep_threads(runner), decide=decide, flow=flow,
                       model_id=_model_id(model_path, runner), model_name=Path(model_path).name, engine=choice.label,
                       agreement=json.dumps(choice.agreement, sort_keys=True))  # fmt: skip
        classes = list(runner.classes)
        schema = packet_schema(classes, probs).with_metadata(opts.metadata(classes))
        class_names = pa.array(classes, type=pa.string())
        settings = ChainSettings.of(opts)
        # The units of a run writing files: per-unit state (a stage inserted by ChainHooks) resets at the same
        # places as in score_to_files, on either executor.
        for unit in make_units(files, opts.settings(classes), opts.unit_bytes, opts.unit_files):
            stages = Stages()
            try:
                scored_q = start_chain(stages, runner, unit, settings, named=named)
                yield from _stream(stages, scored_q, class_names, schema, reports)
            finally:
                stages.finish()
            stages.raise_error()
    finally:
        runner.close()


def _stream(
    stages: Stages,
    scored_q: queue.Queue,
    class_names: pa.Array,
    schema: pa.Schema,
    reports: list[FileReport] | None,
) -> Iterator[pa.RecordBatch]:
    """The streaming sink: Scored pieces gathered into record batches, one file at a time."""
    waiting = ScoredBuffer()

    def flush() -> Iterator[pa.RecordBatch]:
        gathered = waiting.take()
        if gathered is not None:
            name, meta, probs = gathered
            yield packet_batch(name, meta, probs, class_names, schema)[0]

    while True:
        try:
            item = stages.get(scored_q)
        except Stopped:
            return
        if item is DONE:
            return
        if isinstance(item, Scored):
            if waiting.items and item.file_index != waiting.items[0].file_index:
                yield from flush()
            if waiting.add(item):
                yield from flush()
        elif isinstance(item, FileEnd):
            yield from flush()
            if reports is not None:
                reports.append(item.report)


def score(paths: Sequence[PathLike], model: PathLike | None = None, **kw: Any) -> pa.Table:
    """Per-packet predictions of every input as one Arrow table (keywords as iter_scores); `.to_pandas()` for
    a DataFrame. For inputs too big for memory, iterate iter_scores or use score_to_files."""
    batches = list(iter_scores(paths, model, **kw))
    if batches:
        return pa.Table.from_batches(batches)
    runner, _, _ = open_model(model, kw.get("backend", "auto"), None, kw.get("batch", DEFAULT_BATCH), "fp32")
    try:
        return packet_schema(list(runner.classes), kw.get("probs", False)).empty_table()
    finally:
        runner.close()


def preprocess(
    paths: Sequence[PathLike],
    out: PathLike | None = None,
    *,
    mask: str = "paper",
    keep_dns: bool = False,
    reports: list[FileReport] | None = None,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Rows (`x` uint8 [N,1500]) and per-packet metadata of every input, as `pktnin preprocess` stores them;
    written to `out` (.npz, atomically) when given. `reports`, when given, receives the per-file reports."""
    opts = PrepOptions(mask=mask, keep_dns=keep_dns)
    files = find_captures(paths)
    arrays, file_reports = row_arrays(files, opts, progress=progress, named=named_captures(files, paths))
    if reports is not None:
        reports.extend(file_reports)
    if out is not None:
        save_row_file(arrays, out)
    return arrays


def open_model(
    model: PathLike | None,
    backend: str = "auto",
    threads: int | None = None,
    batch: int = DEFAULT_BATCH,
    precision: str = "auto",
    engine_workers: int | None = None,
) -> tuple[Runner | FlowModelRunner, Path, EngineChoice]:
    """(runner, model path, engine choice): the model given, or the bundled default. `precision` auto picks the
    fastest engine that agrees with fp32; `engine_workers` None measures one multi-thread session against
    single-thread ones. A flow model runs on ONNX Runtime in float32."""
    model_path = resolve_model(model)  # a file, a bundled model's name, or None: the default bundled model
    check_model_file(model_path)
    if is_flow_model(model_path):
        if backend not in ("auto", "onnxruntime") or precision not in ("auto", "fp32"):
            raise OptionError(f"{Path(model_path).name} is a flow model: it runs on ONNX Runtime in fp32")
        flow_runner = FlowModelRunner(model_path, intra_threads=threads, max_batch=batch)
        return flow_runner, model_path, EngineChoice("onnxruntime fp32", "a flow model runs on ONNX Runtime in fp32")
    try:
        runner, choice = open_runner_with_choice(model_path, backend, intra_threads=threads, max_batch=batch,
                                                 precision=precision, engine_workers=engine_workers)  # fmt: skip
    except ModuleNotFoundError as exc:
        # a checkpoint is exported with the training tools, whichever of them is missing
        extra = "train" if Path(model_path).suffix == ".keras" else None
        raise (missing_extra(exc, f"model {Path(model_path).name}", extra) or exc) from None
    return runner, model_path, choice


def flow_options(
    runner: Runner | FlowModelRunner, decide: str | None, flow_packets: int | None, flow: FlowParams | None = None
) -> tuple[str, FlowParams]:
    """(decide, FlowParams) for a run with `runner`: a flow model decides per flow with its own K; any other
    model per packet unless told, with K = flow_packets (default FlowParams().packets)."""
    flow = flow or FlowParams()
    if isinstance(runner, FlowModelRunner):
        if decide == "packet":
            raise OptionError(f"{runner.path.name} is a flow model: it decides per flow (--decide flow)")
        if flow_packets is not None and flow_packets != runner.flow_packets:
            raise OptionError(
                f"{runner.path.name} decides from the first {runner.flow_packets} packets of each flow, not {flow_packets}"
            )
        return "flow", replace(flow, packets=runner.flow_packets)
    if flow_packets is not None and decide != "flow":
        raise OptionError("--flow-packets goes with --decide flow")
    return decide or "packet", replace(flow, packets=flow.packets if flow_packets is None else flow_packets)


def _default_prep_threads(runner: Runner | FlowModelRunner) -> int | None:
    # One numba thread beside a CPU engine, which needs the cores; all of them when the model runs elsewhere.
    return 1 if runner.backend in ("onnxruntime", "openvino") else None


def _model_id(model_path: Path, runner: Runner | FlowModelRunner) -> str:
    return f"{file_sha256(model_path)}:{runner.backend}:{runner.precision}"


def _own_output(path: Location, targets: list[Location], parts: Location) -> bool:
    """An earlier output (or its manifest or parts) inside an input folder or prefix is not an input."""
    if str(path) == "-":
        return False
    if is_uri(path):
        return any(path == str(t) for t in targets) or str(path).startswith(str(parts) + "/")
    path = Path(path).resolve()
    local = [Path(t).resolve() for t in targets if not is_uri(t)]
    return any(path == t for t in local) or (not is_uri(parts) and Path(parts).resolve() in path.parents)
