"""Classification metrics of the paper (Eq. 4-6) in plain numpy, returned as JSON-able dicts.

Conventions (they match scikit-learn's defaults with zero_division=0):
- The confusion matrix has true classes as rows and predicted classes as columns.
- A class with no predictions has precision 0; a class with no support has recall 0; F1 is 0 when
  precision + recall is 0.
- Macro averages run over the classes that occur in the true labels or in the predictions of the evaluated
  set. A class absent from both says nothing about the model and would only pull the average down; a class
  that is predicted but never true counts (its precision and recall are 0), because those are real errors.
  `average_over="labels"` averages over the classes with true labels only: for data labeled with a subset of
  the model's classes, where the classes it lacks cannot be scored (predictions of them still lower the recall
  of the true classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [num_classes, num_classes]: entry [t, p] counts samples of true class t predicted as p."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}: min {y.min()}, max {y.max()}")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 (Eq. 4-6), support and predicted counts from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)  # TP + FN
    predicted = cm.sum(axis=0)  # TP + FP
    precision = _safe_divide(tp, predicted.astype(np.float64))
    recall = _safe_divide(tp, support.astype(np.float64))
    f1 = _safe_divide(2.0 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}


AVERAGES = ("present", "labels")


def _present(scores: dict[str, np.ndarray], average_over: str = "present") -> np.ndarray:
    """The classes a macro average runs over: those that are true or predicted at least once ("present"), or
    those that are true at least once ("labels")."""
    if average_over not in AVERAGES:
        raise ValueError(f"average_over must be one of {AVERAGES}, got {average_over!r}")
    if average_over == "labels":
        return scores["support"] > 0
    return (scores["support"] > 0) | (scores["predicted"] > 0)


def _macro(scores: dict[str, np.ndarray], key: str, average_over: str = "present") -> float:
    present = _present(scores, average_over)
    return float(scores[key][present].mean()) if present.any() else 0.0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Macro-averaged F1 over the classes present in y_true or y_pred (see the module docstring)."""
    return _macro(per_class_scores(confusion_matrix(y_true, y_pred, num_classes)), "f1")


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], average_over: str = "present"
) -> dict:
    """Accuracy, macro P/R/F1, per-class P/R/F1/support and the confusion matrix, as a JSON-able dict."""
    num_classes = len(classes)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    scores = per_class_scores(cm)
    total = int(cm.sum())
    return {
        "samples": total,
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "macro_precision": _macro(scores, "precision", average_over),
        "macro_recall": _macro(scores, "recall", average_over),
        "macro_f1": _macro(scores, "f1", average_over),
        "macro_classes": int(_present(scores, average_over).sum()),
        "per_class": [
            {
                "class": str(classes[i]),
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(scores["support"][i]),
                "predicted": int(scores["predicted"][i]),
            }
            for i in range(num_classes)
        ],
        "confusion_matrix": cm.tolist(),
    }


def flow_probabilities(
    probs: np.ndarray, y_true: np.ndarray, flow_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Average packet probability vectors per flow id.

    Returns (flow ids sorted, mean probabilities [F, C], flow labels [F], packets per flow [F]). A flow's
    label is the most frequent packet label in it (ties -> the smallest label id); datasets built from flow
    labels give every packet of a flow the same label, so this only matters for hand-made data.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    flow_ids = np.asarray(flow_ids).ravel()
    if not (probs.shape[0] == y_true.size == flow_ids.size):
        raise ValueError(f"probs has {probs.shape[0]} rows, y_true {y_true.size} labels, flow_ids {flow_ids.size} ids")
    num_classes = probs.shape[1]
    if y_true.size and (y_true.min() < 0 or y_true.max() >= num_classes):
        raise ValueError(f"y_true holds labels outside 0..{num_classes - 1}")
    if y_true.size == 0:
        return flow_ids[:0], np.zeros((0, num_classes)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(flow_ids, kind="stable")
    sorted_flows = flow_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_flows[1:] != sorted_flows[:-1]])
    counts = np.diff(np.r_[starts, sorted_flows.size])
    mean = np.add.reduceat(probs[order], starts, axis=0) / counts[:, None]
    # Majority label per flow: count (flow, label) pairs; argmax takes the first maximum = the smallest label.
    flow_index = np.repeat(np.arange(starts.size), counts)
    label_counts = np.zeros((starts.size, num_classes), dtype=np.int64)
    np.add.at(label_counts, (flow_index, y_true[order]), 1)
    labels = label_counts.argmax(axis=1)
    return sorted_flows[starts], mean, labels, counts


