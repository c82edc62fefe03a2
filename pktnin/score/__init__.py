"""Scoring captures with a model: the streaming pipeline, its writers, flow aggregation and the resume manifest."""

from pktnin.score.pipeline import ScoreOptions, ScoreResult, score_files

__all__ = ["ScoreOptions", "ScoreResult", "score_files"]
