"""Input variants beyond the paper, trained on the training files and judged on validation (test printed too).

Variants (combine with '+', e.g. jitter+dropout5):
- base: the preset as pktnin builds it (bytes / 255, one input channel, dropout rate 0.1).
- jitter: `pktnin train --augment header-jitter` (pktnin.trainer.augment): in training rows, the header bytes that
  identify a capture rather than an application get random bytes. Inference is unchanged.
- embed: each byte value is looked up in a learned 8-wide embedding instead of being read as byte / 255.
- dropout5: dropout rate 0.5 instead of 0.1.

    python bench/input_variants.py DATASET_DIR PRESET VARIANT [--seed N] [--epochs N] [--out-dir DIR] [--xla]

Prints one line: preset, variant, seed, best validation macro-F1 and its epoch, test macro-F1, seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from pktnin.dataset.format import load_dataset  # noqa: E402
from pktnin.layout import ROW_LEN  # noqa: E402
from pktnin.trainer import models as M  # noqa: E402
from pktnin.trainer import presets as P  # noqa: E402
from pktnin.trainer.checkpoint import load_checkpoint  # noqa: E402
from pktnin.trainer.data import predict_rows  # noqa: E402
from pktnin.trainer.metrics import macro_f1  # noqa: E402
from pktnin.trainer.train import TrainSettings, train  # noqa: E402

VARIANTS = ("base", "jitter", "embed", "dropout5")


@keras.saving.register_keras_serializable(package="pktnin_bench")
class ByteEmbedding(keras.layers.Layer):
    """Bytes start:stop of the normalized row as learned vectors [batch, stop-start, dim]."""

    def __init__(self, start: int, stop: int, dim: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop, self.dim = start, stop, dim
        self.table = keras.layers.Embedding(256, dim)

    def build(self, input_shape):
        self.table.build((input_shape[0], self.stop - self.start))
        super().build(input_shape)

    def call(self, rows):
        return self.table(tf.cast(tf.round(rows[:, self.start : self.stop] * 255.0), tf.int32))

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop, "dim": self.dim}


def embedding_builder(preset: str, num_classes: int, dropout: float = 0.1, width: float = 1.0) -> keras.Model:
    """pktnin.trainer.models.build_model with ByteEmbedding in place of ByteSlice (for train(build=...))."""
    spec = P.get_preset(preset)
    rows = keras.Input(shape=(ROW_LEN,), dtype="float32", name="row")
    x = ByteEmbedding(spec.start, spec.stop, name="bytes")(rows)
    counters: dict = {}
    for layer in P.preset_layers(preset, num_classes, width, dropout):
        x = M._keras_layer(layer, M._layer_name(layer, counters))(x)
    return keras.Model(rows, x, name=preset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("preset")
    ap.add_argument("variant", help="+-joined subset of " + ", ".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out-dir", type=Path, default=Path("runs/variants"))
    ap.add_argument("--xla", action="store_true", help="compile the training step with XLA")
    args = ap.parse_args()
    parts = set(args.variant.split("+"))
    if not parts <= set(VARIANTS):
        ap.error(f"unknown variant parts {sorted(parts - set(VARIANTS))}; choose from {VARIANTS}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{args.preset}-{args.variant.replace('+', '_')}-s{args.seed}.keras"

    started = time.perf_counter()
    settings = TrainSettings(
        epochs=args.epochs, batch=128, seed=args.seed, xla=args.xla, class_weighting="balanced", patience=4,
        dropout=0.5 if "dropout5" in parts else 0.1, augment="header-jitter" if "jitter" in parts else "none",
    )  # fmt: skip
    summary = train(
        args.preset, args.data, out, settings, progress=False, build=embedding_builder if "embed" in parts else None
    )
    data = load_dataset(args.data)
    test = data.indices("test")
    model, _ = load_checkpoint(out)
    test_f1 = macro_f1(
        data.labels[test], predict_rows(model, np.asarray(data.rows), test).argmax(axis=1), data.num_classes
    )
    print(
        f"{args.preset} {args.variant} seed {args.seed}: val macro-F1 {summary['val_macro_f1']:.4f} "
        f"(epoch {summary['best_epoch']}), test macro-F1 {test_f1:.4f}, {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
