"""Training: one preset on a dataset directory -> the best checkpoint by validation macro-F1.

Adam (learning rate 1e-3, multiplied by 0.98 after every epoch), categorical cross-entropy, early stopping on
validation macro-F1 (computed with pktnin.trainer.metrics at each epoch end), best checkpoint written atomically,
TensorBoard logs under `<out>.logs/`. Rows stay uint8 in the memory-mapped dataset; the tf.data pipeline gathers
a batch, casts it and divides by 255. `nin_parallel` trains NIN1 and NIN2, then picks alpha (trainer.fusion).

XLA (`xla=True`, Keras jit_compile) is off by default: on this project's CPU build (TF 2.21, Keras 3.15) it made
training slower, and Keras's Dropout under XLA on the CPU about 100x slower (a [128,1024] dropout mask: ~95 ms
jit-compiled vs ~0.8 ms eager); NIN1 at batch 128 trained at ~130-250 packets/s with XLA against ~2,000-3,500
without. Measure again (`pktnin train ... --xla`) on another build before turning it on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pktnin.dataset.format import SPLIT_VAL
from pktnin.errors import OptionError, UsageError
from pktnin.trainer import checkpoint as ckpt
from pktnin.trainer.augment import AUGMENTATIONS
from pktnin.trainer.data import (
    CLASS_WEIGHTING,
    FIT_SPLITS,
    make_tf_dataset,
    predict_rows,
    select_split_rows,
    select_training_rows,
    training_sample_weights,
)
from pktnin.trainer.fusion import DEFAULT_GRID, fuse, search_alpha
from pktnin.trainer.metrics import classification_report
from pktnin.trainer.presets import PARALLEL_PRESET, fusion_of, get_preset

# Keras precision policies: mixed_bfloat16 computes in bfloat16 with float32 weights (this CPU has AVX-512 BF16:
# 1.2x (NIN1) to 1.9x (NIN_small on the body) the float32 training rate, bench/results/train-throughput.json).
# Checkpoints are saved in float32 either way.
PRECISIONS = ("float32", "mixed_bfloat16")


# ---------------------------------------------------------------------------------------------------------
# Training


def logs_dir_for(out_ckpt: str | Path) -> Path:
    keras_path, _ = ckpt.checkpoint_paths(out_ckpt)
    return keras_path.with_suffix(".logs")


def seed_everything(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)  # Python, numpy and TensorFlow generators


def _open_dataset(data_dir: str | Path):
    from pktnin.dataset.format import load_dataset

    return load_dataset(data_dir)


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes one training run (stored in the checkpoint metadata)."""

    epochs: int = 10
    batch: int = 128
    seed: int = 0
    xla: bool = False
    max_train: int | None = None
    max_val: int | None = None
    max_per_class: int | None = None
    class_weighting: str = "none"
    patience: int = 3
    learning_rate: float = 1e-3
    lr_decay: float = 0.98
    dropout: float = 0.1
    width: float = 1.0
    max_per_flow: int | None = None
    fit: str = "train"  # "train+val": refit on both splits for a fixed number of epochs (no early stopping)
    augment: str = "none"  # "header-jitter": random bytes in the capture fields of training rows
    precision: str = "float32"  # or "mixed_bfloat16" (PRECISIONS)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.fit not in FIT_SPLITS:
            raise OptionError(f"fit must be one of {tuple(FIT_SPLITS)}, got {self.fit!r}")
        if self.class_weighting not in CLASS_WEIGHTING:
            raise OptionError(f"class weighting must be one of {CLASS_WEIGHTING}, got {self.class_weighting!r}")
        if self.augment not in AUGMENTATIONS:
            raise OptionError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.epochs < 1 or self.batch < 1 or self.patience < 1:
            raise OptionError("epochs, batch and patience must be >= 1")
        for name in ("max_train", "max_val", "max_per_class", "max_per_flow"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"{name} must be >= 1, got {value}")


