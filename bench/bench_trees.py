"""`pktnin bench` (read+prep, engine alone, end to end) of two source trees on the same captures, interleaved,
and the CPU time of a whole `pktnin score` run of them.

Each round runs, once per tree, `pktnin bench run --json --runs 1` and `pktnin score` (Parquet out, one fp32
ONNX Runtime session) in child processes with PYTHONPATH set to that tree, alternating which tree goes first;
each figure is the median over the rounds. Wall-time rates move with the load of a shared machine; the CPU
seconds of the score run (user + system of the child, startup included) move less. Use it to check that a
change to the scoring path keeps its speed: the baseline is measured in the same run, on the same load.

    python bench/bench_trees.py --baseline-tree ../main CAPTURE... --rounds 5 --save bench/results/trees.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = (
    ("read+prep", ("read_prep",)),
    ("engine", ("engines", 0, "engine")),
    ("end to end", ("engines", 0, "end_to_end")),
)


def run_bench(tree: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "pktnin.cli", "bench", "run", *map(str, args.paths), "--json", "--runs", "1",
           "--precision", args.precision, "--backend", "onnxruntime", "--no-record", "--quiet"]  # fmt: skip
    if args.model:
        cmd += ["--model", str(args.model)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def score_cpu(tree: Path, args: argparse.Namespace, out: Path) -> dict:
    """CPU seconds (user + system) and wall seconds of one `pktnin score` child process."""
    cmd = [sys.executable, "-m", "pktnin.cli", "score", *map(str, args.paths), "--out", str(out), "--force",
           "--backend", "onnxruntime", "--precision", "fp32", "--engine-workers", "1", "--no-progress",
           "--quiet"]  # fmt: skip
    if args.model:
        cmd += ["--model", str(args.model)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 3):  # 3: some inputs were not captures or were cut short
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter() - started}


def figure(result: dict, path: tuple) -> float:
    value = result
    for key in path:
        value = value[key]
    return float(value["packets_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", type=Path, nargs="+", help="captures or folders")
    ap.add_argument("--baseline-tree", type=Path, required=True, help="the other pktnin source tree")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--precision", default="fp32@1", help="one engine, fixed (no measuring step)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp"), help="where the score runs write their output")
    args = ap.parse_args()

    trees = {"baseline": args.baseline_tree.resolve(), "this": ROOT}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    scores: dict[str, list[dict]] = {name: [] for name in trees}
    loads = []
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            loads.append(os.getloadavg()[0])
            runs[name].append(run_bench(trees[name], args))
            scores[name].append(score_cpu(trees[name], args, args.work / f"bench-trees-{name}.parquet"))
            print(f"round {r + 1} {name}: " + ", ".join(f"{s} {figure(runs[name][-1], p):,.0f}" for s, p in STAGES)
                  + f"; score run {scores[name][-1]['cpu_s']:.1f} CPU s", flush=True)  # fmt: skip
    medians = {name: {s: statistics.median(figure(x, p) for x in runs[name]) for s, p in STAGES} for name in trees}
    print(f"\npackets/s, medians of {args.rounds} interleaved rounds (load average 1 min: "
          f"{min(loads):.1f}..{max(loads):.1f})")  # fmt: skip
    print(f"{'stage':<12}{'baseline':>12}{'this':>12}{'this/base':>11}")
    for stage, _ in STAGES:
        base, this = medians["baseline"][stage], medians["this"][stage]
        print(f"{stage:<12}{base:>12,.0f}{this:>12,.0f}{this / base:>11.2f}")
    cpu = {name: statistics.median(x["cpu_s"] for x in scores[name]) for name in trees}
    print(f"{'score CPU s':<12}{cpu['baseline']:>12.1f}{cpu['this']:>12.1f}{cpu['this'] / cpu['baseline']:>11.2f}")
    if args.save:
        report = {
            "trees": {k: str(v) for k, v in trees.items()},
            "paths": [str(p) for p in args.paths],
            "precision": args.precision,
            "rounds": args.rounds,
            "cpu": platform.processor() or platform.machine(),
            "load_average_1min": [min(loads), max(loads)],
            "medians": medians,
            "score_cpu_s": {name: [x["cpu_s"] for x in scores[name]] for name in trees},
            "score_wall_s": {name: [x["wall_s"] for x in scores[name]] for name in trees},
            "runs": {name: [{s: figure(x, p) for s, p in STAGES} for x in runs[name]] for name in trees},
        }
        args.save.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
