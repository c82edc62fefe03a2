"""Simple baselines on a pktnin dataset's test split: a port lookup and a random forest on the row bytes.

Port lookup: the training split's majority class for each (protocol, port) pair, taking the lower of the two ports
of a packet (usually the server's); unseen ports get the training split's most common class. Random forest: 100
trees (scikit-learn) on the 1500 uint8 bytes, on the header bytes 0..39 and on the body bytes 40..1499, unweighted
and with the sample weightings the networks train with (`balanced`: classes equal; `file`: classes equal and the
capture files of a class equal; pktnin.trainer.train.training_sample_weights). Macro-F1 as in the paper
(pktnin.trainer.metrics); for the forests also at flow level (class probabilities averaged per flow, as
`pktnin evaluate` does for the networks). `--fit train,val` fits on both splits (for models refit on train+val).

    python bench/baselines.py DATASET_DIR [--json OUT] [--fit train,val]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pktnin.dataset.format import load_dataset  # noqa: E402
from pktnin.trainer.metrics import classification_report, evaluation_report  # noqa: E402
from pktnin.trainer.train import training_sample_weights  # noqa: E402

FORESTS = (  # name, byte columns, sample weighting
    ("RF, 1500 bytes", slice(0, 1500), "none"),
    ("RF, 1500 bytes, balanced", slice(0, 1500), "balanced"),
    ("RF, 1500 bytes, file-weighted", slice(0, 1500), "file"),
    ("RF, header 0..39", slice(0, 40), "none"),
    ("RF, header 0..39, balanced", slice(0, 40), "balanced"),
    ("RF, body 40..1499", slice(40, 1500), "none"),
    ("RF, body 40..1499, balanced", slice(40, 1500), "balanced"),
)


def port_keys(rows: np.ndarray) -> np.ndarray:
    """(protocol, lower port) from the rows themselves: IPv4 protocol byte 9 / IPv6 next header byte 6, ports 20..23."""
    version = rows[:, 0] >> 4
    proto = np.where(version == 4, rows[:, 9], rows[:, 6]).astype(np.int64)
    sport = rows[:, 20].astype(np.int64) << 8 | rows[:, 21]
    dport = rows[:, 22].astype(np.int64) << 8 | rows[:, 23]
    return proto << 16 | np.minimum(sport, dport)


def port_lookup(rows_train, y_train, rows_test, num_classes: int) -> np.ndarray:
    keys = port_keys(rows_train)
    uniq, inverse = np.unique(keys, return_inverse=True)
    counts = np.zeros((uniq.size, num_classes), dtype=np.int64)
    np.add.at(counts, (inverse, y_train), 1)
    table = dict(zip(uniq.tolist(), counts.argmax(axis=1).tolist()))
    fallback = int(np.bincount(y_train, minlength=num_classes).argmax())
    return np.array([table.get(k, fallback) for k in port_keys(rows_test).tolist()], dtype=np.int64)


def forest_probabilities(data, rows, fit_idx, eval_idx, cols, weighting: str, trees: int = 100) -> np.ndarray:
    """Class probabilities [len(eval_idx), C] of a random forest fit on rows[fit_idx][:, cols]."""
    from sklearn.ensemble import RandomForestClassifier

    weights = training_sample_weights(data.labels, fit_idx, weighting, data.num_classes, data.file)
    forest = RandomForestClassifier(n_estimators=trees, min_samples_leaf=2, n_jobs=-1, random_state=0)
    forest.fit(rows[fit_idx][:, cols], data.labels[fit_idx].astype(np.int64), sample_weight=weights)
    probs = np.zeros((len(eval_idx), data.num_classes))
    probs[:, forest.classes_] = forest.predict_proba(rows[eval_idx][:, cols])
    return probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--fit", default="train", help="splits to fit on, comma-separated (train, val)")
    args = ap.parse_args()
    data = load_dataset(args.data)
    rows = np.asarray(data.rows)
    tr = np.sort(np.concatenate([data.indices(part) for part in args.fit.split(",")]))
    te = data.indices("test")
    y_tr, y_te = data.labels[tr].astype(np.int64), data.labels[te].astype(np.int64)
    results = {}

    start = time.perf_counter()
    pred = port_lookup(rows[tr], y_tr, rows[te], data.num_classes)
    results["port lookup"] = {"report": classification_report(y_te, pred, data.classes), "seconds": time.perf_counter() - start}
    for name, cols, weighting in FORESTS:
        start = time.perf_counter()
        probs = forest_probabilities(data, rows, tr, te, cols, weighting, args.trees)
        flows = None if data.flow is None else np.asarray(data.flow)[te]
        report = evaluation_report(probs, y_te, data.classes, flows)
        results[name] = {"report": report["packet"], "flow": report.get("flow"), "seconds": time.perf_counter() - start}

    for name, r in results.items():
        rep = r["report"]
        flow = f"  flow F1 {r['flow']['macro_f1']:.4f}" if r.get("flow") else ""
        print(f"{name:32s} macro P {rep['macro_precision']:.4f}  R {rep['macro_recall']:.4f}  F1 {rep['macro_f1']:.4f}{flow}")
    if args.json:
        args.json.write_text(
            json.dumps({"data": str(args.data), "fit": args.fit, "results": results}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
