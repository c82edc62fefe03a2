"""Probes against the shipped flow fusion, scored by the same grouped folds as bench/flow_cv.py: does another
boosting setting, a linear model on hashed byte n-grams of the first payload packets, a per-class bias on the
fused probabilities, the decisions of earlier flows to the same server, or a table of server names raise the
nested CV score?

Each probe gives out-of-fold probabilities over the train+val flows (the folds of flow_cv.py's `file_folds`).
A boosting setting replaces the shipped boosting inside the shipped fusion; the n-gram model joins it as a third
member, (1 - g) * y_fused + g * y_ngram; the class bias multiplies the fused probabilities by exp(b_c) with b
fit by coordinate ascent; the server context blends a flow's fused probabilities with the mean of those of the
earlier flows (by first packet) of its capture file to the same server, (1 - c) * y + c * y_context, the server
being its lower port, or its server's address (the source address of its first packet from the lower port; the
dataset's src_addr, src_port and ts_ns columns). The name table (pktnin.engine.name_table, keyed by the registered
domain of the TLS server_name or HTTP Host in the flow's first 8 rows) is fit on the other folds' flows and fused
where the flow's name is known, g * y_name + (1 - g) * y_fused; its smoothing, weighting and g are chosen by the
nested rule, on top of the shipped fusion's all-fold options and also jointly with the fusion's w and beta. Each is scored like flow_cv.py's stage fuse: the mean over folds of (packet + flow
macro-F1) / 2, nested (each fold scored with the options chosen on the other folds) and with the options chosen
on all folds (optimistic). The shipped fusion's own nested score is the baseline, computed here the same way.

Reads the members' out-of-fold probabilities that `flow_cv.py --stages cv --oof DIR` wrote (the boosting and
the 20x1024 forest):

    python bench/flow_probes.py DATASET_DIR --oof DIR --json bench/results/flow-probes.json \
        [--probes gbt,ngram,bias,context,names] [--gbt-settings JSON ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flow_baselines import _file_name  # noqa: E402
from flow_cv import GBT8, WEIGHT_GRID, file_folds, port_table_probs, quick_scores  # noqa: E402

from pktnin.dataset.flows import FlowSet, first_rows, flow_set  # noqa: E402
from pktnin.dataset.format import SPLIT_CODES, load_dataset  # noqa: E402
from pktnin.engine.name_table import NameTable, fuse_names  # noqa: E402
from pktnin.flow_features import payload_length  # noqa: E402
from pktnin.layout import HEADER_LEN, ROW_LEN  # noqa: E402
from pktnin.server_names import flow_name_keys  # noqa: E402
from pktnin.trainer.flow_trees import feature_matrix  # noqa: E402
from pktnin.trainer.train import training_sample_weights  # noqa: E402

FOREST = "RF, first packet, 20x1024 leaves"  # the shipped fusion's forest
SHIPPED_TABLE = (1.0, False)  # the shipped port table: smoothing 1, training frequencies
GBT_SETTINGS = (  # the shipped boosting (fit_gbt) is max_iter 150, learning rate 0.1, 31 leaves
    {"max_iter": 150, "learning_rate": 0.1, "max_leaf_nodes": 31, "max_features": 0.5},
    {"max_iter": 150, "learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 50, "l2_regularization": 1.0},
    {"max_iter": 300, "learning_rate": 0.05, "max_leaf_nodes": 31},
)
NGRAM_BITS, NGRAM_N, NGRAM_PACKETS = 12, 3, 2  # 4,096 hashed buckets of byte trigrams, first 2 payload packets
BIAS_STEPS = (-1.0, -0.5, -0.25, 0.25, 0.5, 1.0)
NAME_SMOOTHINGS, NAME_WEIGHTINGS = (0.1, 1.0, 10.0, 100.0), ("packets", "flows")
COARSE_GRID = np.round(np.arange(0.0, 1.0001, 0.1), 1)  # w, beta and g in the joint search (its size: 11**3 x 8)


def nested(scores: np.ndarray) -> tuple[float, float, int]:
    """scores [options, folds] -> (nested score, all-fold best score, all-fold best option)."""
    best = int(np.argmax(scores.mean(axis=1)))
    folds = scores.shape[1]
    per_fold = [scores[int(np.argmax(np.delete(scores, f, axis=1).mean(axis=1))), f] for f in range(folds)]
    return float(np.mean(per_fold)), float(scores[best].mean()), best


def fusion_scores(pool: FlowSet, fold: np.ndarray, gbt, forest, port, num_classes: int) -> tuple[np.ndarray, list]:
    """[options, folds] scores of beta * y_port + (1 - beta) * ((1 - w) * y_gbt + w * y_forest) over the grid."""
    grid = list(itertools.product(WEIGHT_GRID, WEIGHT_GRID))
    folds = int(fold.max()) + 1
    scores = np.array([[quick_scores(pool, (b * port + (1 - b) * ((1 - w) * gbt + w * forest)).argmax(1),
                                     num_classes, fold == f) for f in range(folds)] for w, b in grid])  # fmt: skip
    return scores, grid


def hashed_ngrams(rows: np.ndarray, bits: int = NGRAM_BITS, n: int = NGRAM_N, packets: int = NGRAM_PACKETS):
    """Sparse [F, 2**bits]: log(1 + count) of each hashed byte n-gram in the payloads of a flow's first `packets`
    rows (rows [F, >=packets, 1500]; only the payload's real bytes), rows scaled to unit length."""
    from scipy import sparse
    from sklearn.preprocessing import normalize

    flows, width = rows.shape[0], ROW_LEN - HEADER_LEN - n + 1
    total = sparse.csr_matrix((flows, 1 << bits), dtype=np.float32)
    for p in range(packets):
        payload = rows[:, p, HEADER_LEN:].astype(np.int64)
        key = np.zeros((flows, width), np.int64)
        for j in range(n):
            key = key * 257 + payload[:, j : j + width]
        bucket = (key * 2654435761 >> 7) % (1 << bits)
        real = np.arange(width)[None, :] + n <= payload_length(rows[:, p])[:, None]
        r, c = np.nonzero(real)
        total = total + sparse.csr_matrix((np.ones(len(r), np.float32), (r, bucket[r, c])), shape=total.shape)
    total.data = np.log1p(total.data)
    return normalize(total)


def out_of_fold(fit, x, y: np.ndarray, fold: np.ndarray, num_classes: int) -> np.ndarray:
    """[F, C] probabilities of each fold from `fit(x, y, weights)` on the other folds (balanced weights)."""
    probs = np.zeros((len(y), num_classes), np.float32)
    for f in range(int(fold.max()) + 1):
        train = fold != f
        weights = training_sample_weights(y[train], np.arange(int(train.sum())), "balanced", num_classes)
        model = fit(x[train], y[train], weights)
        probs[np.ix_(fold == f, model.classes_)] = model.predict_proba(x[fold == f])
    return probs


def fold_scores(pool: FlowSet, fold: np.ndarray, probs: np.ndarray, num_classes: int) -> list[float]:
    return [quick_scores(pool, probs.argmax(1), num_classes, fold == f) for f in range(int(fold.max()) + 1)]


def fit_bias(pool: FlowSet, log_probs: np.ndarray, sel: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class log bias raising the score on `sel` by coordinate ascent over BIAS_STEPS (three rounds)."""
    bias = np.zeros(num_classes)
    best = quick_scores(pool, log_probs.argmax(1), num_classes, sel)
    for _ in range(3):
        improved = False
        for c, step in itertools.product(range(num_classes), BIAS_STEPS):
            trial = bias.copy()
            trial[c] += step
            score = quick_scores(pool, (log_probs + trial).argmax(1), num_classes, sel)
            if score > best + 1e-4:
                best, bias, improved = score, trial, True
        if not improved:
            break
    return bias


def earlier_context(probs: np.ndarray, keys: list, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([F, C] mean probabilities of the earlier flows with the same key, [F] whether there is one), walking the
    flows in `order`; a key None has no context."""
    context, has = np.zeros_like(probs), np.zeros(len(probs), bool)
    sums: dict = {}
    for i in order:
        if keys[i] is None:
            continue
        if keys[i] in sums:
            total, count = sums[keys[i]]
            context[i], has[i] = total / count, True
        total, count = sums.get(keys[i], (0.0, 0))
        sums[keys[i]] = (total + probs[i], count + 1)
    return context, has


def server_addresses(data, pool: FlowSet) -> list:
    """Per flow, the source address of its first packet sent from its lower port (the server's), or None."""
    src_addr, src_port = data.packet_meta["src_addr"], data.packet_meta["src_port"]
    lower = np.minimum(pool.src_port, pool.dst_port)
    out: list = []
    for i, rows in enumerate(pool.index):
        rows = rows[rows >= 0]
        sent = rows[np.asarray(src_port[rows]) == lower[i]]
        out.append(bytes(src_addr[sent[0]]) if sent.size else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--oof", type=Path, required=True, help="flow_cv.py's out-of-fold probabilities")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probes", default="gbt,ngram,bias,context,names")
    ap.add_argument("--gbt-settings", action="append", type=json.loads, default=[],
                    help="HistGradientBoostingClassifier settings (JSON) to try; GBT_SETTINGS without it")  # fmt: skip
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()

    data = load_dataset(args.data)
    flows = flow_set(data)
    flows = flows.select(np.argsort(flows.flow))  # flow_cv.py's order
    pool = flows.select(np.isin(flows.split, [SPLIT_CODES["train"], SPLIT_CODES["val"]]))
    fold = file_folds(pool, args.folds, args.seed)
    num_classes = data.num_classes
    y = pool.label.astype(np.int64)

    def oof(name: str) -> np.ndarray:
        saved = np.load(args.oof / f"{_file_name(name)}.npz")
        if not (np.array_equal(saved["flow"], pool.flow) and np.array_equal(saved["fold"], fold)):
            raise SystemExit(f"{args.oof}: {name}'s out-of-fold probabilities are of other flows or folds")
        return saved["probs"]

    gbt, forest = oof(GBT8), oof(FOREST)
    heads = first_rows(data, pool, 1)[:, 0, :24]
    port = np.zeros_like(gbt)
    for f in range(args.folds):
        port[fold == f] = port_table_probs(data, np.unique(pool.capture_file[fold != f]), heads[fold == f],
                                           num_classes, *SHIPPED_TABLE)  # fmt: skip
    shipped_scores, grid = fusion_scores(pool, fold, gbt, forest, port, num_classes)
    shipped_nested, shipped_best, at = nested(shipped_scores)
    w, beta = grid[at]
    shipped = beta * port + (1 - beta) * ((1 - w) * gbt + w * forest)
    out: dict = json.loads(args.json.read_text()) if args.json.exists() else {}  # other probes' figures stay
    out |= {"data": str(args.data), "flows": len(pool), "folds": args.folds,
            "score": "mean over folds of (packet macro-F1 + flow macro-F1) / 2",
            "shipped": {"gbt_alone": float(np.mean(fold_scores(pool, fold, gbt, num_classes))),
                        "nested": shipped_nested, "all_folds": shipped_best, "w": float(w), "beta": float(beta)}}  # fmt: skip
    print(f"shipped fusion: nested {shipped_nested:.4f} (all folds {shipped_best:.4f}, w {w}, beta {beta})")
    probes = args.probes.split(",")
    rows = first_rows(data, pool, 8) if {"gbt", "ngram", "names"} & set(probes) else None

    if "gbt" in probes:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits

        x = feature_matrix("first+flow8", rows, pool.feats)
        out["gbt"] = []
        for settings in args.gbt_settings or GBT_SETTINGS:
            started = time.perf_counter()

            def fit(xf, yf, wf, settings=settings):
                with threadpool_limits(2):
                    return HistGradientBoostingClassifier(random_state=0, **settings).fit(xf, yf, sample_weight=wf)

            probs = out_of_fold(fit, x, y, fold, num_classes)
            scores, grid = fusion_scores(pool, fold, probs, forest, port, num_classes)
            score_nested, best, at = nested(scores)
            r = {"settings": settings, "gbt_alone": float(np.mean(fold_scores(pool, fold, probs, num_classes))),
                 "nested": score_nested, "all_folds": best, "w": float(grid[at][0]), "beta": float(grid[at][1]),
                 "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
            out["gbt"].append(r)
            print(f"GBT {settings}: alone {r['gbt_alone']:.4f}, in the fusion nested {score_nested:.4f} "
                  f"(all folds {best:.4f})", flush=True)  # fmt: skip

    if "ngram" in probes:
        from sklearn.linear_model import SGDClassifier

        x = hashed_ngrams(rows)

        def fit_linear(xf, yf, wf):
            model = SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=30, tol=None, random_state=0)
            return model.fit(xf, yf, sample_weight=wf)

        probs = out_of_fold(fit_linear, x, y, fold, num_classes)
        scores = np.array([fold_scores(pool, fold, (1 - g) * shipped + g * probs, num_classes) for g in WEIGHT_GRID])
        score_nested, best, at = nested(scores)
        out["ngram"] = {"bits": NGRAM_BITS, "n": NGRAM_N, "packets": NGRAM_PACKETS,
                        "alone": float(scores[-1].mean()), "nested": score_nested, "all_folds": best,
                        "g": float(WEIGHT_GRID[at])}  # fmt: skip
        print(f"n-gram linear: alone {scores[-1].mean():.4f}, joined to the fusion nested {score_nested:.4f} "
              f"(all folds {best:.4f}, g {WEIGHT_GRID[at]})", flush=True)  # fmt: skip

    if "bias" in probes:
        log_probs = np.log(shipped + 1e-6)
        per_fold = []
        for f in range(args.folds):
            bias = fit_bias(pool, log_probs, fold != f, num_classes)
            per_fold.append(quick_scores(pool, (log_probs + bias).argmax(1), num_classes, fold == f))
        out["bias"] = {"nested": float(np.mean(per_fold)), "folds": per_fold}
        print(f"class bias: nested {np.mean(per_fold):.4f}", flush=True)

    if "context" in probes:
        starts = np.asarray(data.packet_meta["ts_ns"])[pool.index[:, 0]]
        order = np.lexsort((starts, pool.capture_file))
        lower = np.minimum(pool.src_port, pool.dst_port)
        servers = server_addresses(data, pool)
        keyings = {
            "file + lower port": [(int(pool.capture_file[i]), int(lower[i])) for i in range(len(pool))],
            "file + server address": [None if a is None else (int(pool.capture_file[i]), a)
                                      for i, a in enumerate(servers)],
        }  # fmt: skip
        out["context"] = {}
        for name, keys in keyings.items():
            context, has = earlier_context(shipped, keys, order)
            scores = np.array([fold_scores(pool, fold, np.where(has[:, None], (1 - c) * shipped + c * context, shipped),
                                           num_classes) for c in WEIGHT_GRID])  # fmt: skip
            score_nested, best, at = nested(scores)
            out["context"][name] = {"with_context": float(has.mean()), "nested": score_nested, "all_folds": best,
                                    "c": float(WEIGHT_GRID[at])}  # fmt: skip
            print(f"server context ({name}; {has.mean():.1%} of flows have one): nested {score_nested:.4f} "
                  f"(all folds {best:.4f}, c {WEIGHT_GRID[at]})", flush=True)  # fmt: skip

    if "names" in probes:
        keys = flow_name_keys(rows)
        tables = {}  # (smoothing, weighting) -> out-of-fold (table probabilities, name known)
        for smoothing, weighting in itertools.product(NAME_SMOOTHINGS, NAME_WEIGHTINGS):
            probs, known = np.zeros_like(shipped), np.zeros(len(pool), bool)
            for f in range(args.folds):
                fit = fold != f
                table = NameTable.fit([k for k, m in zip(keys, fit) if m], y[fit], pool.packets[fit], num_classes,
                                      smoothing, weighting)  # fmt: skip
                probs[fold == f], known[fold == f] = table.predict([k for k, m in zip(keys, fold == f) if m])
            tables[smoothing, weighting] = probs, known
        options = [(t, g) for t in tables for g in WEIGHT_GRID]
        scores = np.array(
            [fold_scores(pool, fold, fuse_names(shipped, *tables[t], g), num_classes) for t, g in options]
        )
        score_nested, best, at = nested(scores)
        named = np.array([k is not None for k in keys])
        out["names"] = {"with_name": float(named.mean()), "with_known_name": float(tables[options[at][0]][1].mean()),
                        "nested": score_nested, "all_folds": best, "smoothing": options[at][0][0],
                        "weighting": options[at][0][1], "g": float(options[at][1]),
                        "fold_choices": [options[int(np.argmax(np.delete(scores, f, axis=1).mean(axis=1)))]
                                         for f in range(args.folds)]}  # fmt: skip
        print(f"name table ({named.mean():.1%} of flows have a name): on the shipped fusion nested {score_nested:.4f} "
              f"(all folds {best:.4f}, {options[at]})", flush=True)  # fmt: skip
        joint, started = [], time.perf_counter()  # w and beta chosen again with the table's options
        for w, beta in itertools.product(COARSE_GRID, COARSE_GRID):
            base = beta * port + (1 - beta) * ((1 - w) * gbt + w * forest)
            joint += [((float(w), float(beta), *t, float(g)), fold_scores(pool, fold, fuse_names(base, *tables[t], g),
                                                                          num_classes))
                      for t in tables for g in COARSE_GRID]  # fmt: skip
        score_nested, best, at = nested(np.array([s for _, s in joint]))
        out["names"]["joint"] = {"nested": score_nested, "all_folds": best, "w_beta_smoothing_weighting_g": joint[at][0],
                                 "against": shipped_nested, "seconds": round(time.perf_counter() - started)}  # fmt: skip
        print(f"name table with w and beta chosen again: nested {score_nested:.4f} (all folds {best:.4f}, "
              f"{joint[at][0]}; the shipped fusion's nested {shipped_nested:.4f})", flush=True)  # fmt: skip

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
