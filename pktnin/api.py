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

import os
import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pktnin.packets import FileReport, find_captures, iter_packets, named_captures

PathLike = str | os.PathLike
DEFAULT_BATCH = 512


@dataclass
class ScoreJob:
    """A scoring run set up and checked (inputs found, model opened, outputs checked), ready to run once."""

    files: list[Path]
    named: set[Path]
    runner: Any  # a Runner (engine.runner_base): ModelRunner or DeviceRunner
    opts: Any  # ScoreOptions
    model_path: Path
    backend: str = "auto"
    ray: Any = None  # distributed.run.RayOptions: score by shards on Ray instead of in this process

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
        ray=None,
        decide: str | None = None,
        flow_packets: int | None = None,
        flow=None,
    ) -> ScoreJob:
        """Raises UsageError (OptionError, OutputError) or FileNotFoundError for what cannot work, before any
        packet is read. `decide`: packet or flow (None: flow for a flow model, else packet); `flow_packets`: K,
        the rows of each flow the decision uses (a flow model's own K by default); `flow`: a
        flow_decide.FlowParams for the timeouts and limits of the flow table."""
        from pktnin.score import ScoreOptions
        from pktnin.score.manifest import manifest_path, parts_dir
        from pktnin.score.outputs import check_outputs

        opts = ScoreOptions(
            out=Path(out), flows_out=None if flows is None else Path(flows), fmt=fmt, probs=probs, resume=resume,
            force=force, report=None if report is None else Path(report),
            keep_dns=keep_dns, mask=mask, batch=batch, prep_threads=prep_threads,
        )  # fmt: skip
        files = find_captures(paths)
        targets = [opts.out, manifest_path(opts.out)] + [p for p in (opts.flows_out, opts.report) if p is not None]
        files = [f for f in files if not _own_output(f, targets, parts_dir(opts.out))]
        if not files:
            from pktnin.errors import UsageError

            raise UsageError("no capture files found in the given paths")
        runner, model_path = open_model(model, backend, threads, batch, precision, engine_workers)
        try:
            decide, flow = flow_options(runner, decide, flow_packets, flow)
            opts = replace(
                opts,
                decide=decide,
                flow=flow,
                prep_threads=prep_threads or _default_prep_threads(runner),
                model_id=_model_id(model_path, runner),
                model_name=Path(model_path).name,
            )
            check_outputs(opts, opts.settings(list(runner.classes)))
        except BaseException:
            runner.close()
            raise
        return cls(files, named_captures(files, paths), runner, opts, Path(model_path), backend, ray)

    def run(self, progress=None):
        """Score every file into the outputs; returns the ScoreResult. Closes the model."""
        from pktnin.score import score_files

        try:
            if self.ray is not None:
                from pktnin.distributed.run import score_on_ray

                result = score_on_ray(self.files, self.opts, self.runner, self.model_path, self.backend, self.ray,
                                      progress)  # fmt: skip
            else:
                result = score_files(self.files, self.runner, self.opts, progress=progress, named=self.named)
        finally:
            self.runner.close()
        if self.opts.report is not None:
            from pktnin.score.outputs import write_report

            write_report(result.reports, self.opts.report)
        return result


