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

Fusions (FUSIONS) are scored from the candidates' out-of-fold probabilities without refitting: stage cv keeps
them (`--oof DIR`), stage `fuse` blends a forest into the boosting, (1 - w) * y_gbt + w * y_rf, and fuses a port
table fit on each fold's training files like the paper's Eq. 3, beta * y_port + (1 - beta) * y_blend, with the
table's smoothing and weighting, w and beta chosen over a grid. Its CV score is nested: each fold is scored with
the options the other folds chose; the score of the options chosen on all folds (scored on the same folds) is
recorded too and is optimistic. A fusion wins if its nested score is above the boosting's CV score and its trees
fit the bundle (`--max-fused-mb`). Stage `fuse-test` (after `test`) applies each fusion's all-fold choice to the
members' test probabilities (`--save-predictions`) with the table refit on the train+val files.

    python bench/flow_cv.py DATASET_DIR --flows FLOWS.npz --json bench/results/flow-cv.json \
        [--stages cv,test] [--save-predictions DIR]
    python bench/flow_cv.py DATASET_DIR --flows FLOWS.npz --json bench/results/flow-fusion-cv.json \
        --stages cv,fuse,test,fuse-test --oof DIR --save-predictions DIR --only NAME ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flow_baselines import _file_name, flow_scores  # noqa: E402

from pktnin.dataset.flows import K_MAX, FlowSet, first_rows, flow_set  # noqa: E402
from pktnin.dataset.format import SPLIT_CODES, Dataset, load_dataset  # noqa: E402
from pktnin.engine.port_table import PortTable  # noqa: E402
from pktnin.trainer.flow_trees import TreeCandidate, feature_matrix, tree_leaves, tree_probabilities  # noqa: E402
from pktnin.trainer.metrics import macro_f1_of_confusions  # noqa: E402
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
    # forests whose ONNX trees (about 5.7 MB) fit the bundle beside the boosting, for the probability blend
    TreeCandidate("RF, first packet, 40x512 leaves", "first", "rf", 40, 1, 512),
    TreeCandidate("RF, first packet, 20x1024 leaves", "first", "rf", 20, 1, 1024),
)

GBT8 = "GBT, first packet + flow K=8"  # the CV winner, the default flow model's trees


@dataclass(frozen=True)
class Fusion:
    """Candidates' out-of-fold probabilities combined without refitting: the forest blended into the boosting,
    (1 - w) * y_trees + w * y_forest, then the port table fused like the paper's Eq. 3,
    beta * y_port + (1 - beta) * y_blend. forest None: w = 0; port False: beta = 0."""

    name: str
    trees: str
    forest: str | None = None
    port: bool = False


FUSIONS = (
    Fusion("GBT first+flow K=8 + port table", GBT8, port=True),
    Fusion("GBT first+flow K=8 + RF 40x512", GBT8, "RF, first packet, 40x512 leaves"),
    Fusion("GBT first+flow K=8 + RF 20x1024", GBT8, "RF, first packet, 20x1024 leaves"),
    Fusion("GBT first+flow K=8 + RF unlimited", GBT8, "RF, first packet, balanced"),
    Fusion("GBT first+flow K=8 + RF 40x512 + port table", GBT8, "RF, first packet, 40x512 leaves", True),
    Fusion("GBT first+flow K=8 + RF 20x1024 + port table", GBT8, "RF, first packet, 20x1024 leaves", True),
    Fusion("GBT first+flow K=8 + RF unlimited + port table", GBT8, "RF, first packet, balanced", True),
)
SMOOTHINGS = (1.0, 10.0, 100.0, 1000.0)  # the port table's smoothing: bench/port_fusion.py's options


def table_grid(smoothings=SMOOTHINGS) -> list[tuple[float, bool]]:
    """Port table options to try: each smoothing, with balanced classes or the training frequencies."""
    return [(m, b) for m in smoothings for b in (True, False)]


WEIGHT_GRID = np.round(np.arange(0.0, 1.0001, 0.05), 2)  # beta and w


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


def port_table_probs(
    data: Dataset, fit_files: np.ndarray, first_heads: np.ndarray, num_classes: int, smoothing: float, balanced: bool
) -> np.ndarray:
    """[F, C]: the smoothed port table fit on the fit files' packets, read at each flow's first row (first_heads:
    the first 24 bytes of each flow's first row), as fuse_port_onnx reads it."""
    fit_packet_rows = np.flatnonzero(np.isin(data.file, fit_files))
    table = PortTable.fit(data.rows[fit_packet_rows, :24], data.labels[fit_packet_rows], num_classes, smoothing,
                          balanced)  # fmt: skip
    return table.predict_proba(first_heads)


def fused(fusion: Fusion, trees, forest, port, w: float, beta: float) -> np.ndarray:
    blend = trees if forest is None else (1.0 - w) * trees + w * forest
    return blend if port is None else beta * port + (1.0 - beta) * blend


