"""Choose the flow model by grouped cross-validation over the train+val capture files, then score every candidate
on test.

One validation split of a by-file dataset holds few files for some classes, and the ranking it gives need not
carry over to test (docs/flow-decisions.md). Here the train and val flows together are cut into `--folds` folds
by capture file (a file's flows stay in one fold), the files of each (source, majority class of the file) stratum
dealt round-robin over the folds in a seeded order, so each fold holds files of both sources and of most
classes. Each candidate is fit on the other folds (balanced sample weights, as bench/flow_baselines.py fits them)
and scored on the held-out fold with flow_baselines.py's flow_scores (packet macro-F1: every payload packet of
the flows with its flow's decision; flow macro-F1: each flow once). The CV score of a candidate is the mean over
folds of (packet macro-F1 + flow macro-F1) / 2 over both sources pooled; per source it is recorded too.

The winner is the candidate with the highest CV score among those that can ship: a tree ensemble whose ONNX
trees (skl2onnx, fit on the first fold) take at most `--max-onnx-mb`. The port lookup and forests without a
leaf limit are scored for reference. Stage `test` (run after `cv`, which writes the choice into the JSON first)
refits every candidate on train+val and scores it on the test flows, the rows flow_baselines.py's test stage
uses, saving each candidate's per-flow test probabilities for bench/file_bootstrap.py --flow-predictions.

    python bench/flow_cv.py DATASET_DIR --flows FLOWS.npz --json bench/results/flow-cv.json \
        [--stages cv,test] [--save-predictions DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flow_baselines import _file_name, flow_scores  # noqa: E402

from pktnin.dataset.flows import K_MAX, FlowSet, first_rows, flow_set  # noqa: E402
from pktnin.dataset.format import SPLIT_CODES, Dataset, load_dataset  # noqa: E402
from pktnin.engine.port_table import PortTable  # noqa: E402
from pktnin.trainer.flow_trees import TreeCandidate, feature_matrix, tree_leaves, tree_probabilities  # noqa: E402
from pktnin.trainer.train import training_sample_weights  # noqa: E402

PORT_LOOKUP = "port lookup"
CANDIDATES = (
    TreeCandidate("RF, first packet, balanced", "first", "rf"),
    TreeCandidate("GBT, flow features, K=1", "flow1", "gbt"),
    TreeCandidate("GBT, flow features, K=2", "flow2", "gbt"),
    TreeCandidate("GBT, flow features, K=4", "flow4", "gbt"),
    TreeCandidate("GBT, flow features, K=8", "flow8", "gbt"),
    TreeCandidate("RF, first packet, 100x128 leaves", "first", "rf", 100, 1, 128),
    TreeCandidate("RF, first packet, 50x256 leaves", "first", "rf", 50, 1, 256),
    TreeCandidate("ET, first packet, 50x256 leaves", "first", "et", 50, 1, 256),
    TreeCandidate("RF, first packet + flow K=4", "first+flow4", "rf"),
    TreeCandidate("RF, first packet + flow K=4, 50x256 leaves", "first+flow4", "rf", 50, 1, 256),
    TreeCandidate("ET, first packet + flow K=4, 50x256 leaves", "first+flow4", "et", 50, 1, 256),
    TreeCandidate("GBT, first packet + flow K=4", "first+flow4", "gbt"),
    TreeCandidate("GBT, first packet + flow K=8", "first+flow8", "gbt"),
    TreeCandidate("RF, 2 payload packets a direction", "dir2", "rf"),
    TreeCandidate("RF, 2 payload packets a direction, 50x256 leaves", "dir2", "rf", 50, 1, 256),
    TreeCandidate("GBT, 2 payload packets a direction + flow K=4", "dir2+flow4", "gbt"),
)


def file_folds(flows: FlowSet, folds: int, seed: int) -> np.ndarray:
    """Fold of each flow: its capture file's, files dealt round-robin per (source, majority class) stratum."""
    files, inverse = np.unique(flows.capture_file, return_inverse=True)
    strata = []
    for i in range(len(files)):
        mine = inverse == i
        strata.append((int(flows.source[mine][0]), int(np.bincount(flows.label[mine]).argmax())))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    order = sorted(order, key=lambda i: strata[i])  # stable: seeded order inside each stratum
    fold_of_file = np.empty(len(files), np.int64)
    fold_of_file[order] = np.arange(len(files)) % folds
    return fold_of_file[inverse]


