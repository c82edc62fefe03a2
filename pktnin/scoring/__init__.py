"""Scoring captures with a model: units of work through one stage chain, one driver, its writers, flow
aggregation and the resume manifest.

    options.py       ScoreOptions (checked when made), ScoreResult
    units.py         units of work: a whole file, a byte range of a large file, a group of small files
    chain.py         the stage chain of one unit (read+prep -> engine -> scored pieces), hooks for inserted stages
    messages.py      the messages between stages (FileEnd, Scored), the Progress protocol
    cpu_stages.py    read+prep (numba CPU kernel) and the engine stage for any ModelRunner
    gpu_stages.py    raw read and prep-into-the-engine's-input for a DeviceRunner (TensorRT)
    writer_stage.py  a unit's Scored pieces -> its Parquet part and per-piece counts (UnitWriter)
    unit_run.py      score_unit (one unit into a part and a summary), LocalExecutor (in-process)
    run.py           the driver: lock, manifest, resume, pruning, assembly (run_units, score_files)
    reports.py       one report per file from its pieces' reports
    writers.py       Arrow schemas and batches, part files, the final Parquet/CSV assembly
    flows.py         per-flow aggregation; manifest.py: the resume manifest and the parts folder
    outputs.py       checks on the outputs before a run starts, the per-file report; outdir.py: side-file safety
The runtime the stages run on (threads, bounded queues, stop) is pktnin.stages.
"""

from pktnin.scoring.options import ScoreOptions, ScoreResult
from pktnin.scoring.run import score_files

__all__ = ["ScoreOptions", "ScoreResult", "score_files"]