def evaluation_report(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: Sequence[str],
    flow_ids: np.ndarray | None = None,
    average_over: str = "present",
) -> dict:
    """Packet-level metrics and, when flow ids are given, flow-level metrics (mean probabilities per flow)."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs must be [n, {len(classes)}], got shape {probs.shape}")
    report = {"packet": classification_report(y_true, probs.argmax(axis=1), classes, average_over)}
    if flow_ids is not None:
        _, mean, labels, counts = flow_probabilities(probs, y_true, flow_ids)
        flow = classification_report(labels, mean.argmax(axis=1), classes, average_over)
        flow["flows"] = int(counts.size)
        flow["packets_per_flow_median"] = float(np.median(counts)) if counts.size else 0.0
        report["flow"] = flow
    return report


def macro_f1_of_confusions(cms: np.ndarray) -> np.ndarray:
    """Macro-F1 of each confusion matrix in a stack [..., C, C] (same conventions as macro_f1)."""
    cms = np.asarray(cms, dtype=np.float64)
    tp = np.diagonal(cms, axis1=-2, axis2=-1)
    support, predicted = cms.sum(axis=-1), cms.sum(axis=-2)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2.0 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    count = present.sum(axis=-1)
    return _safe_divide((f1 * present).sum(axis=-1), count.astype(np.float64))


def group_bootstrap_macro_f1(
    y_true: np.ndarray, predictions: dict[str, np.ndarray], groups: np.ndarray, num_classes: int,
    replicates: int = 2000, seed: int = 0, stratify: bool = True,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Macro-F1 of each prediction set on `replicates` resamples of whole groups drawn with replacement.

    Groups are the units the test set was drawn in (capture files for a by-file split): resampling packets
    instead would treat thousands of packets of one capture as independent evidence and give intervals far
    too narrow. Every prediction set sees the same resamples, so differences between them are paired.
    stratify: groups are drawn within strata of the same majority true label, as many as the stratum holds, so
    that a class of one or two test files is not simply missing from a third of the resamples (a class left out
    would change what the macro average runs over, and pull every interval down).
    Returns {name: macro-F1 per replicate [replicates]}.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    _, group_ids = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    if group_ids.size != y_true.size:
        raise ValueError(f"groups has {group_ids.size} entries for {y_true.size} labels")
    n_groups = int(group_ids.max()) + 1 if group_ids.size else 0
    if n_groups == 0 or replicates < 1:
        raise ValueError("the bootstrap needs at least one group and one replicate")
    if stratify:  # majority true label of each group (ties: the smallest label)
        label_counts = np.zeros((n_groups, num_classes), np.int64)
        np.add.at(label_counts, (group_ids, y_true), 1)
        stratum = label_counts.argmax(axis=1)
    else:
        stratum = np.zeros(n_groups, np.int64)
    rng = np.random.default_rng(seed)
    times_drawn = np.zeros((replicates, n_groups))  # how often each group is in each replicate
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        draws = members[rng.integers(0, members.size, size=(replicates, members.size))]
        np.add.at(times_drawn, (np.repeat(np.arange(replicates), members.size), draws.ravel()), 1.0)
    out = {}
    for name, y_pred in predictions.items():
        y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
        confusion_matrix(y_true, y_pred, num_classes)  # validates shapes and label ranges
        cell = (group_ids * num_classes + y_true) * num_classes + y_pred
        per_group = np.bincount(cell, minlength=n_groups * num_classes * num_classes)
        per_group = per_group.reshape(n_groups, num_classes * num_classes).astype(np.float64)
        cms = (times_drawn @ per_group).reshape(replicates, num_classes, num_classes)
        out[name] = macro_f1_of_confusions(cms)
    return out
