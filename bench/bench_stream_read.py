"""Record walk throughput of the capture reader by input kind: a mapped file (the baseline), the same bytes
through a pipe, through a FIFO, and gzip-compressed; each in a child process so that its peak RSS is its own.

Prints records/s (median of --runs), the ratio to the mapped file measured in the same run, and peak RSS.

    python bench/bench_stream_read.py [CAPTURE] [--packets N] [--runs 3]

Without CAPTURE a synthetic capture of --packets packets is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from pktnin.kernels.capture import CaptureReader
warm = (0xA1B2C3D4).to_bytes(4, "little") + bytes(16) + (1).to_bytes(4, "little") + bytes(16)
list(CaptureReader(warm))  # one empty record: the walk is loaded from numba's cache before the clock starts
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
reader = CaptureReader(sys.argv[1])
n = sum(raw.n for raw in reader)
seconds = time.perf_counter() - start
print(json.dumps({"records": n, "seconds": seconds, "before_mib": before,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "fatal": None if reader.fatal is None else str(reader.fatal)}))
"""


def run_child(path: str, feed: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if feed is None:
        done = subprocess.run([sys.executable, "-c", CHILD, path], env=env, capture_output=True, text=True, check=True)
    else:  # a writer process feeds the pipe or FIFO while the child reads it
        if path == "-":
            with open(feed, "rb") as fh:
                writer = subprocess.Popen(["cat"], stdin=fh, stdout=subprocess.PIPE)
                done = subprocess.run([sys.executable, "-c", CHILD, "-"], env=env, stdin=writer.stdout,
                                      capture_output=True, text=True, check=True)  # fmt: skip
        else:
            writer = subprocess.Popen(["sh", "-c", f"cat '{feed}' > '{path}'"])
            done = subprocess.run([sys.executable, "-c", CHILD, path], env=env, capture_output=True, text=True,
                                  check=True)  # fmt: skip
        writer.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("capture", nargs="?")
    parser.add_argument("--packets", type=int, default=400_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.capture:
            capture = Path(args.capture)
        else:
            sys.path.insert(0, str(ROOT))
            from pktnin.synth import write_synthetic_capture

            capture = write_synthetic_capture(tmp / "synthetic.pcap", packets=args.packets, seed=1)
        gz = tmp / (capture.name + ".gz")
        with open(capture, "rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        fifo = tmp / "capture.fifo"
        os.mkfifo(fifo)
        run_child(str(capture))  # compile (numba cache) before timing
        kinds = {
            "mapped file": lambda: run_child(str(capture)),
            "stdin pipe": lambda: run_child("-", feed=capture),
            "FIFO": lambda: run_child(str(fifo), feed=capture),
            "gzip file": lambda: run_child(str(gz)),
        }
        results = {}
        for name, measure in kinds.items():
            runs = [measure() for _ in range(args.runs)]
            assert all(r["fatal"] is None for r in runs), runs
            results[name] = {
                "records": runs[0]["records"],
                "records_per_s": statistics.median(r["records"] / r["seconds"] for r in runs),
                "peak_rss_mib": max(r["rss_mib"] for r in runs),
                "growth_mib": max(r["rss_mib"] - r["before_mib"] for r in runs),  # peak RSS added by reading
            }
        base = results["mapped file"]["records_per_s"]
        size_mib = capture.stat().st_size / 2**20
        print(f"capture: {capture.name}, {size_mib:.0f} MiB, {results['mapped file']['records']:,} records; "
              f"gzip {gz.stat().st_size / 2**20:.0f} MiB; median of {args.runs} runs")  # fmt: skip
        print(f"{'input':<12} {'records/s':>12} {'vs mapped':>10} {'peak RSS MiB':>13} {'added by reading':>17}")
        for name, r in results.items():
            assert r["records"] == results["mapped file"]["records"]
            print(f"{name:<12} {r['records_per_s']:>12,.0f} {r['records_per_s'] / base:>10.2f} "
                  f"{r['peak_rss_mib']:>13.0f} {r['growth_mib']:>17.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
