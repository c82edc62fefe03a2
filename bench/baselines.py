"""Simple baselines on a pktnin dataset's test split: a port lookup and a random forest on the row bytes.

Port lookup: the training split's majority class for each (TCP/UDP, port) pair, taking the lower of the two ports
of a packet (usually the server's); unseen ports get the training split's most common class; `port table,
balanced`: the argmax of the same table's smoothed distribution with classes weighted equally (the port branch of
pktnin.trainer.port_table). Random forest: 100
trees (scikit-learn) on the 1500 uint8 bytes, on the header bytes 0..39 and on the body bytes 40..1499, unweighted
and with the sample weightings the networks train with (`balanced`: classes equal; `file`: classes equal and the
capture files of a class equal; pktnin.trainer.data.training_sample_weights). Macro-F1 as in the paper
(pktnin.trainer.metrics); for the forests also at flow level (class probabilities averaged per flow, as
`pktnin evaluate` does for the networks). `--fit train,val` fits on both splits (for models refit on train+val).
Reported per split (`--eval val,test`) and, for a dataset built from several sources, per source. The forests fit
on exactly the rows the networks train on, or on a seeded sample of at most N a class (`--max-fit-per-class`);
`--save-predictions DIR` keeps every model's probabilities for bench/file_bootstrap.py.

    python bench/baselines.py DATASET_DIR [--json OUT] [--fit train,val] [--eval val,test] [--forests balanced]
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
from pktnin.trainer.data import training_sample_weights  # noqa: E402
from pktnin.trainer.metrics import evaluation_report  # noqa: E402
from pktnin.trainer.port_table import PortTable  # noqa: E402

FORESTS = (  # name, byte columns, sample weighting
    ("RF, 1500 bytes", slice(0, 1500), "none"),
    ("RF, 1500 bytes, balanced", slice(0, 1500), "balanced"),
    ("RF, 1500 bytes, file-weighted", slice(0, 1500), "file"),
    ("RF, header 0..39", slice(0, 40), "none"),
    ("RF, header 0..39, balanced", slice(0, 40), "balanced"),
    ("RF, body 40..1499", slice(40, 1500), "none"),
    ("RF, body 40..1499, balanced", slice(40, 1500), "balanced"),
)


def fit_rows(data, splits: str, max_per_class: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of the rows of `splits` (comma-separated), at most `max_per_class` of each class (a seeded
    uniform sample) when given."""
    idx = np.sort(np.concatenate([data.indices(part) for part in splits.split(",")]))
    if max_per_class is None:
        return idx
    rng = np.random.default_rng(seed)
    y = data.labels[idx]
    keep = [rng.permutation(idx[y == c])[:max_per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


def forest_probabilities(
    data, rows, fit_idx, eval_idx, cols, weighting: str, trees: int = 100, eval_sets: dict | None = None
) -> np.ndarray:
    """Class probabilities [len(eval_idx), C] of a random forest fit on rows[fit_idx][:, cols]; with `eval_sets`
    ({name: indices}) a dict of such arrays instead, one forest fit for all."""
    from sklearn.ensemble import RandomForestClassifier

    weights = training_sample_weights(data.labels, fit_idx, weighting, data.num_classes, data.file)
    forest = RandomForestClassifier(n_estimators=trees, min_samples_leaf=2, n_jobs=-1, random_state=0)
    forest.fit(np.asarray(rows[fit_idx])[:, cols], data.labels[fit_idx].astype(np.int64), sample_weight=weights)

    def predict(idx):
        probs = np.zeros((len(idx), data.num_classes), np.float32)
        for start in range(0, len(idx), 50_000):  # a block of rows at a time from the memory map
            part = idx[start : start + 50_000]
            probs[start : start + part.size][:, forest.classes_] = forest.predict_proba(np.asarray(rows[part])[:, cols])
        return probs

    if eval_sets is None:
        return predict(eval_idx)
    return {name: predict(idx) for name, idx in eval_sets.items()}


def scores(data, idx: np.ndarray, probs: np.ndarray) -> dict:
    """Packet- and flow-level report of `probs` on rows `idx`, overall and per source."""
    y = data.labels[idx].astype(np.int64)
    flows = np.asarray(data.flow)[idx]
    report = evaluation_report(probs, y, data.classes, flows)
    out = {"report": report["packet"], "flow": report.get("flow")}
    if data.source is not None:
        names = [part["name"] for part in data.meta["inputs"]]
        src = np.asarray(data.source)[idx]
        out["by_source"] = {}
        for i, name in enumerate(names):
            sel = src == i
            if sel.any():
                r = evaluation_report(probs[sel], y[sel], data.classes, flows[sel])
                out["by_source"][name] = {"packets": int(sel.sum()), "macro_f1": r["packet"]["macro_f1"],
                                          "flow_macro_f1": r["flow"]["macro_f1"]}  # fmt: skip
    return out


def one_hot(pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[pred]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--fit", default="train", help="splits to fit on, comma-separated (train, val)")
    ap.add_argument("--eval", default="test", help="splits to report, comma-separated (val, test)")
    ap.add_argument("--forests", default="all", help="'all' (every forest above) or 'balanced' (1500 bytes only)")
    ap.add_argument("--max-fit-per-class", type=int, help="fit the forests on at most N rows a class (seeded)")
    ap.add_argument("--save-predictions", type=Path, help="folder for NAME.npz: probabilities per eval split")
    args = ap.parse_args()
    data = load_dataset(args.data)
    rows = data.rows  # memory-mapped: the forests gather the rows they fit on
    evals = {part: data.indices(part) for part in args.eval.split(",")}
    fit_all = fit_rows(data, args.fit, None)
    fit_forest = fit_rows(data, args.fit, args.max_fit_per_class)
    forests = FORESTS if args.forests == "all" else [f for f in FORESTS if f[0] == "RF, 1500 bytes, balanced"]
    probs: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    table = PortTable.fit(rows[fit_all, :24], data.labels[fit_all], data.num_classes)
    probs["port lookup"] = {
        s: one_hot(table.predict_majority(rows[i, :24]), data.num_classes) for s, i in evals.items()
    }
    probs["port table, balanced"] = {s: table.predict_proba(rows[i, :24]) for s, i in evals.items()}
    seconds["port lookup"] = seconds["port table, balanced"] = time.perf_counter() - start
    for name, cols, weighting in forests:
        start = time.perf_counter()
        probs[name] = forest_probabilities(data, rows, fit_forest, None, cols, weighting, args.trees, evals)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: fit and predicted in {seconds[name]:.0f} s", flush=True)

    by_split = {s: {name: {**scores(data, idx, probs[name][s]), "seconds": seconds[name]} for name in probs}
                for s, idx in evals.items()}  # fmt: skip
    for s, results in by_split.items():
        print(
            f"-- {s} split ({evals[s].size} rows), fit on {args.fit} ({fit_all.size} rows, forests {fit_forest.size})"
        )
        for name, r in results.items():
            rep = r["report"]
            flow = f"  flow F1 {r['flow']['macro_f1']:.4f}" if r.get("flow") else ""
            per_source = "".join(f"  {n} {v['macro_f1']:.4f}/{v['flow_macro_f1']:.4f}"
                                 for n, v in r.get("by_source", {}).items())  # fmt: skip
            print(f"{name:32s} macro P {rep['macro_precision']:.4f}  R {rep['macro_recall']:.4f}  "
                  f"F1 {rep['macro_f1']:.4f}{flow}{per_source}")  # fmt: skip
    if args.save_predictions:
        args.save_predictions.mkdir(parents=True, exist_ok=True)
        for name, per_split in probs.items():
            arrays = {f"{s}_idx": evals[s] for s in per_split} | {f"{s}_probs": p for s, p in per_split.items()}
            np.savez_compressed(args.save_predictions / f"{name.replace(' ', '_').replace(',', '')}.npz", **arrays)
    if args.json:
        meta = {"data": str(args.data), "fit": args.fit, "fit_rows": int(fit_all.size),
                "forest_fit_rows": int(fit_forest.size), "max_fit_per_class": args.max_fit_per_class,
                "trees": args.trees}  # fmt: skip
        main_split = "test" if "test" in by_split else next(iter(by_split))
        args.json.write_text(
            json.dumps({**meta, "results": by_split[main_split], "by_split": by_split}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
