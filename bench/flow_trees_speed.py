"""Speed of a flow model's ONNX graph (flows/s) against per-packet models (rows/s), ONNX Runtime on the CPU.

Inputs are a dataset's test flows: each flow's first K rows and pkt_feats for the flow model, the same flows' rows
one by one for the per-packet models. Every model runs batches of `--batch` on its own session (same session
options as the engine: errors-only logging, no spinning threads; the flow model through the scorer's runner, which
also reads the server names a name table needs); rounds are interleaved (flow model, then each
per-packet model, per round) and the median of `--rounds` rounds is printed, with the load average before and after.

    python bench/flow_trees_speed.py DATASET_DIR --flows FLOWS.npz --flow-model pktnin/models/trees_first_flow8_rf_port_names.onnx \
        --packet-model pktnin/models/nin_parallel_small_port.onnx --packet-model pktnin/models/...int8.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pktnin.dataset.flows import FlowSet, first_rows, flow_set  # noqa: E402
from pktnin.dataset.format import SPLIT_CODES, load_dataset  # noqa: E402
from pktnin.engine.flow_runner import FlowModelRunner  # noqa: E402


def session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def items_per_second(run, inputs: list[dict], items: int) -> float:
    started = time.perf_counter()
    for feed in inputs:
        run(None, feed)
    return items / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--flows", type=Path, help="the dataset's saved FlowSet (else computed from the dataset)")
    ap.add_argument("--flow-model", required=True)
    ap.add_argument("--packet-model", action="append", default=[])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=8, help="batches per model and round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    data = load_dataset(args.data)
    flows = FlowSet.load(args.flows) if args.flows else flow_set(data)
    test = flows.select(flows.split == SPLIT_CODES["test"])
    n = args.batch * args.batches
    if len(test) < n:
        ap.error(f"{len(test)} test flows, fewer than --batch x --batches = {n}")
    test = test.select(np.arange(n))
    flow_runner = FlowModelRunner(args.flow_model, max_batch=args.batch)  # a name table's ids are computed in it
    k = flow_runner.flow_packets
    rows = first_rows(data, test, k)
    feats = np.ascontiguousarray(test.feats[:, :k])
    flow_feeds = [
        {"rows": rows[s : s + args.batch], "feats": feats[s : s + args.batch]} for s in range(0, n, args.batch)
    ]
    packet_rows = np.ascontiguousarray(np.asarray(data.rows[np.sort(test.index[:, 0])]))  # one row per flow
    packet_feeds = [{"row": packet_rows[s : s + args.batch]} for s in range(0, n, args.batch)]
    runs = {f"{Path(args.flow_model).name} (flows/s)": (lambda _, feed: flow_runner.infer_flows(**feed), flow_feeds)}
    runs.update({f"{Path(p).name} (rows/s)": (session(p).run, packet_feeds) for p in args.packet_model})
    for run, feeds in runs.values():
        run(None, feeds[0])  # warm-up
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (run, feeds) in runs.items():
            rates[name].append(items_per_second(run, feeds, n))
    load_after = os.getloadavg()
    report = {
        "batch": args.batch,
        "items_per_round": n,
        "rounds": args.rounds,
        "load_before": load_before,
        "load_after": load_after,
        "median": {name: statistics.median(r) for name, r in rates.items()},
        "all": rates,
    }
    print(f"batch {args.batch}, {n} items per round, {args.rounds} interleaved rounds; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")  # fmt: skip
    for name, rate in report["median"].items():
        print(f"{name:50s} median {rate:10.0f}  (min {min(rates[name]):.0f}, max {max(rates[name]):.0f})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
