"""End-to-end packets/s of `pktnin score --decide packet` against `--decide flow` (K = 1, 4, ...), interleaved
in one run (run k of every mode before run k+1 of any; medians of --runs), on sets of captures:

- each source's test captures by file (a labels folder's file_splits.csv, split == test), with --split
  NAME=SPLITS_CSV:PCAPS_DIR (repeatable);
- a capture with a heavy-tailed flow-size distribution (bench/make_heavy_tailed_capture.py; --heavy PATH, made
  there with the script's defaults when absent).

    python bench/bench_decide.py --split corpus=../shared/corpus/file_splits.csv:../shared/corpus/pcaps \\
        --split corpus-ext=../shared/corpus-ext/file_splits.csv:../data/corpus-ext/pcaps \\
        --heavy ../data/flowmode/heavy.pcap --runs 3 --json bench/results/decide-speed.json

One model (default: the bundled default) and one engine (--precision, default auto) for every mode, opened
once. The JSON records the machine (CPU model, AVX-512 or not) and the load average before and after.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_heavy_tailed_capture import write_capture  # noqa: E402

from pktnin.api import open_model  # noqa: E402
from pktnin.measure import compare_decisions  # noqa: E402
from pktnin.rowfile import PrepOptions  # noqa: E402


def split_files(splits_csv: Path, pcaps: Path, split: str = "test") -> list[Path]:
    with open(splits_csv, newline="") as fh:
        names = [r["file"] for r in csv.DictReader(fh) if r["split"] == split]
    files = [pcaps / n for n in names]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} {split} captures missing under {pcaps} (first: {missing[0]})")
    return files


def machine() -> dict:
    cpu = ""
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "avx512": " avx512f" in flags,
            "python": platform.python_version()}  # fmt: skip


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", action="append", default=[], metavar="NAME=SPLITS_CSV:PCAPS")
    ap.add_argument("--heavy", type=Path, help="heavy-tailed capture (made here when absent)")
    ap.add_argument("--model", default=None, help="bundled model name or file (default: the bundled default)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flow-packets", default="1,4", help="K values of flow mode, comma-separated")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    sets: list[tuple[str, list[Path]]] = []
    for spec in args.split:
        name, _, rest = spec.partition("=")
        splits_csv, _, pcaps = rest.partition(":")
        sets.append((f"{name} test", split_files(Path(splits_csv), Path(pcaps))))
    heavy_profile = None
    if args.heavy is not None:
        if not args.heavy.is_file():
            args.heavy.parent.mkdir(parents=True, exist_ok=True)
            write_capture(args.heavy, 300_000, 3000, 1.1, 300.0, 0)
        heavy_profile = str(args.heavy)
        sets.append(("heavy-tailed", [args.heavy]))
    if not sets:
        raise SystemExit("nothing to measure: give --split and/or --heavy")

    modes = [("packet", 1)] + [("flow", int(k)) for k in args.flow_packets.split(",")]
    runner, model_path = open_model(args.model, "auto", None, args.batch, args.precision)
    results = {"command": " ".join(sys.argv), "machine": machine(), "git": git_commit(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": str(model_path),
               "load_before": os.getloadavg(), "sets": []}  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="pktnin-decide-") as tmp:
            for name, files in sets:
                started = time.perf_counter()
                r = compare_decisions(files, runner, modes, args.batch, args.runs, Path(tmp), PrepOptions())
                r.update(name=name, load_after=os.getloadavg(), wall_s=time.perf_counter() - started)
                if name == "heavy-tailed":
                    r["capture"] = heavy_profile
                results["sets"].append(r)
                print(f"\n{name}: {r['files']} files, {r['engine_label']}, medians of {args.runs} runs "
                      f"(load {r['load_after'][0]:.1f})")  # fmt: skip
                for m in r["modes"]:
                    label = m["decide"] + (f" K={m['flow_packets']}" if m["decide"] == "flow" else "")
                    e2e = m["end_to_end"]
                    vs = f"{m['vs_first']:.2f}x" if "vs_first" in m else "1.00x"
                    print(f"  {label:10s} {e2e['packets_per_s']:>12,.0f} rows/s  ({e2e['packets']:,} rows)  {vs}")
    finally:
        runner.close()
    results["load_after"] = os.getloadavg()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
