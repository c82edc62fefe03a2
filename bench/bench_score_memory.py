"""Peak memory of `pktnin score` on one large capture (>= 2 GB), with per-packet and per-flow outputs.

The capture replays the shared corpus's Ethernet packets (bench_prep.make_big_capture). The model is the tiny
ONNX fixture of the test suite (a MatMul and a softmax), so the run measures the pipeline's memory and speed,
not a network's: with the bundled NIN_parallel the same run would take hours on this CPU, at the same memory.

    python bench/bench_score_memory.py --save bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_prep import make_big_capture  # noqa: E402
from onnx_fixtures import tiny_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=HERE.parent.parent / "shared" / "corpus" / "pcaps")
    ap.add_argument(
        "--big",
        type=Path,
        help="the large capture: made here if missing and kept (default: made in "
        "the run's private temporary folder and removed at the end)",
    )
    ap.add_argument("--packets", type=int, default=6_500_000, help="records in the capture (~2.3 GB)")
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="pktnin-mem-") as tmp:
        tmp = Path(tmp)
        if args.big is None:
            args.big = tmp / "big.pcap"
        if not args.big.exists():
            corpus = sorted(p for p in args.corpus.rglob("*") if p.is_file())
            make_big_capture(corpus, args.big, args.packets)
        size = args.big.stat().st_size
        model = tiny_model(tmp / "tiny.onnx", [f"class{i}" for i in range(18)])
        cmd = [
            sys.executable,
            "-m",
            "pktnin.cli",
            "score",
            str(args.big),
            "--model",
            str(model),
            "--out",
            str(tmp / "packets.parquet"),
            "--flows",
            str(tmp / "flows.parquet"),
            "--no-progress",
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out_mib = (tmp / "packets.parquet").stat().st_size / 2**20
    summary = [line for line in proc.stderr.splitlines() if "packets scored" in line]
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "capture_bytes": size,
        "capture_records": args.packets,
        "wall_seconds": seconds,
        "peak_rss_mib": peak_mib,
        "packets_parquet_mib": out_mib,
        "summary": summary[-1].strip() if summary else None,
    }
    print(json.dumps(result, indent=1))
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        (args.save / "score_memory.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
