"""Evaluation of a checkpoint (.keras + .json) or an exported .onnx model on one split of a dataset.

Packet-level and flow-level (packet probabilities averaged per flow) metrics from pktnin.trainer.metrics,
written as JSON, plus optional PNG plots (pktnin.trainer.plots).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pktnin.dataset.format import SPLIT_NAMES, load_dataset
from pktnin.errors import OptionError, UsageError
from pktnin.trainer.data import predict_rows
from pktnin.trainer.metrics import evaluation_report


class Predictor:
    """Probabilities [n, C] for uint8 rows [n, 1500]: a checkpoint through Keras, any other model file through the
    engine runners (pktnin.engine.runners.open_runner), so both are checked the same way as `score` checks them."""

    def __init__(self, path: str | Path, batch: int = 1024):
        self.path = Path(path)
        self.batch = batch
        self.kind = self.path.suffix.lstrip(".")
        self.model = self.runner = None
        if self.kind == "keras":
            from pktnin.engine.export import model_info_from_checkpoint_meta
            from pktnin.trainer.checkpoint import load_checkpoint

            self.model, meta = load_checkpoint(self.path)
            info = model_info_from_checkpoint_meta(meta, "float32", str(self.path))
        else:
            from pktnin.engine.runners import open_runner

            self.runner = open_runner(self.path, "onnxruntime", max_batch=batch)
            assert self.runner.info is not None  # open_runner returns a loaded runner
            info = self.runner.info
        self.classes = list(info.classes)
        self.preset = info.preset
        self.alpha = info.alpha

    def predict(self, rows: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Probabilities for rows[indices] (all rows when None), in ascending index order."""
        indices = np.arange(rows.shape[0]) if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
        if self.model is not None:
            return predict_rows(self.model, rows, indices, self.batch)
        assert self.runner is not None  # not a checkpoint: __init__ opened a runner
        out = np.zeros((indices.size, len(self.classes)), np.float32)
        for start in range(0, indices.size, self.batch):
            x = np.ascontiguousarray(rows[indices[start : start + self.batch]])
            self.runner.infer(x, out[start : start + x.shape[0]])
        return out

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def evaluate(
    model_path: str | Path,
    data_dir: str | Path,
    split: str = "test",
    batch: int = 1024,
    max_rows: int | None = None,
    seed: int = 0,
) -> dict:
    """Metrics of the model on one split: {"packet": ..., "flow": ..., plus what was evaluated and how fast}."""
    if split not in SPLIT_NAMES:
        raise OptionError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
    data = load_dataset(data_dir)
    predictor = Predictor(model_path, batch=batch)
    try:
        to_model = class_mapping(data.classes, predictor.classes, model_path, data_dir)
    except UsageError:
        predictor.close()
        raise
    idx = data.indices(split)
    if idx.size == 0:
        predictor.close()
        raise UsageError(f"dataset {data_dir} has no rows in split {split!r}")
    if max_rows is not None and idx.size > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_rows, replace=False))
    started = time.perf_counter()
    try:
        probs = predictor.predict(data.rows, idx)
    finally:
        predictor.close()
    seconds = time.perf_counter() - started
    y_true = to_model[data.labels[idx]]
    # Macro averages over the classes this split has labels for: a class of the model that the data lacks has no
    # F1 to speak of, and averaging it in as 0 would understate the model.
    report = evaluation_report(probs, y_true, predictor.classes, data.flow[idx], average_over="labels")
    support = np.bincount(y_true, minlength=len(predictor.classes))
    predicted = np.bincount(probs.argmax(axis=1), minlength=len(predictor.classes))
    absent = [
        {"class": name, "predicted": int(predicted[i])} for i, name in enumerate(predictor.classes) if support[i] == 0
    ]
    scored = len(predictor.classes) - len(absent)
    return {
        "model": str(model_path),
        "name": Path(model_path).stem,
        "runtime": predictor.kind,
        "preset": predictor.preset,
        "alpha": predictor.alpha,
        "data": str(Path(data_dir).resolve()),
        "split": split,
        "classes": predictor.classes,
        "data_classes": data.classes,
        "absent_classes": absent,
        "macro_average": (
            f"unweighted mean over the {scored} classes with packets in this split"
            + (f"; {len(absent)} classes of the model without any are listed apart, not averaged in" if absent else "")
        ),
        "warnings": mask_warnings(model_path, data.meta, data_dir),
        "rows": int(idx.size),
        "predict_seconds": seconds,
        "packets_per_s": idx.size / seconds if seconds > 0 else None,
        **report,
    }


def class_mapping(data_classes: Sequence[str], model_classes: Sequence[str], model_path, data_dir) -> np.ndarray:
    """Model class index of each data class, matched by name; refuses data classes the model does not know."""
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        raise UsageError(
            f"{data_dir} has classes the model {model_path} does not know: {', '.join(unknown)} "
            f"(the model's classes: {', '.join(model_classes)})"
        )
    return np.array([list(model_classes).index(c) for c in data_classes], dtype=np.int64)


def mask_warnings(model_path, data_meta: dict, data_dir) -> list[str]:
    """A warning when the dataset's rows were made with another mask than the model's training rows."""
    from pktnin.engine.catalog import trained_mask

    trained, used = trained_mask(model_path), data_meta.get("mask")
    if trained and used and trained != used:
        name = Path(model_path).name
        return [f"{data_dir} was built with --mask {used} but {name} was trained on --mask {trained} rows"]
    return []


def write_evaluation(
    result: dict, out_json: str | Path | None = None, plots_dir: str | Path | None = None,
    compare: Sequence[dict] = (),
) -> list[Path]:  # fmt: skip
    """Write the result JSON and the plots (per-class F1 bars beside `compare`, confusion matrices)."""
    from pktnin.trainer.checkpoint import write_json_atomic

    written = []
    if out_json is not None:
        out_json = Path(out_json)
        write_json_atomic(out_json, result)
        written.append(out_json)
    if plots_dir is not None:
        from pktnin.trainer.plots import plot_confusion, plot_f1_bars

        plots_dir = Path(plots_dir)
        for level in ("packet", "flow"):
            if level not in result:
                continue
            others = [r for r in compare if level in r]
            written.append(plot_f1_bars([result, *others], plots_dir / f"f1_{level}.png", level=level))
            written.append(plot_confusion(result, plots_dir / f"confusion_{level}.png", level=level))
    return written


def load_result(path: str | Path) -> dict:
    """A result JSON written by write_evaluation (for --compare)."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"result file {path} not found") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not JSON ({exc.msg} at byte offset {exc.pos})") from None
    if "packet" not in result or "classes" not in result:
        raise UsageError(f"{path}: not an evaluation result (no 'packet' or 'classes' key)")
    return result
