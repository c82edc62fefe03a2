"""Keras callbacks of a training run: validation macro-F1 with early stopping, the progress bar, TensorBoard scalars."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pktnin.trainer.data import predict_rows
from pktnin.trainer.metrics import classification_report


class ValidationF1(keras.callbacks.Callback):
    """Validation metrics with trainer.metrics at each epoch end; keeps the best weights, stops early."""

    def __init__(self, rows, labels, val_idx, classes, batch, patience, on_best: Callable[[int, dict], None]):
        super().__init__()
        self.rows, self.val_idx, self.classes, self.batch = rows, np.sort(val_idx), classes, batch
        self.y_val = np.asarray(labels)[self.val_idx].astype(np.int64)
        self.patience, self.on_best = patience, on_best
        self.best_f1, self.best_epoch, self.best_report, self.best_weights = -1.0, -1, None, None
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        probs = predict_rows(self.model, self.rows, self.val_idx, self.batch)
        report = classification_report(self.y_val, probs.argmax(axis=1), self.classes)
        picked = probs[np.arange(self.y_val.size), self.y_val]
        logs["val_loss"] = float(np.mean(-np.log(np.clip(picked, 1e-7, 1.0)))) + 0.0  # + 0.0: no "-0.0000"
        logs["val_accuracy"] = report["accuracy"]
        logs["val_macro_f1"] = report["macro_f1"]
        if report["macro_f1"] > self.best_f1:
            self.best_f1, self.best_epoch, self.best_report, self.wait = report["macro_f1"], epoch, report, 0
            self.best_weights = self.model.get_weights()
            self.on_best(epoch, report)
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True


class RichProgress(keras.callbacks.Callback):
    """A rich progress bar per epoch with packets/s; one summary line per epoch."""

    def __init__(self, epochs, steps, train_rows, batch, title, enabled=True):
        super().__init__()
        self.epochs, self.steps, self.train_rows, self.batch = epochs, steps, train_rows, batch
        self.title, self.enabled = title, enabled
        self.epoch_rates: list[float] = []

    def on_train_begin(self, logs=None):
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[cyan]{task.fields[rate]:,.0f} pkts/s  loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.enabled,
            transient=True,
        )
        self.progress.start()

    def on_epoch_begin(self, epoch, logs=None):
        self.task = self.progress.add_task(
            f"{self.title} epoch {epoch + 1}/{self.epochs}", total=self.steps, rate=0.0, loss=0.0
        )
        self.seen, self.started = 0, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seen = min(self.seen + self.batch, self.train_rows)
        rate = self.seen / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, advance=1, rate=rate, loss=float((logs or {}).get("loss", 0.0)))

    def on_epoch_end(self, epoch, logs=None):
        # Training throughput only: the validation pass in ValidationF1 ran after the last batch.
        rate = self.progress.tasks[-1].fields["rate"] if self.progress.tasks else 0.0
        self.epoch_rates.append(rate)
        self.progress.remove_task(self.task)
        logs = logs or {}
        if self.enabled:
            val = ""  # no validation pass in a refit on train+val
            if "val_macro_f1" in logs:
                val = (
                    f"val loss {logs['val_loss']:.4f}  val acc {logs['val_accuracy']:.4f}  "
                    f"val macro-F1 {logs['val_macro_f1']:.4f}  "
                )
            self.console.print(
                f"{self.title} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.4f}  "
                f"{val}{rate:,.0f} pkts/s"
            )

    def on_train_end(self, logs=None):
        self.progress.stop()


class ScalarLog(keras.callbacks.Callback):
    """Epoch scalars as TensorBoard event files in log_dir/train and log_dir/validation.

    Written with the core tf.summary.write op and the scalars plugin's metadata, so TensorBoard shows them
    without the tensorboard package being needed at training time.
    """

    def __init__(self, log_dir: Path):
        super().__init__()
        self.log_dir = Path(log_dir)

    def on_train_begin(self, logs=None):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self.tf = tf
        self.metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        self.writers = {
            part: tf.summary.create_file_writer(str(self.log_dir / part)) for part in ("train", "validation")
        }

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            part, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self.writers[part].as_default():
                self.tf.summary.write(
                    f"epoch_{name}", self.tf.constant(float(value), self.tf.float32), step=epoch,
                    metadata=self.metadata,
                )  # fmt: skip
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()
