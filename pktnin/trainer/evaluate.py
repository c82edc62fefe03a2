"""Evaluation of a checkpoint (.keras + .json) or an exported .onnx model on one split of a dataset.

Packet-level and flow-level (packet probabilities averaged per flow) metrics from pktnin.trainer.metrics,
written as JSON, plus optional PNG plots (pktnin.trainer.plots).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from pktnin.dataset.format import SPLIT_NAMES, load_dataset
from pktnin.trainer.metrics import evaluation_report


class Predictor:
    """Probabilities [n, C] for uint8 rows [n, 1500], through Keras or ONNX Runtime."""

    def __init__(self, path: str | Path, batch: int = 1024):
        self.path = Path(path)
        self.batch = batch
        if self.path.suffix == ".onnx":
            self._open_onnx()
        else:
            self._open_keras()

    def _open_keras(self) -> None:
        from pktnin.trainer.checkpoint import load_checkpoint

        self.kind = "keras"
        self.model, meta = load_checkpoint(self.path)
        self.classes = list(meta["classes"])
        self.preset = meta.get("preset")
        self.alpha = meta.get("alpha")

    def _open_onnx(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} not found")
        self.kind = "onnx"
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_uint8 = first.type == "tensor(uint8)"
        props = self.session.get_modelmeta().custom_metadata_map
        sidecar = self.path.with_suffix(".json")
        side_meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        if "pktnin.classes" in props:
            self.classes = list(json.loads(props["pktnin.classes"]))
        elif "classes" in side_meta:
            self.classes = list(side_meta["classes"])
        else:
            raise ValueError(f"{self.path}: no 'pktnin.classes' metadata and no {sidecar.name} beside it")
        self.preset = props.get("pktnin.preset", side_meta.get("preset"))
        alpha = props.get("pktnin.alpha", side_meta.get("alpha"))
        self.alpha = None if alpha in (None, "", "null", "None") else float(alpha)

    def predict(self, rows: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """Probabilities for rows[indices] (all rows when None), in ascending index order."""
        indices = np.arange(rows.shape[0]) if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
        if self.kind == "keras":
            from pktnin.trainer.train import predict_rows

            return predict_rows(self.model, rows, indices, self.batch)
        out = np.zeros((indices.size, len(self.classes)), np.float32)
        for start in range(0, indices.size, self.batch):
            x = np.asarray(rows[indices[start : start + self.batch]])
            x = x if self.input_uint8 else x.astype(np.float32) / np.float32(255.0)
            out[start : start + x.shape[0]] = self.session.run(None, {self.input_name: x})[0]
        return out


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
        raise ValueError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
    data = load_dataset(data_dir)
    predictor = Predictor(model_path, batch=batch)
    if predictor.classes != data.classes:
        raise ValueError(
            f"{model_path} was trained for classes {predictor.classes} but {data_dir} has classes {data.classes}"
        )
    idx = data.indices(split)
    if idx.size == 0:
        raise ValueError(f"dataset {data_dir} has no rows in split {split!r}")
    if max_rows is not None and idx.size > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_rows, replace=False))
    started = time.perf_counter()
    probs = predictor.predict(data.rows, idx)
    seconds = time.perf_counter() - started
    report = evaluation_report(probs, data.labels[idx], data.classes, data.flow[idx])
    return {
        "model": str(model_path),
        "name": Path(model_path).stem,
        "runtime": predictor.kind,
        "preset": predictor.preset,
        "alpha": predictor.alpha,
        "data": str(Path(data_dir).resolve()),
        "split": split,
        "classes": data.classes,
        "rows": int(idx.size),
        "predict_seconds": seconds,
        "packets_per_s": idx.size / seconds if seconds > 0 else None,
        **report,
    }


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
        raise ValueError(f"{path}: not JSON ({exc.msg} at byte offset {exc.pos})") from None
    if "packet" not in result or "classes" not in result:
        raise ValueError(f"{path}: not an evaluation result (no 'packet' or 'classes' key)")
    return result
