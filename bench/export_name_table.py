"""Join a server-name table to a flow model: fit the table on a dataset's flows, fuse it into the model's graph,
check the result and score it.

The table (pktnin.engine.name_table) is fit on the flows of `--fit` splits (train,val for the shipped model, as
its members were refit), keyed by the registered domain of the TLS server_name or HTTP Host in each flow's first K
rows (K: the model's), with the smoothing, weighting and weight g that bench/flow_probes.py's name probe chose
(`--probe-figures`, its all-fold choice) unless given. The check: on the val and test flows, the fused graph
through the scorer's runner equals the numpy fusion of the model's own probabilities and the table (largest
difference, argmax agreement); then packet and flow macro-F1 of both, as flow_baselines.py computes them.
`--save-predictions DIR` writes the test flows' probabilities (flow, probs) for bench/file_bootstrap.py.

    python bench/export_name_table.py DATASET_DIR --model TREES_FIRST_FLOW8_RF_PORT.onnx \
        --probe-figures bench/results/flow-probes.json --out pktnin/models/trees_first_flow8_rf_port_names.onnx \
        --json bench/results/trees-first-flow8-rf-port-names.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flow_baselines import FlowOnnx, flow_scores  # noqa: E402

from pktnin.checkpoint import git_commit  # noqa: E402
from pktnin.dataset.flows import first_rows, flow_set  # noqa: E402
from pktnin.dataset.format import SPLIT_CODES, load_dataset  # noqa: E402
from pktnin.engine.name_table import NameTable, fuse_names, fuse_names_onnx  # noqa: E402
from pktnin.server_names import flow_name_keys  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", type=Path, required=True, help="the flow model to join the table to")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fit", default="train,val")
    ap.add_argument("--probe-figures", type=Path, help="flow_probes.py's JSON: the name probe's choice")
    ap.add_argument("--smoothing", type=float)
    ap.add_argument("--weighting", choices=["packets", "flows"])
    ap.add_argument("--weight", type=float, help="g, the table's weight where a flow's name is known")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--save-predictions", type=Path, help="folder for the test flows' probabilities (.npz)")
    args = ap.parse_args()

    choice = json.loads(args.probe_figures.read_text())["names"] if args.probe_figures else {}
    smoothing = args.smoothing if args.smoothing is not None else choice.get("smoothing")
    weighting = args.weighting or choice.get("weighting")
    weight = args.weight if args.weight is not None else choice.get("g")
    if None in (smoothing, weighting, weight):
        ap.error("give --probe-figures or all of --smoothing, --weighting and --weight")

    data = load_dataset(args.data)
    flows = flow_set(data)
    flows = flows.select(np.argsort(flows.flow))
    base = FlowOnnx(args.model)
    k = base.k

    def split_flows(splits: str):
        return flows.select(np.isin(flows.split, [SPLIT_CODES[s] for s in splits.split(",")]))

    fit = split_flows(args.fit)
    keys = flow_name_keys(first_rows(data, fit, k))
    table = NameTable.fit(keys, fit.label, fit.packets, data.num_classes, smoothing, weighting)
    provenance = {
        "git_commit": git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": str(args.data.resolve()),
        "fit": args.fit.replace(",", "+"),
        "flows_fit": len(fit),
        "flows_named": int(sum(key is not None for key in keys)),
        "choice": {key: choice[key] for key in ("nested", "all_folds") if key in choice},
    }
    fuse_names_onnx(args.model, table, weight, args.out, provenance)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {len(table.names)} names from "
          f"{provenance['flows_named']} of {len(fit)} flows, smoothing {smoothing}, {weighting}, g {weight}")  # fmt: skip

    fused = FlowOnnx(args.out)
    sources = [part["name"] for part in data.meta.get("inputs", [{"name": "all"}])]
    report: dict = {"onnx": str(args.out), "bytes": args.out.stat().st_size, "names": len(table.names),
                    "smoothing": smoothing, "weighting": weighting, "g": weight, "provenance": provenance}  # fmt: skip
    for split in ("val", "test"):
        ev = split_flows(split)
        rows = first_rows(data, ev, k)
        plain = base.predict(rows, ev.feats)
        table_probs, known = table.predict(flow_name_keys(rows))
        expected = fuse_names(plain, table_probs, known, weight)
        got = fused.predict(rows, ev.feats)
        agree = float((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
        report[split] = {"flows": len(ev), "known_name": float(known.mean()),
                         "max_abs_diff": float(np.abs(got - expected).max()), "argmax_agreement": agree,
                         "onnx": flow_scores(ev, got, data.num_classes, sources),
                         "without_names": flow_scores(ev, plain, data.num_classes, sources)}  # fmt: skip
        r = report[split]
        print(f"[{split}] {len(ev)} flows, {known.mean():.1%} with a known name: max |onnx - numpy| "
              f"{r['max_abs_diff']:.2e}, argmax agreement {agree:.4%}; packet / flow macro-F1 "
              f"{r['onnx']['packet_macro_f1']:.4f} / {r['onnx']['flow_macro_f1']:.4f} (without the names "
              f"{r['without_names']['packet_macro_f1']:.4f} / {r['without_names']['flow_macro_f1']:.4f})")  # fmt: skip
        for name, scores in r["onnx"]["by_source"].items():
            print(f"    {name}: {scores['packet_macro_f1']:.4f} / {scores['flow_macro_f1']:.4f}")
        if split == "test" and args.save_predictions:
            args.save_predictions.mkdir(parents=True, exist_ok=True)
            np.savez(args.save_predictions / f"{args.out.stem}.npz", flow=ev.flow, probs=got)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
