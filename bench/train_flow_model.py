"""Train the flow-context network (pktnin.trainer.flow_model) on a dataset's flows, by file, as the shipped models
were made: fit on the training files (balanced classes), K, epochs and the port branch's beta chosen on the
validation files, then refit on train+val with those choices, the port table fit again on train+val.

`sweep`: for each K, train `--epochs` epochs on train, scoring validation after each (packet and flow macro-F1,
bench/flow_baselines.py's flow_scores), the network alone and fused with the port table (beta on a grid);
writes OUT_DIR/sweep.json and the best train-only model per K (OUT_DIR/train-kK.keras).
`refit`: K and epochs from sweep.json (the best validation mean of packet and flow macro-F1, fused), refit on
train+val, export ONE ONNX graph with the port branch fused in (OUT_DIR/nin_flow_port_kK.onnx; the train-only
model too, OUT_DIR/nin_flow_port_kK.train.onnx, for validation figures), and check ONNX Runtime against Keras on
`--check` test flows.

    python bench/train_flow_model.py DATASET_DIR OUT_DIR sweep --ks 1,2,4,8 --epochs 10
    python bench/train_flow_model.py DATASET_DIR OUT_DIR refit
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

from flow_baselines import FlowOnnx, flow_scores  # noqa: E402

from pktnin.dataset.flows import FlowSet, first_rows, flow_set  # noqa: E402
from pktnin.dataset.format import SPLIT_CODES, load_dataset  # noqa: E402
from pktnin.engine.port_table import PortTable  # noqa: E402
from pktnin.trainer.fusion import fuse  # noqa: E402
from pktnin.trainer.train import seed_everything, training_sample_weights  # noqa: E402

BETAS = np.round(np.arange(0.0, 1.0001, 0.05), 2)


def mean_f1(r: dict) -> float:
    return (r["packet_macro_f1"] + r["flow_macro_f1"]) / 2


def port_table(data, splits: str) -> PortTable:
    """The port table on every packet of `splits` (as the shipped models' port branch is fit)."""
    idx = np.flatnonzero(np.isin(data.split, [SPLIT_CODES[s] for s in splits.split(",")]))
    return PortTable.fit(data.rows[idx, :24], data.labels[idx], data.num_classes)


def best_beta(net: np.ndarray, port: np.ndarray, flows: FlowSet, num_classes: int, names) -> tuple[float, dict]:
    """beta on BETAS with the best mean of packet and flow macro-F1 (ties: the smaller beta)."""
    scored = [(b, flow_scores(flows, fuse(port, net, b), num_classes, names)) for b in BETAS]
    return max(scored, key=lambda bs: (mean_f1(bs[1]), -bs[0]))


def train_epochs(data, fit: FlowSet, k: int, epochs: int, seed: int, on_epoch=None, batch: int = 128):
    """A fresh flow model trained `epochs` epochs on `fit`; on_epoch(epoch, model) after each."""
    import keras

    from pktnin.trainer.flow_model import FlowBatches, build_flow_model

    seed_everything(seed)
    model = build_flow_model(data.num_classes, k)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    y = fit.label.astype(np.int64)
    w = training_sample_weights(y, np.arange(len(y)), "balanced", data.num_classes).astype(np.float32)
    batches = FlowBatches(first_rows(data, fit, k), fit.feats[:, :k], y, w, batch=batch, shuffle=True, seed=seed)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
        if on_epoch is not None:
            on_epoch(epoch, model, time.perf_counter() - started)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("stage", choices=("sweep", "refit"))
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", type=int, default=500, help="test flows on which ONNX Runtime is compared to Keras")
    args = ap.parse_args()

    from pktnin.checkpoint import git_commit, save_checkpoint
    from pktnin.trainer.flow_model import export_flow_onnx, predict_flows

    data = load_dataset(args.data)
    flows = flow_set(data)
    names = [part["name"] for part in data.meta.get("inputs", [{"name": "all"}])]
    num_classes = data.num_classes
    split = {name: flows.select(flows.split == code) for name, code in SPLIT_CODES.items()}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sweep_path = args.out_dir / "sweep.json"

    if args.stage == "sweep":
        val = split["val"]
        val_rows = first_rows(data, val, max(int(k) for k in args.ks.split(",")))
        port_val = port_table(data, "train").predict_proba(val_rows[:, 0, :24])
        sweep = json.loads(sweep_path.read_text()) if sweep_path.exists() else {}
        for k in (int(k) for k in args.ks.split(",")):
            history: list[dict] = []
            best: dict = {}

            def on_epoch(epoch, model, seconds, k=k, history=history, best=best):
                net = predict_flows(model, val_rows, val.feats)
                alone = flow_scores(val, net, num_classes, names)
                beta, fused = best_beta(net, port_val, val, num_classes, names)
                history.append({"epoch": epoch, "seconds": seconds, "network": alone, "beta": beta, "fused": fused})
                print(f"K={k} epoch {epoch} ({seconds:.0f} s): network {alone['packet_macro_f1']:.3f}/"
                      f"{alone['flow_macro_f1']:.3f}, + port (beta {beta}) {fused['packet_macro_f1']:.3f}/"
                      f"{fused['flow_macro_f1']:.3f}", flush=True)  # fmt: skip
                if not best or mean_f1(fused) > mean_f1(best["fused"]):
                    best.update(history[-1])
                    meta = {"preset": "nin_flow", "classes": data.classes, "flow_packets": k, "fit": "train",
                            "epoch": epoch, "beta": beta, "data": str(args.data), "git_commit": git_commit()}  # fmt: skip
                    save_checkpoint(model, args.out_dir / f"train-k{k}.keras", meta)

            train_epochs(data, split["train"], k, args.epochs, args.seed, on_epoch)
            sweep[str(k)] = {"history": history, "best": best}
            sweep_path.write_text(json.dumps(sweep, indent=1) + "\n")
        return

    sweep = json.loads(sweep_path.read_text())
    k_best = max(sweep, key=lambda k: mean_f1(sweep[k]["best"]["fused"]))
    chosen = sweep[k_best]["best"]
    k, epochs, beta = int(k_best), int(chosen["epoch"]), float(chosen["beta"])
    print(f"chosen on validation: K={k}, {epochs} epochs, beta {beta}", flush=True)
    fit = flows.select(np.isin(flows.split, [SPLIT_CODES["train"], SPLIT_CODES["val"]]))
    model = train_epochs(data, fit, k, epochs, args.seed)
    provenance = {
        "data": str(args.data), "labels_csv": data.meta.get("labels_csv"), "split_mode": data.meta.get("split_mode"),
        "fit": "train+val", "flow_packets": k, "epochs": epochs, "port_beta": beta, "git_commit": git_commit(),
        "validation": {"k": k, "epoch": epochs, "fused": chosen["fused"], "network": chosen["network"]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    save_checkpoint(model, args.out_dir / f"refit-k{k}.keras", {"preset": "nin_flow", "classes": data.classes,
                                                                  "provenance": provenance})  # fmt: skip
    from pktnin.checkpoint import load_checkpoint
    from pktnin.engine.port_table import fuse_port_onnx

    train_model, _ = load_checkpoint(args.out_dir / f"train-k{k}.keras")
    for name, net_model, table_splits, fit_name in (
        (f"nin_flow_port_k{k}.onnx", model, "train,val", "train+val"),
        (f"nin_flow_port_k{k}.train.onnx", train_model, "train", "train"),
    ):
        plain = args.out_dir / name.replace("_port", "")
        export_flow_onnx(net_model, plain, data.classes, {**provenance, "fit": fit_name})
        fuse_port_onnx(plain, port_table(data, table_splits), beta, args.out_dir / name,
                       {"fit": fit_name, "data": str(args.data)})  # fmt: skip
    # ONNX Runtime against Keras (+ the same port fusion in numpy) on test flows
    test = split["test"].select(np.arange(min(args.check, len(split["test"]))))
    rows = first_rows(data, test, k)
    expect = fuse(
        port_table(data, "train,val").predict_proba(rows[:, 0, :24]), predict_flows(model, rows, test.feats), beta
    )
    got = FlowOnnx(args.out_dir / f"nin_flow_port_k{k}.onnx").predict(rows, test.feats)
    check = {"flows": len(test), "max_abs_diff": float(np.abs(got - expect).max()),
             "same_argmax": float(np.mean(got.argmax(1) == expect.argmax(1)))}  # fmt: skip
    print(f"ONNX Runtime vs Keras on {len(test)} test flows: {check}", flush=True)
    (args.out_dir / "refit.json").write_text(json.dumps({"chosen": provenance, "onnx_check": check}, indent=1) + "\n")


if __name__ == "__main__":
    main()