def train(
    preset: str,
    data_dir: str | Path,
    out_ckpt: str | Path,
    settings: TrainSettings = TrainSettings(),
    *,
    alpha: float | None = None,
    progress: bool = True,
    build: Callable | None = None,
) -> dict:
    """Train `preset` on the dataset in `data_dir`; the best epoch (validation macro-F1) goes to `out_ckpt`.

    settings.fit "train+val" trains on the training and validation rows for exactly settings.epochs epochs and
    keeps the last one (take the epoch count, and for nin_parallel `alpha`, from a run with fit "train"): the
    validation split then no longer measures anything, and the checkpoint's metrics say so.

    Returns a summary dict (its settings and history are also stored in the checkpoint metadata under
    "training"). `build` replaces trainer.models.build_model (same signature) for experiments.
    """
    if get_preset(preset).branches:
        return train_parallel(data_dir, out_ckpt, settings, progress=progress, build=build, alpha=alpha, preset=preset)
    data = _open_dataset(data_dir)
    result = _train_single(preset, data, out_ckpt, settings, progress, build, logs_dir_for(out_ckpt))
    return result["summary"]


def _train_single(preset, data, out_ckpt, settings: TrainSettings, progress, build, log_dir) -> dict:
    """Train one Keras model; returns {"model": best model, "summary": dict, "val_idx": validation indices}."""
    import keras

    if build is None:
        from pktnin.trainer.models import build_model as build

    s = settings
    rows, labels, split = data.rows, data.labels, data.split
    classes = list(data.meta["classes"])
    num_classes = len(classes)
    refit = s.fit != "train"
    train_idx = select_training_rows(
        labels, split, s.seed, s.max_train, s.max_per_class, flow=data.flow, max_per_flow=s.max_per_flow,
        splits=FIT_SPLITS[s.fit],
    )  # fmt: skip
    val_idx = select_split_rows(split, SPLIT_VAL, s.seed, s.max_val)
    if train_idx.size == 0:
        raise UsageError(f"dataset {data.path} has no training rows (split.npy == 0)")
    if val_idx.size == 0 and not refit:
        raise UsageError(f"dataset {data.path} has no validation rows (split.npy == 1): early stopping needs them")
    weights = training_sample_weights(labels, train_idx, s.class_weighting, num_classes, data.file)
    if s.augment == "header-jitter" and data.meta.get("mask", "paper") != "paper":
        raise OptionError(f"header-jitter needs rows of the paper mask profile; {data.path} has {data.meta['mask']!r}")

    seed_everything(s.seed)
    with precision_policy(s.precision):
        model = build(preset, num_classes, dropout=s.dropout, width=s.width)

    def float32_model():
        """The model as it is saved and returned: float32 layers (a copy when it trained in mixed precision)."""
        if s.precision == "float32":
            return model
        with precision_policy("float32"):
            copy = build(preset, num_classes, dropout=s.dropout, width=s.width)
        copy.set_weights(model.get_weights())  # mixed precision keeps float32 weights
        return copy

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=s.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        jit_compile=s.xla,
    )
    train_ds = make_tf_dataset(
        rows, labels, train_idx, num_classes, s.batch, shuffle_seed=s.seed, sample_weights=weights,
        jitter_seed=s.seed if s.augment == "header-jitter" else None,
    )  # fmt: skip
    steps = -(-train_idx.size // s.batch)

    keras_path, json_path = ckpt.checkpoint_paths(out_ckpt)
    training_meta = {**asdict(s), "train_rows": int(train_idx.size), "val_rows": int(val_idx.size)}

    def save_best(epoch: int, report: dict | None) -> None:
        training_meta["best_epoch"] = epoch + 1
        meta = ckpt.make_metadata(preset, classes, data.path, data.meta, report, training=training_meta)
        ckpt.save_checkpoint(float32_model(), keras_path, meta)

    from pktnin.trainer.callbacks import RichProgress, ScalarLog, ValidationF1

    val_cb = ValidationF1(rows, labels, val_idx, classes, max(s.batch, 256), s.patience, save_best)
    bar = RichProgress(s.epochs, steps, train_idx.size, s.batch, preset, enabled=progress)
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: s.learning_rate * s.lr_decay**epoch),
        *([] if refit else [val_cb]),  # before the bar and the scalar log, so that they see the validation metrics
        bar,
        ScalarLog(log_dir),
    ]
    started = time.perf_counter()
    with precision_policy(s.precision):
        history = model.fit(train_ds, epochs=s.epochs, verbose=0, callbacks=callbacks, shuffle=False)  # tf shuffles
    elapsed = time.perf_counter() - started
    if refit:  # the last epoch is the model; there is no held-out split left to report on
        save_best(s.epochs - 1, None)
    else:
        model.set_weights(val_cb.best_weights)

    summary = {
        "preset": preset,
        "checkpoint": str(keras_path),
        "best_epoch": s.epochs if refit else val_cb.best_epoch + 1,
        "epochs_run": len(history.history.get("loss", [])),
        "val_macro_f1": None if refit else val_cb.best_f1,
        "val": None if refit else val_cb.best_report,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "train_packets_per_s": bar.epoch_rates,
        "seconds": elapsed,
        "settings": training_meta,
    }
    # The checkpoint was written at its best epoch; its metadata now also gets the whole run's history.
    meta = ckpt.load_metadata(keras_path)
    for key in ("epochs_run", "history", "train_packets_per_s", "seconds"):
        meta["training"][key] = summary[key]
    ckpt.write_json_atomic(json_path, meta)
    return {"model": float32_model(), "summary": summary, "val_idx": val_idx}


@contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Keras's global precision policy set to `name` inside the block (layers built there keep it)."""
    import keras

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def branch_checkpoint_path(out_ckpt: str | Path, branch: str) -> Path:
    """runs/par.keras -> runs/par-nin1.keras (the branches are kept beside the fused checkpoint)."""
    keras_path, _ = ckpt.checkpoint_paths(out_ckpt)
    return keras_path.with_name(f"{keras_path.stem}-{branch}.keras")


def train_parallel(
    data_dir: str | Path,
    out_ckpt: str | Path,
    settings: TrainSettings = TrainSettings(),
    progress: bool = True,
    build: Callable | None = None,
    build_parallel: Callable | None = None,
    grid: np.ndarray = DEFAULT_GRID,
    alpha: float | None = None,
    preset: str = PARALLEL_PRESET,
) -> dict:
    """Train the two branches of a fusion preset (nin_parallel: NIN1 on the header, NIN2 on the body) on whole
    rows, pick alpha by validation macro-F1, save one model.

    A refit (settings.fit "train+val") needs `alpha` given: the validation rows were trained on.
    """
    if settings.fit != "train" and alpha is None:
        raise OptionError(f"a {preset} refit on train+val needs alpha from a run that kept validation apart")
    if build_parallel is None:
        from pktnin.trainer.models import build_parallel as default_build_parallel

        build_parallel = default_build_parallel
    data = _open_dataset(data_dir)
    log_dir = logs_dir_for(out_ckpt)
    branches = {}
    for name in get_preset(preset).branches:
        branch_path = branch_checkpoint_path(out_ckpt, name)
        branches[name] = _train_single(name, data, branch_path, settings, progress, build, log_dir / name)

    models = {name: b["model"] for name, b in branches.items()}
    summaries = {n: b["summary"] for n, b in branches.items()}
    val_idx = next(iter(branches.values()))["val_idx"]
    return _fuse_and_save(data, out_ckpt, models, summaries, val_idx, build_parallel, grid, alpha, preset)