def fusion_grid(fusion: Fusion, tables_to_try: list[tuple[float, bool]]) -> list[tuple]:
    """(table options or None, w, beta) to try, plain boosting first so that ties keep it."""
    tables = tables_to_try if fusion.port else [None]
    ws = WEIGHT_GRID if fusion.forest else [0.0]
    betas = WEIGHT_GRID if fusion.port else [0.0]
    return [(t, float(w), float(b)) for w, b, t in itertools.product(ws, betas, tables)]


def quick_scores(flows: FlowSet, pred: np.ndarray, num_classes: int, sel: np.ndarray | None = None) -> float:
    """(packet macro-F1 + flow macro-F1) / 2 of flow_scores, from confusion matrices weighted by the packets."""
    y = flows.label.astype(np.int64)
    if sel is not None:
        y, pred, n = y[sel], pred[sel], flows.packets[sel]
    else:
        n = flows.packets
    cell = y * num_classes + pred
    cms = np.stack([np.bincount(cell, weights=weights, minlength=num_classes**2) for weights in (n, None)])
    return float(macro_f1_of_confusions(cms.reshape(2, num_classes, num_classes)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--flows", type=Path, help="the dataset's FlowSet (.npz); built from the dataset without it")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default="cv,test")
    ap.add_argument("--only", action="append", default=[], help="candidates to run (names); all without it")
    ap.add_argument("--max-onnx-mb", type=float, default=5.0)
    ap.add_argument("--max-fused-mb", type=float, default=7.0,
                    help="ONNX trees a shippable fusion may hold (the bundle's 30 MiB less the other bundled models "
                         "and the port table)")  # fmt: skip
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--smoothings", default=",".join(f"{m:g}" for m in SMOOTHINGS),
                    help="the port table's smoothings to try in stage fuse (comma-separated)")  # fmt: skip
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--save-predictions", type=Path, help="folder for NAME.npz: each candidate's test probabilities")
    ap.add_argument("--oof", type=Path, help="folder for NAME.npz: each candidate's out-of-fold probabilities (stage "
                    "cv writes them, stage fuse reads them)")  # fmt: skip
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
        oof: dict[str, np.ndarray] = {}
        for f in range(args.folds):
            fit_sel, ev_sel = fold != f, fold == f
            res = fit_and_score(pool.select(fit_sel), pool.select(ev_sel), rows[fit_sel], rows[ev_sel], f"fold {f}")
            for name, r in res.items():
                oof.setdefault(name, np.zeros((len(pool), num_classes), np.float32))[ev_sel] = r["probs"]
                per_fold.setdefault(name, []).append({**r["scores"], "fit_s": r["fit_s"], "leaves": r.get("leaves")})
                if f == 0 and "model" in r:
                    sizes[name] = onnx_bytes(r["model"], r["n_features"])
        if args.oof:
            args.oof.mkdir(parents=True, exist_ok=True)
            for name, probs in oof.items():
                np.savez_compressed(args.oof / f"{_file_name(name)}.npz", flow=pool.flow, fold=fold, probs=probs)
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

    if "fuse" in args.stages.split(","):
        if not args.oof:
            ap.error("stage fuse reads the out-of-fold probabilities of --oof")
        pool = all_flows.select(in_splits("train", "val"))
        fold = file_folds(pool, args.folds, args.seed)
        heads = first_rows(data, pool, 1)[:, 0, :24]

        def oof_probs(name: str) -> np.ndarray:
            saved = np.load(args.oof / f"{_file_name(name)}.npz")
            if not (np.array_equal(saved["flow"], pool.flow) and np.array_equal(saved["fold"], fold)):
                raise SystemExit(f"{args.oof}: {name}'s out-of-fold probabilities are of other flows or folds")
            return saved["probs"]

        def have(name: str | None) -> bool:
            return name is None or (args.oof / f"{_file_name(name)}.npz").is_file()

        tables_to_try = table_grid(float(m) for m in args.smoothings.split(","))
        port_oof = {t: np.zeros((len(pool), num_classes), np.float32) for t in tables_to_try}
        for f in range(args.folds):
            fit_files = np.unique(pool.capture_file[fold != f])
            for t in tables_to_try:
                port_oof[t][fold == f] = port_table_probs(data, fit_files, heads[fold == f], num_classes, *t)
        in_fold = [fold == f for f in range(args.folds)]
        in_source = [pool.source == i for i in range(len(names))]
        fusion_out = {}
        for fu in (fu for fu in FUSIONS if have(fu.trees) and have(fu.forest)):
            trees = oof_probs(fu.trees)
            forest = oof_probs(fu.forest) if fu.forest else None
            grid = fusion_grid(fu, tables_to_try)
            # scores [grid, fold, overall + each source]
            scores = np.zeros((len(grid), args.folds, 1 + len(names)))
            for g, (t, w, beta) in enumerate(grid):
                pred = fused(fu, trees, forest, port_oof[t] if t else None, w, beta).argmax(axis=1)
                for f, sel in enumerate(in_fold):
                    scores[g, f, 0] = quick_scores(pool, pred, num_classes, sel)
                    for i, src in enumerate(in_source):
                        scores[g, f, 1 + i] = quick_scores(pool, pred, num_classes, sel & src)
            chosen = int(scores[:, :, 0].mean(axis=1).argmax())
            # nested: each fold scored with the options the other folds' out-of-fold scores choose
            nested = [int(np.delete(scores[:, :, 0], f, axis=1).mean(axis=1).argmax()) for f in range(args.folds)]
            nested_scores = np.array([scores[nested[f], f] for f in range(args.folds)])

            def options(g: int, grid=grid) -> dict:
                t, w, beta = grid[g]
                table = None if t is None else {"smoothing": t[0], "balanced": t[1]}
                return {"table": table, "w": w, "beta": beta}

            mb = [out.get("cv", {}).get(n, {}).get("onnx_mb_fold0") for n in (fu.trees, fu.forest) if n]
            fusion_out[fu.name] = {
                "trees": fu.trees, "forest": fu.forest, "port": fu.port, **options(chosen),
                "score_nested": float(nested_scores[:, 0].mean()), "score_nested_std": float(nested_scores[:, 0].std()),
                "by_source_nested": {n: float(nested_scores[:, 1 + i].mean()) for i, n in enumerate(names)},
                "nested_choices": [options(g) for g in nested],
                "score_same_oof": float(scores[chosen, :, 0].mean()),
                "by_source_same_oof": {n: float(scores[chosen, :, 1 + i].mean()) for i, n in enumerate(names)},
                "trees_alone": float(scores[0, :, 0].mean()),
                "trees_alone_by_source": {n: float(scores[0, :, 1 + i].mean()) for i, n in enumerate(names)},
                "onnx_trees_mb_fold0": None if None in mb else float(sum(mb)),
            }  # fmt: skip
            r = fusion_out[fu.name]
            print(f"{fu.name:50s} nested {r['score_nested']:.3f} +- {r['score_nested_std']:.3f} "
                  + "  ".join(f"{n} {v:.3f}" for n, v in r["by_source_nested"].items())
                  + f"  same-OOF {r['score_same_oof']:.3f}  trees alone {r['trees_alone']:.3f}  "
                  f"choice {options(chosen)}", flush=True)  # fmt: skip
        baseline = out.get("cv", {}).get(GBT8, {}).get("score")
        shippable = [n for n, r in fusion_out.items()
                     if r["onnx_trees_mb_fold0"] is not None and r["onnx_trees_mb_fold0"] <= args.max_fused_mb]  # fmt: skip
        best = max(shippable, key=lambda n: fusion_out[n]["score_nested"], default=None)
        winner = best if best and baseline is not None and fusion_out[best]["score_nested"] > baseline else None
        out.update({"fusion": fusion_out, "fusion_winner": winner, "fusion_rule": (
            "options (port table smoothing and weighting, w, beta) over a grid; score_nested: each fold scored with "
            "the options chosen on the other folds' out-of-fold scores; score_same_oof: the options chosen on all "
            "folds, scored on the same folds (optimistic); the winner: the shippable fusion (ONNX trees <= "
            f"{args.max_fused_mb} MB) with the best nested score, if above {GBT8}'s CV score ({baseline})")})  # fmt: skip
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"fusion winner (nested CV score above {GBT8}'s {baseline}): {winner}", flush=True)

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

    if "fuse-test" in args.stages.split(","):
        if not args.save_predictions or "fusion" not in out:
            ap.error("stage fuse-test reads the fuse stage's choices and the test stage's --save-predictions")
        fit, ev = all_flows.select(in_splits("train", "val")), all_flows.select(in_splits("test"))
        heads = first_rows(data, ev, 1)[:, 0, :24]

        def test_probs(name: str | None) -> np.ndarray | None:
            if name is None:
                return None
            saved = np.load(args.save_predictions / f"{_file_name(name)}.npz")
            if not np.array_equal(saved["flow"], ev.flow):
                raise SystemExit(f"{args.save_predictions}: {name}'s test probabilities are of other flows")
            return saved["probs"]

        out["fusion_test"] = {}
        for fu in FUSIONS:
            r = out["fusion"].get(fu.name)
            if r is None:
                continue
            port = None
            if r["table"]:
                port = port_table_probs(data, np.unique(fit.capture_file), heads, num_classes,
                                        r["table"]["smoothing"], r["table"]["balanced"])  # fmt: skip
            probs = fused(fu, test_probs(fu.trees), test_probs(fu.forest), port, r["w"], r["beta"])
            out["fusion_test"][fu.name] = flow_scores(ev, probs, num_classes, names)
            s = out["fusion_test"][fu.name]
            print(f"[test] {fu.name:50s} packet {s['packet_macro_f1']:.3f} flow {s['flow_macro_f1']:.3f}  "
                  + "  ".join(f"{n} {v['packet_macro_f1']:.3f}/{v['flow_macro_f1']:.3f}"
                              for n, v in s["by_source"].items()), flush=True)  # fmt: skip
            np.savez_compressed(args.save_predictions / f"{_file_name(fu.name)}.npz", flow=ev.flow, probs=probs)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
