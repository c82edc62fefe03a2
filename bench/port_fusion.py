"""The port cue fused with a network (pktnin.engine.port_table): y = beta * y_port + (1 - beta) * y_net.

The port table is fit on `--fit` splits; its smoothing, its class weighting (classes equal, or as common as in
training) and beta are chosen by validation macro-F1 (the rows of
`--tune-sources`, default every source: name only sources whose validation files the network never trained on),
then the table is fit again on `--refit` splits (train,val by default) with the same smoothing and beta for the
test figures and the fused ONNX graph (`--out-dir`, one per model). A network refit on train+val takes the table and
beta its train-only run chose (`--given M,WEIGHTING,BETA`); its validation figures then measure nothing. Reports packet and flow macro-F1 per split and per
source for the network, the port table and the fused model, and saves their probabilities (`--save-predictions`)
for bench/file_bootstrap.py.

    python bench/port_fusion.py DATASET --model nin_parallel=pktnin/models/nin_parallel.onnx \
        --tune-sources corpus-ext --out-dir RUNS/fused --save-predictions RUNS/pred-fused --json OUT.json
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

from baselines import fit_rows, scores  # noqa: E402

from pktnin.dataset.format import load_dataset  # noqa: E402
from pktnin.engine.port_table import PortTable, fuse_port_onnx, predict_rows_in_chunks  # noqa: E402
from pktnin.trainer.evaluate import Predictor  # noqa: E402
from pktnin.trainer.fusion import DEFAULT_GRID, fuse, search_alpha  # noqa: E402
from pktnin.trainer.metrics import macro_f1  # noqa: E402

SMOOTHING_GRID = (1.0, 10.0, 100.0, 1000.0)
WEIGHTINGS = (True, False)  # the table's classes weighted equally, or as common as in training


def network_probs(path: str, data, idx: np.ndarray, cache: Path | None) -> np.ndarray:
    """The network's probabilities on rows idx, kept in `cache` (keyed by model file and rows) when given."""
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        key = cache / f"{Path(path).stem}-{idx.size}-{int(idx[:1000].sum())}.npy"
        if key.is_file():
            return np.load(key)
    predictor = Predictor(path, batch=512)
    if predictor.classes != data.classes:
        raise SystemExit(f"{path} was trained for classes {predictor.classes}, the dataset has {data.classes}")
    start = time.perf_counter()
    probs = predictor.predict(data.rows, idx)
    print(f"  {Path(path).name}: {idx.size} rows in {time.perf_counter() - start:.0f} s", flush=True)
    if cache is not None:
        np.save(key, probs)
    return probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=ONNX", help="a uint8-input ONNX model")
    ap.add_argument("--fit", default="train", help="splits the table is fit on for tuning")
    ap.add_argument("--refit", default="train,val", help="splits the table is fit on for test and export")
    ap.add_argument("--tune-sources", help="comma-separated sources whose validation rows tune (default: all)")
    ap.add_argument("--given", metavar="M,WEIGHTING,BETA",
                    help="use this table and beta (WEIGHTING balanced or frequencies) instead of tuning: for a network "
                         "refit on train+val, with the values its train-only run chose")  # fmt: skip
    ap.add_argument("--out-dir", type=Path, help="write NAME_port.onnx here (table fit on --refit splits)")
    ap.add_argument("--cache", type=Path, help="folder keeping the networks' probabilities between runs")
    ap.add_argument("--save-predictions", type=Path, help="folder for NAME.npz test probabilities")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    data = load_dataset(args.data)
    y = data.labels.astype(np.int64)
    val, test = data.indices("val"), data.indices("test")
    tune = val
    if args.tune_sources:
        names = [part["name"] for part in data.meta.get("inputs", [])]
        wanted = args.tune_sources.split(",")
        if not set(wanted) <= set(names):
            raise SystemExit(f"--tune-sources {wanted}: the dataset's sources are {names}")
        tune = val[np.isin(np.asarray(data.source)[val], [names.index(n) for n in wanted])]
    tune_pos = np.searchsorted(val, tune)  # positions of the tuning rows among the validation rows
    fit_idx, refit_idx = fit_rows(data, args.fit, None), fit_rows(data, args.refit, None)
    fit_head = data.rows[fit_idx, :24]
    grid, beta_grid = [(m, b) for m in SMOOTHING_GRID for b in WEIGHTINGS], DEFAULT_GRID
    if args.given:
        m, weighting, beta = args.given.split(",")
        grid, beta_grid = [(float(m), weighting == "balanced")], np.array([float(beta)])
    tables = {(m, b): PortTable.fit(fit_head, y[fit_idx], data.num_classes, m, b) for m, b in grid}
    port_val = {m: predict_rows_in_chunks(t, data.rows, val) for m, t in tables.items()}
    results: dict = {"data": str(args.data), "fit": args.fit, "refit": args.refit,
                     "tune_sources": args.tune_sources, "tune_rows": int(tune.size), "models": {}}  # fmt: skip

    for spec in args.model:
        name, _, path = spec.partition("=")
        print(f"{name}: network probabilities", flush=True)
        net_val = network_probs(path, data, val, args.cache)
        net_test = network_probs(path, data, test, args.cache)
        # smoothing and beta: the pair with the best tuning macro-F1
        best = None
        curves = {}
        for m, p_port in port_val.items():
            beta, curve = search_alpha(p_port[tune_pos], net_val[tune_pos], y[tune], beta_grid)
            curves[f"smoothing {m[0]:g}, {'balanced' if m[1] else 'training frequencies'}"] = float(curve.max())
            if best is None or curve.max() > best[2] + 1e-12:
                best = (m, beta, float(curve.max()))
        (smoothing, balanced), beta, tuned_f1 = best
        print(f"  smoothing {smoothing:g}, balanced {balanced}, beta {beta:.2f}: tuning macro-F1 {tuned_f1:.4f}",
              flush=True)  # fmt: skip
        fused_val = fuse(port_val[smoothing, balanced], net_val, beta)
        refit_table = PortTable.fit(data.rows[refit_idx, :24], y[refit_idx], data.num_classes, smoothing, balanced)
        port_test = predict_rows_in_chunks(refit_table, data.rows, test)
        fused_test = fuse(port_test, net_test, beta)
        model = {
            "onnx": path, "smoothing": smoothing, "balanced": balanced, "beta": beta, "given": bool(args.given),
            "tuning_macro_f1": tuned_f1,
            "tuning_macro_f1_by_table": curves,
            "tuning_network_macro_f1": macro_f1(y[tune], net_val[tune_pos].argmax(axis=1), data.num_classes),
            "val": {"network": scores(data, val, net_val),
                    "port table": scores(data, val, port_val[smoothing, balanced]),
                    "fused": scores(data, val, fused_val)},
            "test": {"network": scores(data, test, net_test), "port table": scores(data, test, port_test),
                     "fused": scores(data, test, fused_test)},
        }  # fmt: skip
        for split in ("val", "test"):
            for what, r in model[split].items():
                per_source = "".join(f"  {n} {v['macro_f1']:.4f}/{v['flow_macro_f1']:.4f}"
                                     for n, v in r.get("by_source", {}).items())  # fmt: skip
                print(f"  {split:4s} {what:10s} F1 {r['report']['macro_f1']:.4f}  flow F1 {r['flow']['macro_f1']:.4f}"
                      f"{per_source}")  # fmt: skip
        if args.save_predictions:
            args.save_predictions.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.save_predictions / f"{name}.npz", test_idx=test, test_probs=net_test)
            np.savez_compressed(args.save_predictions / f"{name}_port.npz", test_idx=test, test_probs=fused_test)
        if args.out_dir:
            # A given table and beta were chosen by the network's train-only run; its validation score here would
            # be measured on rows this network trained on, so none is claimed.
            tuned = (
                {"given": args.given}
                if args.given
                else {"tuned_on": f"val rows of {args.tune_sources or 'all'}", "tuning_macro_f1": tuned_f1}
            )
            out = fuse_port_onnx(path, refit_table, beta, args.out_dir / f"{name}_port.onnx",
                                 {"data": str(args.data), "fit": args.refit, **tuned})  # fmt: skip
            check = test[:512]
            got = Predictor(out).predict(data.rows, check)
            if not np.allclose(got, fused_test[:512], atol=1e-5):
                raise SystemExit(f"{out}: its output differs from beta * y_port + (1 - beta) * y_net")
            model["fused_onnx"] = str(out)
            print(f"  wrote {out} (checked against the fused probabilities)", flush=True)
        results["models"][name] = model
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
