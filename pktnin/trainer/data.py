"""The trainer's data helpers: which rows train and validate, their weights, the tf.data pipeline over the
uint8 rows, and predictions for rows. TensorFlow is imported only where a pipeline is made."""

from __future__ import annotations

import numpy as np

from pktnin.dataset.format import SPLIT_TRAIN, SPLIT_VAL
from pktnin.layout import ROW_LEN
from pktnin.trainer.augment import jitter_capture_fields

CLASS_WEIGHTING = ("none", "balanced", "file")
FIT_SPLITS = {"train": (SPLIT_TRAIN,), "train+val": (SPLIT_TRAIN, SPLIT_VAL)}


# ---------------------------------------------------------------------------------------------------------
# Data selection (numpy only)


def select_training_rows(
    labels: np.ndarray,
    split: np.ndarray,
    seed: int,
    max_train: int | None = None,
    max_per_class: int | None = None,
    flow: np.ndarray | None = None,
    max_per_flow: int | None = None,
    splits: tuple[int, ...] = (SPLIT_TRAIN,),
) -> np.ndarray:
    """Sorted indices of the training rows (rows of `splits`), optionally capped per flow, per class and then in
    total (seeded).

    The flow cap comes first: a few long flows (one bulk download, one call) otherwise make up most of a
    class, and a model that memorizes them learns little that carries over to other captures.
    """
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(np.isin(np.asarray(split), splits))
    if max_per_flow is not None:
        if flow is None:
            raise ValueError("max_per_flow needs the flow ids")
        shuffled = rng.permutation(idx)
        flows = np.asarray(flow)[shuffled]
        order = np.argsort(flows, kind="stable")  # rows grouped by flow, shuffled order kept inside a flow
        group_start = np.searchsorted(flows[order], flows[order], side="left")
        rank = np.empty(order.size, dtype=np.int64)  # position of each row among its flow's rows
        rank[order] = np.arange(order.size) - group_start
        idx = np.sort(shuffled[rank < max_per_flow])
    if max_per_class is not None:
        kept = []
        for c in np.unique(labels[idx]):
            members = idx[labels[idx] == c]
            kept.append(rng.choice(members, max_per_class, replace=False) if members.size > max_per_class else members)
        idx = np.sort(np.concatenate(kept)) if kept else idx
    if max_train is not None and idx.size > max_train:
        idx = np.sort(rng.choice(idx, max_train, replace=False))
    return idx


def select_split_rows(split: np.ndarray, which: int, seed: int, limit: int | None = None) -> np.ndarray:
    idx = np.flatnonzero(np.asarray(split) == which)
    if limit is not None and idx.size > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, limit, replace=False))
    return idx


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (k * count_c) for the k classes present (mean weight per sample = 1); absent classes get 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def training_sample_weights(
    labels: np.ndarray, indices: np.ndarray, weighting: str, num_classes: int, file: np.ndarray | None = None
) -> np.ndarray | None:
    """Weight of each row in `indices` (mean 1), or None for "none".

    "balanced": every class weighs the same in total. "file": the same, and inside a class every capture file
    weighs the same: a class seen in one long capture and a few short ones is otherwise learned as that long
    capture, which does not carry over to held-out files (measured on the corpus: docs/results.md).
    """
    if weighting == "none":
        return None
    y = np.asarray(labels)[indices].astype(np.int64)
    if weighting == "balanced":
        return balanced_class_weights(y, num_classes)[y]
    if weighting != "file":
        raise ValueError(f"class weighting must be one of {CLASS_WEIGHTING}, got {weighting!r}")
    if file is None:
        raise ValueError("file weighting needs the rows' capture files (file.npy in the dataset)")
    groups = np.asarray(file)[indices].astype(np.int64)
    pairs, inverse, rows_per_pair = np.unique(y * (groups.max() + 1) + groups, return_inverse=True, return_counts=True)
    files_per_class = np.bincount(pairs // (groups.max() + 1), minlength=num_classes)
    classes_present = np.count_nonzero(files_per_class)
    return y.size / (classes_present * files_per_class[y] * rows_per_pair[inverse])


# ---------------------------------------------------------------------------------------------------------
# tf.data pipeline


def make_tf_dataset(
    rows: np.ndarray,
    labels: np.ndarray | None,
    indices: np.ndarray,
    num_classes: int,
    batch: int,
    shuffle_seed: int | None = None,
    sample_weights: np.ndarray | None = None,
    jitter_seed: int | None = None,
):
    """Batches of (row/255 float32 [b,1500], one-hot [b,C][, sample weight]) gathered from the uint8 rows.

    sample_weights, when given, holds one weight per entry of `indices`. jitter_seed, when given, fills each
    batch's capture fields with random bytes (pktnin.trainer.augment, header-jitter) from a generator so seeded.

    The rows may be a read-only memory map: each batch is gathered with sorted indices (sequential reads),
    and only that batch is ever copied into memory. shuffle_seed None keeps the order (for prediction);
    labels None yields the rows alone.
    """
    import tensorflow as tf

    indices = np.asarray(indices, dtype=np.int64)
    labels = None if labels is None else np.asarray(labels)
    if sample_weights is not None:
        if len(sample_weights) != indices.size:
            raise ValueError("sample_weights needs one weight per index")
        row_weight = np.zeros(len(rows), np.float32)  # looked up by row index, so shuffling keeps them aligned
        row_weight[indices] = sample_weights

    jitter_rng = None if jitter_seed is None else np.random.default_rng(jitter_seed)

    def gather_rows(batch_idx: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(rows[np.sort(batch_idx)])
        return batch if jitter_rng is None else jitter_capture_fields(batch, jitter_rng)

    def gather_labels(batch_idx: np.ndarray) -> np.ndarray:
        assert labels is not None  # only mapped when there are labels
        return labels[np.sort(batch_idx)].astype(np.int32)

    def gather_weights(batch_idx: np.ndarray) -> np.ndarray:
        return row_weight[np.sort(batch_idx)]

    def load(batch_idx):
        x = tf.numpy_function(gather_rows, [batch_idx], tf.uint8, stateful=False)
        x = tf.cast(tf.ensure_shape(x, [None, ROW_LEN]), tf.float32) / 255.0
        if labels is None:
            return x
        y = tf.ensure_shape(tf.numpy_function(gather_labels, [batch_idx], tf.int32, stateful=False), [None])
        y_onehot = tf.one_hot(y, num_classes, dtype=tf.float32)
        if sample_weights is None:
            return x, y_onehot
        w = tf.ensure_shape(tf.numpy_function(gather_weights, [batch_idx], tf.float32, stateful=False), [None])
        return x, y_onehot, w

    ds = tf.data.Dataset.from_tensor_slices(indices)
    if shuffle_seed is not None:
        ds = ds.shuffle(max(1, indices.size), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def predict_rows(model, rows: np.ndarray, indices: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Probabilities [len(indices), C] for rows[indices], in the order of the sorted indices."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if indices.size == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    ds = make_tf_dataset(rows, None, indices, 0, batch)
    return np.asarray(model.predict(ds, verbose=0), dtype=np.float32)
