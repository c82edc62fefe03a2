"""pktnin: packet-level encrypted traffic classification with deep and parallel Network-in-Network models.

The Python API (pktnin.api): score(paths) -> pyarrow.Table, iter_scores(paths) -> record batches,
score_to_files(paths, out), preprocess(paths) -> rows and metadata. They are imported on first use, so that
`import pktnin` stays light.
"""

from pktnin.version import __version__

__all__ = ["__version__", "iter_scores", "preprocess", "score", "score_to_files"]


def __getattr__(name: str) -> object:
    if name in ("score", "iter_scores", "score_to_files", "preprocess"):
        from pktnin import api

        return getattr(api, name)
    raise AttributeError(f"module 'pktnin' has no attribute {name!r}")