def score_to_files(paths: Sequence[PathLike], out: PathLike, model: PathLike | None = None, progress=None, **kw):
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
    flow=None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of per-packet predictions (the columns `pktnin score` writes), in input order, as they
    are scored: memory stays bounded whatever the inputs' size. `reports`, when given, receives one FileReport
    per input file as it is finished. Stopping the iteration early stops the run. `decide`, `flow_packets`,
    `flow`: as ScoreJob.prepare."""
    from pktnin.engine.protocols import DeviceRunner
    from pktnin.score import ScoreOptions
    from pktnin.score.cpu_stages import read_stage
    from pktnin.score.flow_stage import check_device_decide, start_engine
    from pktnin.score.pipeline import READ_QUEUE, SCORED_QUEUE
    from pktnin.score.stages import DONE, Scored, Stages, Stopped
    from pktnin.score.writer_stage import WRITE_ROWS
    from pktnin.score.writers import packet_batch, packet_schema

    opts = ScoreOptions(out=Path("-"), fmt="parquet", probs=probs, keep_dns=keep_dns, mask=mask, batch=batch,
                        prep_threads=prep_threads)  # fmt: skip
    files = find_captures(paths)
    named = named_captures(files, paths)
    runner, model_path = open_model(model, backend, threads, batch, precision, engine_workers)
    try:
        decide, flow = flow_options(runner, decide, flow_packets, flow)
    except BaseException:
        runner.close()
        raise
    opts = replace(opts, prep_threads=prep_threads or _default_prep_threads(runner), decide=decide, flow=flow,
                   model_id=_model_id(model_path, runner), model_name=Path(model_path).name)  # fmt: skip
    classes = list(runner.classes)
    schema = packet_schema(classes, probs).with_metadata(opts.metadata(classes))
    class_names = pa.array(classes, type=pa.string())
    todo = list(enumerate(files))
    stages = Stages()
    read_q: queue.Queue = queue.Queue(maxsize=READ_QUEUE)
    scored_q: queue.Queue = queue.Queue(maxsize=SCORED_QUEUE)
    waiting: list[Scored] = []

    def gathered() -> pa.RecordBatch:
        meta = {k: np.concatenate([it.meta[k] for it in waiting]) for k in waiting[0].meta}
        probs_ = np.concatenate([it.probs for it in waiting])
        batch_, _ = packet_batch(str(waiting[0].path), meta, probs_, class_names, schema)
        waiting.clear()
        return batch_

    try:
        if isinstance(runner, DeviceRunner):
            from pktnin.score import gpu_stages

            check_device_decide(opts)
            size = gpu_stages.device_batch_size(runner, batch)
            stages.thread("pktnin-read", gpu_stages.read_raw_stage, stages, todo, read_q, size, named)
            stages.thread("pktnin-engine", gpu_stages.device_engine_stage, stages, runner, size, mask, keep_dns,
                          read_q, scored_q)  # fmt: skip
        else:
            stages.thread("pktnin-read", read_stage, stages, todo, read_q, mask, keep_dns, opts.prep_threads,
                          iter_packets, named)  # fmt: skip
            start_engine(stages, runner, opts, read_q, scored_q)
        rows = 0
        while True:
            try:
                item = stages.get(scored_q)
            except Stopped:
                break
            if item is DONE:
                break
            if isinstance(item, Scored):
                if waiting and item.file_index != waiting[0].file_index:
                    yield gathered()
                    rows = 0
                waiting.append(item)
                rows += len(item.probs)
                if rows >= WRITE_ROWS:
                    yield gathered()
                    rows = 0
            else:
                if waiting:
                    yield gathered()
                    rows = 0
                if reports is not None:
                    reports.append(item.report)
    finally:
        stages.finish()
        runner.close()
    stages.raise_error()


def score(paths: Sequence[PathLike], model: PathLike | None = None, **kw) -> pa.Table:
    """Per-packet predictions of every input as one Arrow table (keywords as iter_scores); `.to_pandas()` for
    a DataFrame. For inputs too big for memory, iterate iter_scores or use score_to_files."""
    batches = list(iter_scores(paths, model, **kw))
    if batches:
        return pa.Table.from_batches(batches)
    from pktnin.score.writers import packet_schema

    runner, _ = open_model(model, kw.get("backend", "auto"), None, kw.get("batch", DEFAULT_BATCH), "fp32")
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
    progress=None,
) -> dict[str, np.ndarray]:
    """Rows (`x` uint8 [N,1500]) and per-packet metadata of every input, as `pktnin preprocess` stores them;
    written to `out` (.npz, atomically) when given. `reports`, when given, receives the per-file reports."""
    from pktnin.rowfile import PrepOptions, row_arrays, save_row_file

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
):
    """(runner, model path): the model given, or the bundled default. `precision` auto picks the fastest engine
    that agrees with fp32; `engine_workers` None measures one multi-thread session against single-thread ones."""
    from pktnin.engine.catalog import resolve_model
    from pktnin.engine.runners import open_runner
    from pktnin.score.flow_model import FlowModelRunner, is_flow_model

    model_path = resolve_model(model)  # a file, a bundled model's name, or None: the default bundled model
    if is_flow_model(model_path):
        from pktnin.errors import OptionError

        if backend not in ("auto", "onnxruntime") or precision not in ("auto", "fp32"):
            raise OptionError(f"{Path(model_path).name} is a flow model: it runs on ONNX Runtime in fp32")
        return FlowModelRunner(model_path, intra_threads=threads, max_batch=batch), model_path
    runner = open_runner(model_path, backend, intra_threads=threads, max_batch=batch, precision=precision,
                         engine_workers=engine_workers)  # fmt: skip
    return runner, model_path


def flow_options(runner, decide: str | None, flow_packets: int | None, flow=None):
    """(decide, FlowParams) for a run with `runner`: a flow model decides per flow with its own K; any other
    model per packet unless told, with K = flow_packets (default FlowParams().packets)."""
    from pktnin.errors import OptionError
    from pktnin.flow_decide import FlowParams
    from pktnin.score.flow_model import FlowModelRunner

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


def _default_prep_threads(runner) -> int | None:
    # One numba thread beside a CPU engine, which needs the cores; all of them when the model runs elsewhere.
    return 1 if runner.backend in ("onnxruntime", "openvino") else None


def _model_id(model_path: Path, runner) -> str:
    from pktnin.engine.cache import file_sha256

    return f"{file_sha256(model_path)}:{runner.backend}:{runner.precision}"


def _own_output(path: Path, targets: list[Path], parts: Path) -> bool:
    """An earlier output (or its manifest or parts) inside an input folder is not an input."""
    if str(path) == "-":
        return False
    path = path.resolve()
    return any(path == t.resolve() for t in targets) or parts.resolve() in path.parents
