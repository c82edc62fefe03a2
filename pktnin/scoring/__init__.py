"""Scoring captures with a model: the streaming pipeline, its writers, flow aggregation and the resume manifest.

options.py       ScoreOptions (checked when made), ScoreResult
pipeline.py      score_files: sets up a run, starts the stages, assembles the outputs
stages.py        the stage runtime: bounded queues, messages (FileEnd, Scored, DONE), errors, stop
cpu_stages.py    read+prep (numba CPU kernel) and the engine stage for any ModelRunner
gpu_stages.py    raw read and prep-into-the-engine's-input for a DeviceRunner (TensorRT)
writer_stage.py  Scored -> Parquet parts + manifest (ScoreWriter, Part)
writers.py       Arrow schemas and batches, part files, the final Parquet/CSV assembly
flows.py         per-flow aggregation; manifest.py: the resume manifest and the parts folder
outputs.py       checks on the outputs before a run starts, the per-file report
"""

from pktnin.scoring.options import ScoreOptions, ScoreResult
from pktnin.scoring.pipeline import score_files

__all__ = ["ScoreOptions", "ScoreResult", "score_files"]
