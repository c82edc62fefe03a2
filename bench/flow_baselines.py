"""Flow decisions on a dataset's flows: baselines, the per-packet model in flow mode, and flow models, same rows.

Every labeled flow of the dataset (pktnin.dataset.flows; the dataset built with --packet-meta
ts_ns,src_addr,src_port,dst_port) is decided once; each of its payload packets gets that decision. Packet
macro-F1 counts every payload packet of the evaluated flows (each with its flow's label and decision), flow
macro-F1 every flow once (pktnin.trainer.metrics.macro_f1). Models:
- port lookup: the training packets' majority class per (TCP/UDP, lower port) (pktnin.engine.port_table), read
  from the flow's first row, so the same answer as every packet looked up alone;
- RF, first packet: a balanced random forest (bench/baselines.py's forest) on each flow's first payload packet:
  its first 64 payload bytes, TCP flags and window, payload length, both ports;
- GBT, flow features K=k: gradient-boosted trees (pktnin.trainer.flow_trees) on the first k packets'
  present/direction/length/log-iat (pktnin.flow_features), their TCP flags and first 16 payload bytes (at most 4
  packets), both ports; k chosen on validation (bench/export_flow_trees.py ships them as one ONNX graph);
- a per-packet ONNX model (`--packet-model NAME=ONNX`) in flow mode: the mean of its first k rows' probabilities,
  k = 1, 2, 4, 8, and in packet mode (every packet scored alone; flow = mean over all its packets);
- a flow ONNX model (`--flow-model NAME=ONNX`: inputs rows [B,K,1500] uint8 and pkt_feats [B,K,4]); with
  `NAME=TRAIN_ONNX:REFIT_ONNX` the model fit on train is scored on val, the one refit on train+val on test.
`--models-only` leaves out the port lookup, the forest and the trees (to add a model to an earlier run's figures).
Two stages: fit on train, report on val (the choices: k of the trees); refit on train+val with those choices,
report on test. Both sources together and each alone. `--save-predictions DIR` keeps each model's test
probabilities per flow (flow ids and probs, for --flow-predictions; packet-mode models per row, test_idx and
test_probs, for --predictions) for bench/file_bootstrap.py.

    python bench/flow_baselines.py DATASET_DIR --packet-model shipped=pktnin/models/nin_parallel_small_port.onnx \
        [--flow-model NAME=ONNX] --json bench/results/flow-baselines.json --save-predictions DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import forest_probabilities  # noqa: E402

from pktnin.dataset.flows import FlowSet, first_rows, flow_set  # noqa: E402
from pktnin.dataset.format import SPLIT_CODES, Dataset, load_dataset  # noqa: E402
from pktnin.engine.port_table import PortTable  # noqa: E402
from pktnin.trainer.flow_trees import first_packet_features, fit_gbt, flow_features, tree_probabilities  # noqa: E402
from pktnin.trainer.metrics import macro_f1  # noqa: E402
from pktnin.trainer.train import training_sample_weights  # noqa: E402

KS = (1, 2, 4, 8)


class FlowOnnx:
    """A flow model's ONNX graph through the scorer's runner (ONNX Runtime; a name table's input computed from the
    rows): probs [F, C] from rows [F, >=K, 1500] and pkt_feats."""

    def __init__(self, path: str | Path) -> None:
        from pktnin.engine.flow_runner import FlowModelRunner, is_flow_model

        if not is_flow_model(path):
            raise ValueError(f"{path}: not a flow model (metadata pktnin.decide is not 'flow')")
        self.runner = FlowModelRunner(path, max_batch=256)
        self.k = self.runner.flow_packets
        self.classes = self.runner.classes

    def predict(self, rows: np.ndarray, feats: np.ndarray) -> np.ndarray:
        return self.runner.infer_flows(rows[:, : self.k], feats[:, : self.k])


def flow_scores(flows: FlowSet, probs: np.ndarray, num_classes: int, source_names: list[str]) -> dict:
    """Packet (each payload packet with its flow's label and decision) and flow macro-F1, overall and per source."""

    def one(sel: np.ndarray) -> dict:
        y, pred, n = flows.label[sel].astype(np.int64), probs[sel].argmax(axis=1), flows.packets[sel]
        return {"packet_macro_f1": macro_f1(np.repeat(y, n), np.repeat(pred, n), num_classes),
                "flow_macro_f1": macro_f1(y, pred, num_classes), "flows": int(sel.sum()),
                "packets": int(n.sum())}  # fmt: skip

    out = one(np.ones(len(flows), bool))
    out["by_source"] = {
        name: one(flows.source == i) for i, name in enumerate(source_names) if (flows.source == i).any()
    }
    return out


def packet_mode_scores(data: Dataset, rows_idx: np.ndarray, probs: np.ndarray, flows: FlowSet, source_names) -> dict:
    """Every packet scored alone: packet macro-F1 over rows, flow macro-F1 of the mean per flow."""
    num_classes = probs.shape[1]
    y, pred = data.labels[rows_idx].astype(np.int64), probs.argmax(axis=1)
    at = np.searchsorted(flows.flow, data.flow[rows_idx])  # flows.flow sorted: see main
    mean = np.zeros((len(flows), num_classes))
    np.add.at(mean, at, probs)

    def one(sel_rows: np.ndarray, sel_flows: np.ndarray) -> dict:
        return {"packet_macro_f1": macro_f1(y[sel_rows], pred[sel_rows], num_classes),
                "flow_macro_f1": macro_f1(flows.label[sel_flows], mean[sel_flows].argmax(axis=1), num_classes),
                "flows": int(sel_flows.sum()), "packets": int(sel_rows.sum())}  # fmt: skip

    out = one(np.ones(len(y), bool), np.ones(len(flows), bool))
    src = flows.source[at]
    out["by_source"] = {name: one(src == i, flows.source == i) for i, name in enumerate(source_names)
                        if (flows.source == i).any()}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--packet-model", action="append", default=[], metavar="NAME=ONNX")
    ap.add_argument("--flow-model", action="append", default=[], metavar="NAME=ONNX")
    ap.add_argument("--models-only", action="store_true", help="only the --packet-model and --flow-model models")
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--save-predictions", type=Path, help="folder for NAME.npz: test probabilities")
    args = ap.parse_args()

    data = load_dataset(args.data)
    all_flows = flow_set(data)
    order = np.argsort(all_flows.flow)
    all_flows = all_flows.select(order)  # sorted by flow id, so rows find their flow with searchsorted
    names = [part["name"] for part in data.meta.get("inputs", [{"name": "all"}])]
    num_classes = data.num_classes
    stages = {"val": ("train", "val"), "test": ("train,val", "test")}
    results: dict[str, dict] = {"val": {}, "test": {}}
    chosen: dict[str, int] = {}
    seconds: dict[str, float] = {}
    saved: dict[str, dict[str, np.ndarray]] = {}

    def in_splits(splits: str) -> np.ndarray:
        return np.isin(all_flows.split, [SPLIT_CODES[s] for s in splits.split(",")])

    def record(stage: str, name: str, flows: FlowSet, probs: np.ndarray, started: float) -> None:
        seconds[name] = time.perf_counter() - started
        results[stage][name] = flow_scores(flows, probs, num_classes, names)
        r = results[stage][name]
        per_source = "".join(
            f"  {n} {v['packet_macro_f1']:.3f}/{v['flow_macro_f1']:.3f}" for n, v in r["by_source"].items()
        )
        print(f"[{stage}] {name:34s} packet {r['packet_macro_f1']:.3f}  flow {r['flow_macro_f1']:.3f}{per_source}"
              f"  ({seconds[name]:.0f} s)", flush=True)  # fmt: skip
        if stage == "test":
            saved[name] = {"flow": flows.flow, "probs": probs}

    for stage, (fit_splits, eval_split) in stages.items():
        fit, ev = all_flows.select(in_splits(fit_splits)), all_flows.select(in_splits(eval_split))
        fit_rows, ev_rows = first_rows(data, fit, 8), first_rows(data, ev, 8)
        y_fit = fit.label.astype(np.int64)
        weights = training_sample_weights(y_fit, np.arange(len(fit)), "balanced", num_classes)

        if not args.models_only:
            started = time.perf_counter()  # the table counts every training packet, as bench/baselines.py does
            fit_packet_rows = np.flatnonzero(np.isin(data.split, [SPLIT_CODES[s] for s in fit_splits.split(",")]))
            table = PortTable.fit(data.rows[fit_packet_rows, :24], data.labels[fit_packet_rows], num_classes)
            lookup = np.eye(num_classes, dtype=np.float32)[table.predict_majority(ev_rows[:, 0, :24])]
            record(stage, "port lookup", ev, lookup, started)

            started = time.perf_counter()
            x_fit, x_ev = first_packet_features(fit_rows[:, 0]), first_packet_features(ev_rows[:, 0])
            labels_only = SimpleNamespace(labels=y_fit, num_classes=num_classes, file=None)
            probs = _forest_on(labels_only, x_fit, x_ev, args.trees)
            record(stage, "RF, first packet, balanced", ev, probs, started)

            ks = KS if stage == "val" else (chosen["GBT"],)
            for k in ks:
                started = time.perf_counter()
                x_fit = flow_features(fit_rows, fit.feats, k)
                trees = fit_gbt(x_fit, y_fit, weights)
                probs = tree_probabilities(trees, flow_features(ev_rows, ev.feats, k), num_classes)
                record(stage, f"GBT, flow features, K={k}", ev, probs, started)
            if stage == "val":
                chosen["GBT"] = max(KS, key=lambda k: _mean_f1(results["val"][f"GBT, flow features, K={k}"]))

        for spec in args.packet_model:
            name, _, path = spec.partition("=")
            from pktnin.trainer.evaluate import Predictor

            started = time.perf_counter()
            predictor = Predictor(path)
            if predictor.classes != data.classes:
                ap.error(f"{path} was trained for classes {predictor.classes}, the dataset has {data.classes}")
            rows_idx = np.flatnonzero(data.split == SPLIT_CODES[eval_split])
            row_probs = predictor.predict(data.rows, rows_idx)
            predictor.close()
            seconds[f"{name}, packet mode"] = time.perf_counter() - started
            results[stage][f"{name}, packet mode"] = packet_mode_scores(data, rows_idx, row_probs, ev, names)
            r = results[stage][f"{name}, packet mode"]
            print(f"[{stage}] {name + ', packet mode':34s} packet {r['packet_macro_f1']:.3f}  "
                  f"flow {r['flow_macro_f1']:.3f}", flush=True)  # fmt: skip
            if stage == "test":
                saved[f"{name}, packet mode"] = {"test_idx": rows_idx, "test_probs": row_probs}
            pos = np.searchsorted(rows_idx, np.maximum(ev.index, 0))
            for k in KS:
                started = time.perf_counter()
                present = ev.index[:, :k] >= 0
                mean = (row_probs[pos[:, :k]] * present[..., None]).sum(axis=1) / present.sum(axis=1)[:, None]
                record(stage, f"{name}, flow mode K={k}", ev, mean, started)

        for spec in args.flow_model:
            name, _, paths = spec.partition("=")
            train_path, _, refit_path = paths.partition(":")
            path = refit_path if stage == "test" and refit_path else train_path
            started = time.perf_counter()
            model = FlowOnnx(path)
            record(stage, f"{name} (K={model.k})", ev, model.predict(ev_rows, ev.feats), started)

    if args.save_predictions:
        args.save_predictions.mkdir(parents=True, exist_ok=True)
        for name, arrays in saved.items():
            np.savez_compressed(args.save_predictions / f"{_file_name(name)}.npz", **arrays)
    if args.json:
        meta = {"data": str(args.data), "flows": len(all_flows), "k_max": all_flows.k_max, "trees": args.trees,
                "chosen_on_val": chosen, "seconds": seconds, "fit": {s: f for s, (f, _) in stages.items()}}  # fmt: skip
        args.json.write_text(json.dumps({**meta, "results": results["test"], "by_split": results}, indent=1) + "\n")


def _forest_on(labels_only, x_fit: np.ndarray, x_ev: np.ndarray, trees: int) -> np.ndarray:
    """bench/baselines.py's balanced forest fit on x_fit, probabilities for x_ev (one matrix holds both)."""
    both = np.concatenate([x_fit, x_ev])
    return forest_probabilities(labels_only, both, np.arange(len(x_fit)), np.arange(len(x_fit), len(both)),
                                slice(None), "balanced", trees)  # fmt: skip


def _mean_f1(r: dict) -> float:
    return (r["packet_macro_f1"] + r["flow_macro_f1"]) / 2


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-=" else "_" for c in name)


if __name__ == "__main__":
    main()
