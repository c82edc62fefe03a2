"""End-to-end packets/s of whole scoring set-ups (a model, its engine, a decision mode) against a baseline set-up,
interleaved in one run (run k of every set-up before run k+1 of any; medians of --runs, after one untimed warm-up
run of each), on the same captures. The default compares the shipped default (trees_first_flow8_rf_port_names: one decision per flow
from its first 8 packets) with the per-packet model it replaced, every packet through the network in float32:

    python bench/bench_default.py --split corpus=../shared/corpus/file_splits.csv:../shared/corpus/pcaps \\
        --split corpus-ext=../shared/corpus-ext/file_splits.csv:PCAPS --heavy HEAVY.pcap --runs 3 \\
        --json bench/results/default-speed.json

A set-up is NAME=MODEL:DECIDE[:PRECISION] (--setup, repeatable; the first is the baseline). Each is timed as
`pktnin score` runs (pktnin.measure.pipeline_throughput: Parquet output, read to last write; the model is opened
once per set-up, outside the timing). The JSON records the machine and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decide import machine, split_files  # noqa: E402

from pktnin.api import flow_options, open_model  # noqa: E402
from pktnin.measure import median_run, pipeline_throughput  # noqa: E402
from pktnin.rowfile import PrepOptions  # noqa: E402

DEFAULT_SETUPS = ["per-packet fp32=nin_parallel_small_port:packet:fp32", "default=trees_first_flow8_rf_port_names:flow"]


def parse_setup(text: str) -> tuple[str, str, str, str]:
    name, _, spec = text.partition("=")
    parts = spec.split(":")
    if not name or len(parts) not in (2, 3) or parts[1] not in ("packet", "flow"):
        raise SystemExit(f"--setup {text!r}: expected NAME=MODEL:packet|flow[:PRECISION]")
    return name, parts[0], parts[1], parts[2] if len(parts) == 3 else "auto"


def measure(files: list[Path], setups: list[tuple], runs: int, batch: int, workdir: Path) -> dict:
    opened = []
    for name, model, decide, precision in setups:
        runner, path, choice = open_model(model, precision=precision, batch=batch)
        decide, flow = flow_options(runner, decide, None)
        opened.append((name, runner, decide, flow, choice.label))
    prep = PrepOptions()
    try:
        for _, runner, decide, flow, _ in opened:  # warm-up: kernels compiled, caches filled
            pipeline_throughput(files[:1], runner, batch, workdir, prep, decide, flow)
        measured: list[list[dict]] = [[] for _ in opened]
        for _ in range(runs):
            for k, (_, runner, decide, flow, _) in enumerate(opened):
                measured[k].append(pipeline_throughput(files, runner, batch, workdir, prep, decide, flow))
    finally:
        for _, runner, *_ in opened:
            close = getattr(runner, "close", None)
            if close is not None:
                close()
    out = {}
    for k, (name, _, decide, flow, label) in enumerate(opened):
        entry = {"decide": decide, "flow_packets": flow.packets if decide == "flow" else None, "engine": label,
                 "end_to_end": median_run(measured[k])}  # fmt: skip
        if k:
            entry["vs_baseline"] = statistics.median(
                a["packets_per_s"] / b["packets_per_s"] for a, b in zip(measured[k], measured[0])
            )
        out[name] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", action="append", default=[], metavar="NAME=SPLITS_CSV:PCAPS")
    ap.add_argument("--heavy", type=Path, help="heavy-tailed capture (bench/make_heavy_tailed_capture.py writes one)")
    ap.add_argument("--setup", action="append", default=[], metavar="NAME=MODEL:DECIDE[:PRECISION]")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    setups = [parse_setup(s) for s in (args.setup or DEFAULT_SETUPS)]
    sets: dict[str, list[Path]] = {}
    for spec in args.split:
        name, _, rest = spec.partition("=")
        splits_csv, _, pcaps = rest.partition(":")
        sets[f"{name} test"] = split_files(Path(splits_csv), Path(pcaps))
    if args.heavy is not None:
        if not args.heavy.is_file():
            raise SystemExit(f"{args.heavy}: not found; bench/make_heavy_tailed_capture.py writes one")
        sets["heavy-tailed"] = [args.heavy]
    if not sets:
        raise SystemExit("nothing to measure: give --split and/or --heavy")
    report = {"machine": machine(), "load_before": os.getloadavg(), "runs": args.runs, "batch": args.batch,
              "setups": [dict(zip(("name", "model", "decide", "precision"), s)) for s in setups], "sets": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pktnin-bench-default-") as tmp:
        for name, files in sets.items():
            result = measure(files, setups, args.runs, args.batch, Path(tmp))
            report["sets"][name] = {"files": len(files), **result}
            for setup, entry in result.items():
                ratio = f"  {entry['vs_baseline']:.1f}x the baseline" if "vs_baseline" in entry else "  (baseline)"
                print(f"{name:<18} {setup:<18} {entry['end_to_end']['packets_per_s']:>10,.0f} packets/s{ratio}"
                      f"  [{entry['engine']}]")  # fmt: skip
    report["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
