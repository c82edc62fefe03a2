"""Training throughput on this CPU: rows/s of the training step, fed by the trainer's own input pipeline
(pktnin.trainer.data.make_tf_dataset streaming uint8 rows from the memory-mapped dataset), per network and
numeric precision, and what one epoch over the training split would take at that rate.

Networks: `nin1` (header, the paper's), `nin2` (body, the paper's), `nin_small_body` (the NIN_small layers on the
1460 body bytes, a compact body branch beyond the paper). Precisions: `float32`, `mixed_bfloat16` (Keras mixed
precision: bfloat16 compute, float32 weights; the CPU has AVX-512 BF16). Each configuration trains `--steps`
batches once to warm up, then `--repeats` times; the median rate is reported (other work on the machine moves it:
compare configurations measured in the same run).

    python bench/train_throughput.py DATASET [--nets nin1,nin_small_body] [--precisions float32,mixed_bfloat16]
        [--batch 128] [--steps 40] [--repeats 3] [--json OUT]
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

from pktnin.dataset.format import load_dataset  # noqa: E402
from pktnin.layout import HEADER_LEN, ROW_LEN  # noqa: E402

# name -> (preset whose layers it uses, first byte, one past the last byte)
NETS = {"nin1": ("nin1", 0, HEADER_LEN), "nin2": ("nin2", HEADER_LEN, ROW_LEN),
        "nin_small_body": ("nin_small", HEADER_LEN, ROW_LEN)}  # fmt: skip


def measure(data, net: str, precision: str, batch: int, steps: int, repeats: int) -> dict:
    import keras

    from pktnin.trainer.data import make_tf_dataset
    from pktnin.trainer.models import build_model_on_bytes

    keras.mixed_precision.set_global_policy(precision)
    try:
        preset, start, stop = NETS[net]
        model = build_model_on_bytes(preset, start, stop, data.num_classes)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
        train = data.indices("train")
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(train, min(train.size, batch * steps), replace=False))
        ds = make_tf_dataset(data.rows, data.labels, idx, data.num_classes, batch, shuffle_seed=0)
        model.fit(ds, epochs=1, verbose=0)  # warm-up: graph tracing, first reads
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.fit(ds, epochs=1, verbose=0)
            rates.append(idx.size / (time.perf_counter() - started))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rate = statistics.median(rates)
    return {"net": net, "precision": precision, "batch": batch, "rows_per_s": rate, "runs": rates,
            "epoch_minutes": train.size / rate / 60, "train_rows": int(train.size),
            "parameters": int(model.count_params())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--nets", default="nin1,nin_small_body")
    ap.add_argument("--precisions", default="float32,mixed_bfloat16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = load_dataset(args.data)
    unknown = set(args.nets.split(",")) - set(NETS)
    if unknown:
        ap.error(f"unknown nets {sorted(unknown)}; choose from {sorted(NETS)}")
    results = []
    for net in args.nets.split(","):
        for precision in args.precisions.split(","):
            r = measure(data, net, precision, args.batch, args.steps, args.repeats)
            r["load_average"] = os.getloadavg()[0]
            results.append(r)
            print(f"{net:15s} {precision:15s} batch {args.batch}: {r['rows_per_s']:8.0f} rows/s (runs "
                  f"{', '.join(f'{x:.0f}' for x in r['runs'])}), an epoch of {r['train_rows']:,} rows "
                  f"{r['epoch_minutes']:.0f} min, load average {r['load_average']:.1f}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "cpus": os.cpu_count(), "results": results},
                                        indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
