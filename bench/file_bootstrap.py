"""How far apart are two models on the test split, given how few capture files it holds?

Resamples the test split's capture files with replacement (pktnin.trainer.metrics.group_bootstrap_macro_f1) and
reports, for each model, its macro-F1 with a 95% interval and, against a reference model, the paired difference
with its interval and the share of resamples in which the model is ahead. A by-file test split with one or two
files for some classes moves macro-F1 a lot when different files are drawn; this says by how much.

Models are checkpoints or ONNX files (`--model NAME=PATH`, scored with pktnin.trainer.evaluate.Predictor),
random forests fit here exactly as bench/baselines.py fits them (`--forests`, on `--fit` splits), or probabilities
saved by bench/baselines.py / bench/port_fusion.py (`--predictions NAME=NPZ`). `--source NAME` keeps the test
files of one source of a dataset built from several. Flow decisions saved by bench/flow_baselines.py
(`--flow-predictions NAME=NPZ`: one decision per flow) give every row of a flow the flow's decision.
`--level flow` scores flows instead of packets (each flow once; a per-row model's flow decision is the mean of
its rows' probabilities), still resampling whole files.

    python bench/file_bootstrap.py DATASET_DIR --model nin_parallel=RUNS/by-file-nin_parallel-refit.keras \
        --forests --fit train,val [--reference "RF, 1500 bytes, balanced"] [--replicates 2000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import forest_probabilities  # noqa: E402

from pktnin.dataset.format import load_dataset  # noqa: E402
from pktnin.trainer.evaluate import Predictor  # noqa: E402
from pktnin.trainer.metrics import flow_probabilities, group_bootstrap_macro_f1, macro_f1  # noqa: E402

FORESTS = (("RF, 1500 bytes", "none"), ("RF, 1500 bytes, balanced", "balanced"))


def interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="a checkpoint or ONNX model")
    ap.add_argument("--predictions", action="append", default=[], metavar="NAME=NPZ",
                    help="test probabilities saved by bench/baselines.py or bench/port_fusion.py")  # fmt: skip
    ap.add_argument("--flow-predictions", action="append", default=[], metavar="NAME=NPZ",
                    help="per-flow test probabilities saved by bench/flow_baselines.py")  # fmt: skip
    ap.add_argument("--level", choices=("packet", "flow"), default="packet", help="score packets or flows")
    ap.add_argument("--source", help="only the test rows of this source (a dataset built from several)")
    ap.add_argument("--forests", action="store_true", help="also fit the 1500-byte forests (unweighted, balanced)")
    ap.add_argument("--fit", default="train", help="splits the forests fit on, comma-separated (train, val)")
    ap.add_argument("--reference", default="RF, 1500 bytes, balanced", help="the model the others are compared with")
    ap.add_argument("--replicates", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    data = load_dataset(args.data)
    if data.file is None:
        ap.error(f"{args.data} records no capture file per row (file.npy): the resamples draw whole files")
    rows = data.rows
    all_test = data.indices("test")
    te = all_test
    if args.source:
        names = [part["name"] for part in data.meta.get("inputs", [])]
        if args.source not in names:
            ap.error(f"--source {args.source!r}: the dataset's sources are {names}")
        te = te[np.asarray(data.source)[te] == names.index(args.source)]
    y_te = data.labels[te].astype(np.int64)
    files = np.asarray(data.file)[te]
    probs = {}  # per test row
    for spec in args.predictions:
        name, path = _name_path(ap, spec, "--predictions")
        saved = np.load(path)
        if not np.array_equal(saved["test_idx"], all_test):
            ap.error(f"{path}: its test rows are not this dataset's test split")
        probs[name] = saved["test_probs"][np.searchsorted(all_test, te)]
    for spec in args.flow_predictions:
        name, path = _name_path(ap, spec, "--flow-predictions")
        saved = np.load(path)
        order = np.argsort(saved["flow"])
        at = np.searchsorted(saved["flow"], data.flow[te], sorter=order)
        at = order[np.minimum(at, order.size - 1)]
        if not np.array_equal(saved["flow"][at], data.flow[te]):
            ap.error(f"{path}: it holds no decision for some flows of the test rows")
        probs[name] = saved["probs"][at]
    for spec in args.model:
        name, path = _name_path(ap, spec, "--model")
        predictor = Predictor(path)
        if predictor.classes != data.classes:
            ap.error(f"{path} was trained for classes {predictor.classes}, the dataset has {data.classes}")
        probs[name] = predictor.predict(rows, te)
    if args.forests:
        fit_idx = np.sort(np.concatenate([data.indices(part) for part in args.fit.split(",")]))
        for name, weighting in FORESTS:
            probs[name] = forest_probabilities(data, rows, fit_idx, te, slice(0, 1500), weighting)
    if args.reference not in probs:
        ap.error(f"reference {args.reference!r} is not among the models: {sorted(probs)}")
    if args.level == "flow":  # a flow's rows all share its label and file; its decision is its rows' mean
        flow_te = np.asarray(data.flow)[te]
        for name in probs:
            _, probs[name], y_flow, _ = flow_probabilities(probs[name], y_te, flow_te)
        _, first = np.unique(flow_te, return_index=True)  # sorted flow ids, as flow_probabilities returns them
        y_te, files = y_flow, files[first]
    predictions = {name: p.argmax(axis=1) for name, p in probs.items()}

    boot = group_bootstrap_macro_f1(y_te, predictions, files, data.num_classes, args.replicates, args.seed)
    ref = boot[args.reference]
    results = {}
    units = "flows" if args.level == "flow" else "packets"
    print(
        f"test split: {y_te.size} {units} in {np.unique(files).size} capture files; {args.replicates} resamples of files"
    )
    print(
        f"{'model':28s} {'macro-F1':>8s} {'95% interval':>15s}   {'- reference':>11s} {'95% interval':>15s} {'ahead':>6s}"
    )
    for name, values in boot.items():
        point = macro_f1(y_te, predictions[name], data.num_classes)
        diff = values - ref
        diff_point = point - macro_f1(y_te, predictions[args.reference], data.num_classes)
        results[name] = {
            "macro_f1": point, "interval": interval(values),
            "minus_reference": diff_point, "minus_reference_interval": interval(diff),
            "share_ahead": float(np.mean(diff > 0)),
        }  # fmt: skip
        low, high = results[name]["interval"]
        dlow, dhigh = results[name]["minus_reference_interval"]
        print(
            f"{name:28s} {point:8.3f} [{low:6.3f}, {high:6.3f}]   {diff_point:+11.3f} [{dlow:+6.3f}, {dhigh:+6.3f}]"
            f" {results[name]['share_ahead']:6.1%}"
        )
    if args.json:
        meta = {"data": str(args.data), "source": args.source, "fit": args.fit, "reference": args.reference,
                "replicates": args.replicates,
                "seed": args.seed, "level": args.level, "test_packets": int(te.size), "test_units": int(y_te.size),
                "test_files": int(np.unique(files).size)}  # fmt: skip
        args.json.write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")


def _name_path(ap, spec: str, option: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        ap.error(f"{option} wants NAME=PATH, got {spec!r}")
    return name, path


if __name__ == "__main__":
    main()