def port_lookup(data: Dataset, fit_files: np.ndarray, ev_rows: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot [F, C]: the majority class of the fit files' packets per (protocol, lower port), read from each
    evaluated flow's first row (flow_baselines.py's port lookup)."""
    fit_packet_rows = np.flatnonzero(np.isin(data.file, fit_files))
    table = PortTable.fit(data.rows[fit_packet_rows, :24], data.labels[fit_packet_rows], num_classes)
    return np.eye(num_classes, dtype=np.float32)[table.predict_majority(ev_rows[:, 0, :24])]


def onnx_bytes(model, n_features: int) -> int:
    """Size of the fitted ensemble as ONNX trees (skl2onnx), what a shipped flow model's size grows with."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from pktnin.trainer.flow_trees import _missing_flags_as_ints

    with _missing_flags_as_ints():
        proto = convert_sklearn(model, initial_types=[("x", FloatTensorType([None, n_features]))],
                                options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})  # fmt: skip
    return len(proto.SerializeToString())


def _score(r: dict) -> float:
    return (r["packet_macro_f1"] + r["flow_macro_f1"]) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--flows", type=Path, help="the dataset's FlowSet (.npz); built from the dataset without it")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default="cv,test")
    ap.add_argument("--only", action="append", default=[], help="candidates to run (names); all without it")
    ap.add_argument("--max-onnx-mb", type=float, default=5.0)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--save-predictions", type=Path, help="folder for NAME.npz: each candidate's test probabilities")
    args = ap.parse_args()

    data = load_dataset(args.data)
    all_flows = FlowSet.load(args.flows) if args.flows else flow_set(data)
    all_flows = all_flows.select(np.argsort(all_flows.flow))  # flow_baselines.py's order
    names = [part["name"] for part in data.meta.get("inputs", [{"name": "all"}])]
    num_classes = data.num_classes
    candidates = [c for c in CANDIDATES if not args.only or c.name in args.only]
    out = json.loads(args.json.read_text()) if args.json.exists() else {}
    out.update({"data": str(args.data), "flows": len(all_flows), "folds": args.folds, "seed": args.seed,
                "score": "mean over folds of (packet macro-F1 + flow macro-F1) / 2, both sources pooled",
                "max_onnx_mb": args.max_onnx_mb})  # fmt: skip

    def in_splits(*splits: str) -> np.ndarray:
        return np.isin(all_flows.split, [SPLIT_CODES[s] for s in splits])

    def fit_and_score(fit: FlowSet, ev: FlowSet, fit_rows, ev_rows, tag: str) -> dict[str, dict]:
        """Every candidate fit on `fit`, scored on `ev`: scores, probabilities, fit seconds, leaves, the fit."""
        res: dict[str, dict] = {}
        started = time.perf_counter()
        probs = port_lookup(data, np.unique(fit.capture_file), ev_rows, num_classes)
        res[PORT_LOOKUP] = {"scores": flow_scores(ev, probs, num_classes, names), "probs": probs,
                            "fit_s": time.perf_counter() - started}  # fmt: skip
        y = fit.label.astype(np.int64)
        weights = training_sample_weights(y, np.arange(len(fit)), "balanced", num_classes)
        for c in candidates:
            started = time.perf_counter()
            x_fit = feature_matrix(c.features, fit_rows, fit.feats)
            model = c.fit(x_fit, y, weights, args.n_jobs)
            fit_s = time.perf_counter() - started
            probs = tree_probabilities(model, feature_matrix(c.features, ev_rows, ev.feats), num_classes)
            res[c.name] = {"scores": flow_scores(ev, probs, num_classes, names), "probs": probs, "fit_s": fit_s,
                           "leaves": tree_leaves(model), "model": model, "n_features": x_fit.shape[1]}  # fmt: skip
        for name, r in res.items():
            s = r["scores"]
            per_source = "".join(f"  {n} {_score(v):.3f}" for n, v in s["by_source"].items())
            print(f"[{tag}] {name:50s} packet {s['packet_macro_f1']:.3f} flow {s['flow_macro_f1']:.3f} "
                  f"score {_score(s):.3f}{per_source}  fit {r['fit_s']:.1f} s", flush=True)  # fmt: skip
        return res

    if "cv" in args.stages.split(","):
        pool = all_flows.select(in_splits("train", "val"))
        fold = file_folds(pool, args.folds, args.seed)
        rows = first_rows(data, pool, K_MAX)
        per_fold: dict[str, list] = {}
        sizes: dict[str, int] = {}
        for f in range(args.folds):
            fit_sel, ev_sel = fold != f, fold == f
            res = fit_and_score(pool.select(fit_sel), pool.select(ev_sel), rows[fit_sel], rows[ev_sel], f"fold {f}")
            for name, r in res.items():
                per_fold.setdefault(name, []).append({**r["scores"], "fit_s": r["fit_s"], "leaves": r.get("leaves")})
                if f == 0 and "model" in r:
                    sizes[name] = onnx_bytes(r["model"], r["n_features"])
        summary = {}
        for name, folds in per_fold.items():
            scores = np.array([_score(s) for s in folds])
            summary[name] = {
                "score": float(scores.mean()), "score_std": float(scores.std()),
                "packet_macro_f1": float(np.mean([s["packet_macro_f1"] for s in folds])),
                "flow_macro_f1": float(np.mean([s["flow_macro_f1"] for s in folds])),
                "by_source": {n: float(np.mean([_score(s["by_source"][n]) for s in folds if n in s["by_source"]]))
                              for n in names},
                "fit_s": float(np.mean([s["fit_s"] for s in folds])),
                "onnx_mb_fold0": sizes[name] / 1e6 if name in sizes else None,
                "folds": folds,
            }  # fmt: skip
        shippable = [n for n, s in summary.items() if s["onnx_mb_fold0"] is not None
                     and s["onnx_mb_fold0"] <= args.max_onnx_mb]  # fmt: skip
        winner = max(shippable, key=lambda n: summary[n]["score"])
        out.update({"cv": summary, "fold_files": [int(len(np.unique(pool.capture_file[fold == f])))
                                                   for f in range(args.folds)], "cv_winner": winner})  # fmt: skip
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print("\nCV (mean over folds; score = (packet + flow macro-F1) / 2):")
        for name, s in sorted(summary.items(), key=lambda kv: -kv[1]["score"]):
            mb = "-" if s["onnx_mb_fold0"] is None else f"{s['onnx_mb_fold0']:.1f} MB"
            per_source = "  ".join(f"{n} {v:.3f}" for n, v in s["by_source"].items())
            print(f"  {name:50s} {s['score']:.3f} +- {s['score_std']:.3f}  {per_source}  {mb}  fit {s['fit_s']:.1f} s")
        print(f"CV winner (ONNX trees <= {args.max_onnx_mb} MB): {winner}", flush=True)

    if "test" in args.stages.split(","):
        if "cv_winner" not in out:
            ap.error(f"{args.json} holds no CV choice: run the cv stage first")
        fit, ev = all_flows.select(in_splits("train", "val")), all_flows.select(in_splits("test"))
        res = fit_and_score(fit, ev, first_rows(data, fit, K_MAX), first_rows(data, ev, K_MAX), "test")
        out["test"] = {name: {**r["scores"], "fit_s": r["fit_s"], "leaves": r.get("leaves")} for name, r in res.items()}
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        if args.save_predictions:
            args.save_predictions.mkdir(parents=True, exist_ok=True)
            for name, r in res.items():
                np.savez_compressed(args.save_predictions / f"{_file_name(name)}.npz", flow=ev.flow, probs=r["probs"])


if __name__ == "__main__":
    main()
