"""Fit a tree flow model on a dataset's flows, export it as one ONNX flow model, check it and score it.

The model is bench/flow_cv.py's candidate `--candidate NAME` (its feature set and tree ensemble,
pktnin.trainer.flow_trees), or without it bench/flow_baselines.py's "GBT, flow features" of `--k` rows, fit on the
flows of `--fit` splits (train,val for the shipped model, as the other bundled models are refit). The exported graph computes the features itself from `rows` and `pkt_feats`; this script checks that ONNX
Runtime's probabilities equal scikit-learn's predict_proba on the val and test flows (largest difference, argmax
agreement) and prints the graph's packet and flow macro-F1 on each, computed as flow_baselines.py does.

With `--fusion NAME` (a bench/flow_cv.py fusion, its options read from `--cv-figures`), its forest is fit on the
same flows and blended in ((1 - w) * boosting + w * forest in one graph, flow_trees.blend_flow_graphs), and its
port table is fit on the same splits' packets and fused into the graph like the paper's Eq. 3
(pktnin.engine.port_table.fuse_port_onnx: the key from the flow's first row); the check is against the same
fusion of the scikit-learn probabilities and the numpy table.

    python bench/export_flow_trees.py DATASET_DIR --candidate "GBT, first packet + flow K=8" \
        --out pktnin/models/trees_first_flow8.onnx --cv-figures bench/results/flow-cv.json --json OUT.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flow_baselines import FlowOnnx, flow_scores  # noqa: E402
from flow_cv import CANDIDATES, FUSIONS, fused  # noqa: E402

from pktnin.checkpoint import git_commit  # noqa: E402
from pktnin.dataset.flows import FlowSet, first_rows, flow_set  # noqa: E402
from pktnin.dataset.format import SPLIT_CODES, load_dataset  # noqa: E402
from pktnin.engine.export import save_onnx  # noqa: E402
from pktnin.engine.model_file import PRESET_KEY  # noqa: E402
from pktnin.engine.port_table import PortTable, fuse_port_onnx  # noqa: E402
from pktnin.trainer.flow_trees import (  # noqa: E402
    TreeCandidate,
    blend_flow_graphs,
    feature_matrix,
    flow_trees_onnx,
    graph_features,
    tree_leaves,
    tree_probabilities,
)
from pktnin.trainer.train import training_sample_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--candidate", help="a bench/flow_cv.py candidate by name")
    ap.add_argument("--k", type=int, default=8, help="without --candidate: the flow-feature trees of k rows")
    ap.add_argument("--fit", default="train,val", help="splits the trees are fit on")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--val-figures", type=Path, help="flow_baselines.py JSON: its validation figures go into provenance"
    )
    ap.add_argument("--cv-figures", type=Path, help="flow_cv.py JSON: the candidate's CV figures go into provenance")
    ap.add_argument("--fusion", help="a bench/flow_cv.py fusion (boosting, forest, port table), by name")
    ap.add_argument("--n-jobs", type=int, default=2, help="threads the fit uses")
    ap.add_argument("--flows", type=Path, help="the dataset's FlowSet (.npz); built from the dataset without it")
    ap.add_argument("--keep-model", type=Path, help="pickle of the fitted trees: reused when it exists")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    fusion, fu = None, None
    by_name = {c.name: c for c in CANDIDATES}
    if args.fusion:
        fusions = {f.name: f for f in FUSIONS}
        if args.fusion not in fusions or not args.cv_figures:
            ap.error(f"--fusion is one of {sorted(fusions)}, with the --cv-figures that chose its options")
        fusion = json.loads(args.cv_figures.read_text())["fusion"][args.fusion]
        fu = fusions[args.fusion]
        args.candidate = fu.trees
    if args.candidate:
        if args.candidate not in by_name:
            ap.error(f"--candidate {args.candidate!r} is not one of bench/flow_cv.py's: {sorted(by_name)}")
        candidate = by_name[args.candidate]
    else:
        candidate = TreeCandidate(f"GBT, flow features, K={args.k}", f"flow{args.k}", "gbt")
    k = candidate.k
    data = load_dataset(args.data)
    flows = FlowSet.load(args.flows) if args.flows else flow_set(data)
    flows = flows.select(np.argsort(flows.flow))  # flow_baselines.py's order: the fit sees the same rows in order
    num_classes = data.num_classes

    def split_flows(splits: str):
        return flows.select(np.isin(flows.split, [SPLIT_CODES[s] for s in splits.split(",")]))

    if args.keep_model and args.keep_model.exists():
        model = pickle.loads(args.keep_model.read_bytes())
    else:
        fit = split_flows(args.fit)
        y = fit.label.astype(np.int64)
        weights = training_sample_weights(y, np.arange(len(fit)), "balanced", num_classes)
        started = time.perf_counter()
        model = candidate.fit(
            feature_matrix(candidate.features, first_rows(data, fit, k), fit.feats), y, weights, args.n_jobs
        )
        print(f"fit on {len(fit)} flows ({args.fit}) in {time.perf_counter() - started:.0f} s, "
              f"{tree_leaves(model)} leaves", flush=True)  # fmt: skip
        if args.keep_model:
            args.keep_model.write_bytes(pickle.dumps(model))

    keep = ("source_kind", "labels_csv", "label_column", "split_mode", "seed", "mask", "keep_dns", "n_rows")
    params = {key: value for key, value in model.get_params().items() if isinstance(value, (int, float, str))}
    provenance = {
        "git_commit": git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"dir": str(args.data.resolve()), **{k: data.meta[k] for k in keep if k in data.meta},
                 "n_flows": {s: int((flows.split == c).sum()) for s, c in SPLIT_CODES.items()}},
        "fit": args.fit.replace(",", "+"),
        "validation_macro_f1": None,  # refit on train+val: the choice's figures are below
        "candidate": candidate.name,
        "trees": {"model": type(model).__name__, **params, "leaves": tree_leaves(model), "weighting": "balanced"},
        "features": f"pktnin.trainer.flow_trees.feature_matrix {candidate.features!r}, K={k}",
    }  # fmt: skip
    if args.val_figures:
        val = json.loads(args.val_figures.read_text())["by_split"]["val"][candidate.name]
        provenance["validation"] = {"fit": "train", "packet_macro_f1": round(val["packet_macro_f1"], 4),
                                    "flow_macro_f1": round(val["flow_macro_f1"], 4)}  # fmt: skip
    if args.cv_figures:
        cv = json.loads(args.cv_figures.read_text())["cv"][candidate.name]
        provenance["cross_validation"] = {"fit": "train+val by file, 5 folds", "score": round(cv["score"], 4),
                                          "packet_macro_f1": round(cv["packet_macro_f1"], 4),
                                          "flow_macro_f1": round(cv["flow_macro_f1"], 4)}  # fmt: skip
    proto = flow_trees_onnx(model, k, data.classes, provenance, candidate.features)
    forest, table = None, None
    if fu is not None and fusion is not None:
        provenance["fusion"] = {"name": args.fusion, "forest": fu.forest, "w": fusion["w"], "beta": fusion["beta"],
                                "table": fusion["table"], "cross_validation_nested": round(fusion["score_nested"], 4),
                                "cross_validation_same_folds": round(fusion["score_same_oof"], 4)}  # fmt: skip
        fit = split_flows(args.fit)
        if fu.forest:
            forest_candidate = by_name[fu.forest]
            y = fit.label.astype(np.int64)
            weights = training_sample_weights(y, np.arange(len(fit)), "balanced", num_classes)
            x_fit = feature_matrix(forest_candidate.features, first_rows(data, fit, k), fit.feats)
            forest = forest_candidate.fit(x_fit, y, weights, args.n_jobs)
            provenance["fusion"]["forest_leaves"] = tree_leaves(forest)
            proto = flow_trees_onnx(model, k, data.classes, provenance, candidate.features)
            forest_proto = flow_trees_onnx(forest, k, data.classes, provenance, forest_candidate.features)
            preset = {p.key: p.value for p in proto.metadata_props}[PRESET_KEY] + "_rf"
            proto = blend_flow_graphs(proto, forest_proto, fusion["w"], preset, provenance)
        else:
            proto = flow_trees_onnx(model, k, data.classes, provenance, candidate.features)
        if fu.port:
            fit_rows = np.flatnonzero(np.isin(data.file, np.unique(fit.capture_file)))
            table = PortTable.fit(data.rows[fit_rows, :24], data.labels[fit_rows], num_classes,
                                  fusion["table"]["smoothing"], fusion["table"]["balanced"])  # fmt: skip
    if table is None:
        save_onnx(proto, args.out)
    else:
        trees_path = args.out.with_name(f".{args.out.stem}.trees.onnx")
        save_onnx(proto, trees_path)
        try:
            fuse_port_onnx(trees_path, table, fusion["beta"], args.out, {"fit": args.fit.replace(",", "+")})
        finally:
            trees_path.unlink()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", flush=True)

    graph = FlowOnnx(args.out)
    proto = onnx.load(str(args.out))
    sources = [part["name"] for part in data.meta.get("inputs", [{"name": "all"}])]
    report: dict = {"onnx": str(args.out), "bytes": args.out.stat().st_size, "provenance": provenance}
    for split in ("val", "test"):
        ev = split_flows(split)
        rows = first_rows(data, ev, k)
        x = feature_matrix(candidate.features, rows, ev.feats)
        features_equal = bool((graph_features(proto, rows, ev.feats[:, :k]) == x).all())
        expected = tree_probabilities(model, x, num_classes)
        if fu is not None and fusion is not None:
            forest_probs = None
            if forest is not None:
                x_forest = feature_matrix(by_name[fu.forest].features, rows, ev.feats)
                forest_probs = tree_probabilities(forest, x_forest, num_classes)
            port = None if table is None else table.predict_proba(rows[:, 0, :24])
            expected = fused(fu, expected, forest_probs, port, fusion["w"], fusion["beta"])
        got = graph.predict(rows, ev.feats[:, :k])
        agree = float((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
        scores = flow_scores(ev, got, num_classes, sources)
        report[split] = {"flows": len(ev), "max_abs_diff": float(np.abs(got - expected).max()),
                         "argmax_agreement": agree, "features_equal": features_equal, "onnx": scores,
                         "sklearn": flow_scores(ev, expected, num_classes, sources)}  # fmt: skip
        print(f"[{split}] {len(ev)} flows: graph features == numpy: {features_equal}; max |onnx - sklearn| {report[split]['max_abs_diff']:.2e}, argmax "
              f"agreement {agree:.4%}; onnx packet {scores['packet_macro_f1']:.4f} flow {scores['flow_macro_f1']:.4f}"
              f"; sklearn packet {report[split]['sklearn']['packet_macro_f1']:.4f} "
              f"flow {report[split]['sklearn']['flow_macro_f1']:.4f}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
