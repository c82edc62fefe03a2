"""What reading captures from object storage costs: the same captures scored from local files (the baseline) and
from S3 objects read by ranged GETs, in turns (local, S3, local, S3, ...), medians of --runs.

Two measures per input kind, each in this process after a warm-up run:
- prep: records read, parsed and turned into rows (packets.iter_packets), packets/s;
- score: `pktnin score` end to end (the bundled default model, --executor local, output to a local file),
  packets/s over the scoring (the summary's rate), and its wall time.

The S3 endpoint is moto's server on 127.0.0.1 in a child process (tests/s3_server.py): no network, no real S3
latency or bandwidth, and its own CPU use counts against the same machine. It says what the ranged-read path
costs in this process, not what a real bucket gives.

    python bench/bench_object_storage.py [--files 4] [--packets 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from s3_server import s3_server
with s3_server() as endpoint:
    print(endpoint, flush=True)
    sys.stdin.read()  # until the parent closes it
"""


def prep_rate(files: list) -> tuple[int, float]:
    from pktnin.packets import iter_packets

    start = time.perf_counter()
    n = sum(batch.rows.shape[0] for batch in iter_packets(files))
    return n, n / (time.perf_counter() - start)


def score_rate(inputs: list[str], out: Path) -> tuple[int, float, float]:
    """(packets, packets/s over the scoring, wall seconds) of one `pktnin score` run in a child process."""
    summary = out.with_suffix(".json")
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pktnin", "score", *inputs, "--out", str(out), "--force", "-q", "--no-progress",
         "--summary", str(summary)],
        check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    wall = time.perf_counter() - start
    s = json.loads(summary.read_text())
    return s["packets"], s["packets_per_s"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--packets", type=int, default=100_000, help="packets per capture")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import pyarrow.fs as pafs

    from pktnin.packets import find_captures, find_inputs
    from pktnin.synth import write_synthetic_capture

    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT / "tests")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        endpoint = server.stdout.readline().strip()  # type: ignore[union-attr]
        if not endpoint.startswith("http"):
            sys.exit("moto's S3 server did not start (pip install 'pktnin[test]')")
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=endpoint)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "caps"
            folder.mkdir()
            for k in range(args.files):
                write_synthetic_capture(folder / f"c{k}.pcap", packets=args.packets, seed=k)
            fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
            fs.create_dir("bench-captures")
            pafs.copy_files(str(folder), "bench-captures/caps", destination_filesystem=fs)
            local, remote = find_captures([folder]), find_inputs(["s3://bench-captures/caps/"])
            size_mib = sum(f.stat().st_size for f in local) / 2**20

            kinds = {
                "local files": (local, [str(folder)]),
                "S3 (moto, localhost)": (remote, ["s3://bench-captures/caps/"]),
            }
            prep_rate(local)  # kernels compiled or loaded before the clock
            prep: dict[str, list[float]] = {k: [] for k in kinds}
            score: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
            counts = set()
            for _ in range(args.runs):
                for name, (files, _) in kinds.items():
                    n, rate = prep_rate(files)
                    counts.add(n)
                    prep[name].append(rate)
            score_rate(kinds["local files"][1], Path(tmp) / "warm.parquet")  # engine timings cached before the clock
            for _ in range(args.runs):
                for name, (_, inputs) in kinds.items():
                    n, rate, wall = score_rate(inputs, Path(tmp) / "p.parquet")
                    counts.add(n)
                    score[name].append((rate, wall))
            assert len(counts) == 1, counts  # every run saw the same packets
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait()

    print(f"{args.files} synthetic captures, {size_mib:.0f} MiB, {counts.pop():,} packets scored; "
          f"medians of {args.runs} interleaved runs; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'input':<22} {'prep pkt/s':>12} {'vs local':>9} {'score pkt/s':>12} {'vs local':>9} {'wall s':>7}")
    base_prep = statistics.median(prep["local files"])
    base_score = statistics.median(r for r, _ in score["local files"])
    for name in kinds:
        p = statistics.median(prep[name])
        s = statistics.median(r for r, _ in score[name])
        w = statistics.median(w for _, w in score[name])
        print(f"{name:<22} {p:>12,.0f} {p / base_prep:>9.2f} {s:>12,.0f} {s / base_score:>9.2f} {w:>7.1f}")


if __name__ == "__main__":
    main()