def fuse_checkpoints(
    nin1_ckpt: str | Path,
    nin2_ckpt: str | Path,
    data_dir: str | Path,
    out_ckpt: str | Path,
    grid: np.ndarray = DEFAULT_GRID,
    alpha: float | None = None,
) -> dict:
    """Fuse two trained branch checkpoints (header, body: nin1 with nin2 or nin_small_body): alpha by validation
    macro-F1 (or the given one), one model saved as the preset that fuses them."""
    from pktnin.trainer.models import build_parallel

    data = _open_dataset(data_dir)
    loaded = [(path, *ckpt.load_checkpoint(path)) for path in (nin1_ckpt, nin2_ckpt)]
    try:
        preset = fusion_of(*(str(meta.get("preset")) for _, _, meta in loaded))
    except OptionError as exc:
        raise UsageError(f"{nin1_ckpt} and {nin2_ckpt}: {exc}") from None
    models, summaries = {}, {}
    for path, model, meta in loaded:
        name = meta["preset"]
        if list(meta.get("classes", [])) != list(data.meta["classes"]):
            raise UsageError(f"{path}: its classes differ from the dataset's")
        training = meta.get("training", {})
        models[name] = model
        summaries[name] = {
            "checkpoint": str(ckpt.checkpoint_paths(path)[0]),
            "val": meta.get("metrics"),
            "val_macro_f1": (meta.get("metrics") or {}).get("macro_f1"),
            "best_epoch": training.get("best_epoch"),
            "settings": training,
        }
    val_idx = select_split_rows(data.split, SPLIT_VAL, 0)
    return _fuse_and_save(data, out_ckpt, models, summaries, val_idx, build_parallel, grid, alpha, preset)


def _fuse_and_save(
    data, out_ckpt, models: dict, summaries: dict, val_idx, build_parallel: Callable, grid, alpha: float | None = None,
    preset: str = PARALLEL_PRESET,
) -> dict:  # fmt: skip
    """Alpha search on the validation rows `val_idx` (Eq. 3) unless `alpha` is given, then the fused model saved
    as one checkpoint of `preset` (models: its branches by preset name)."""
    header, body = get_preset(preset).branches
    classes = list(data.meta["classes"])
    y_val = np.asarray(data.labels)[val_idx].astype(np.int64)  # val_idx is sorted, like predict_rows's output
    p1 = predict_rows(models[header], data.rows, val_idx)
    p2 = predict_rows(models[body], data.rows, val_idx)
    if alpha is None:
        alpha, curve = search_alpha(p1, p2, y_val, grid)
    elif not 0.0 <= alpha <= 1.0:
        raise OptionError(f"alpha must be within [0, 1], got {alpha}")
    else:
        curve = None
    fused_probs = fuse(p1, p2, alpha)
    refit = any((b.get("settings") or {}).get("fit", "train") != "train" for b in summaries.values())
    # Branches refit on train+val: their validation score would measure nothing.
    report = None if refit else classification_report(y_val, fused_probs.argmax(axis=1), classes)

    fused = build_parallel(ckpt.uncompiled_copy(models[header]), ckpt.uncompiled_copy(models[body]), alpha, name=preset)
    # The saved graph must compute exactly Eq. 3 with the chosen alpha.
    check = val_idx[:256]
    got = predict_rows(fused, data.rows, check)
    if not np.allclose(got, fused_probs[: check.size], atol=1e-5):
        raise RuntimeError("fused model output differs from alpha * p1 + (1 - alpha) * p2")

    summary = {
        "preset": preset,
        "checkpoint": str(ckpt.checkpoint_paths(out_ckpt)[0]),
        "alpha": alpha,
        "val_macro_f1": None if report is None else report["macro_f1"],
        "val": report,
        "alpha_curve": None if curve is None else [[float(a), float(s)] for a, s in zip(np.asarray(grid), curve)],
        "branches": summaries,
    }
    meta = ckpt.make_metadata(
        preset, classes, data.path, data.meta, report, alpha=alpha,
        training={
            "fit": "train+val" if refit else "train",
            "alpha_curve": summary["alpha_curve"],
            "branches": {
                name: {
                    "checkpoint": b["checkpoint"],
                    "val_metrics": b["val"],
                    "best_epoch": b["best_epoch"],
                    "settings": b["settings"],
                }
                for name, b in summaries.items()
            },
        },
    )  # fmt: skip
    ckpt.save_checkpoint(fused, out_ckpt, meta)
    return summary
