"""Where read + prep spends its time on one capture, stage by stage, against this machine's memory bandwidth.

Stages, each a full pass over the file (records in chunks of --chunk, transformed in pieces of
packets.REUSED_PIECE_RECORDS a thread into reused buffers, as iter_packets(reuse_rows=True) does for an engine
that reads rows in place), in this order, all in this one process:

  copy        numpy copy of a 256 MiB buffer: the memory bandwidth the others are compared with
  walk        window reads and the record walk alone (pktnin.kernels.capture)
  parse       walk + layout.parse_packet of every record, nothing written (a profiling kernel, below)
  prep-nofk   walk + the one-pass transform without flow keys (what the packet writer needs)
  prep        walk + the one-pass transform with every metadata column (flow aggregation needs flow_key)
  prep-2t     as prep on two threads: the walk on one, a few chunks ahead (packets.read_ahead), the transform
              on the other (what iter_packets does with two threads)
  cached      the one-pass transform (every column) of the file's first chunk, again and again for as many
              records as the file holds: the compute cost alone, with the chunk and its rows in cache

Each stage reports packets/s, the file bytes it reads per second, the bytes it writes (rows and metadata) per
second, its memory traffic (read + written) as a fraction of the copy's (copy traffic = 2 x bytes copied),
and the CPU time it took per packet (all threads; on a shared machine wall time includes waiting for a core).
The time a stage adds over the one before it is its own cost: parse - walk = parse, prep-nofk - parse = row and
metadata writes, prep - prep-nofk = flow keys; prep against walk + cached says how much of the transform is
waiting for memory rather than computing. Every figure is the median of --runs passes, the stages
interleaved (pass 1 of every stage, then pass 2, ...) because the machine is shared.

    python bench/profile_prep.py ~/captures/big.pcap --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

from pktnin import layout
from pktnin.kernels import cpu
from pktnin.kernels.capture import CaptureReader
from pktnin.packets import REUSED_PIECE_RECORDS, read_ahead

_parse_packet = njit(nogil=True)(layout.parse_packet)


@njit(nogil=True)
def _parse_only(buf, pkt_off, caplen, linktype, skip):
    d = np.empty(layout.DESC_LEN, dtype=np.int64)
    for i in range(pkt_off.shape[0]):
        skip[i] = _parse_packet(buf, pkt_off[i], caplen[i], linktype[i], False, d)


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes copied per second (numpy copyto, page-faulted buffers), median of `repeats`."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return nbytes / statistics.median(times)


def run_stage(stage: str, path: Path, chunk: int) -> dict:
    reader = CaptureReader(path, max_records=chunk)
    records = kept = 0
    skip = np.empty(chunk, dtype=np.uint8)
    piece = REUSED_PIECE_RECORDS  # as iter_packets(reuse_rows=True) does with one transform thread
    prep = cpu.RangePrep(reuse=True, flow_keys=stage != "prep-nofk", min_range=REUSED_PIECE_RECORDS)
    cpu_start = time.process_time()
    start = time.perf_counter()
    if stage == "prep-2t":
        reader = read_ahead(lambda stopped: iter(CaptureReader(path, max_records=chunk)))
    if stage == "cached":
        total = sum(r.n for r in CaptureReader(path, max_records=chunk))
        raw = next(iter(CaptureReader(path, max_records=chunk)))
        first = {name: np.array(getattr(raw, name)) for name in cpu.RAW_FIELDS}  # outlives its reader
        cpu_start = time.process_time()
        start = time.perf_counter()
        while records < total:
            kept += sum(int(p.skip_counts[layout.KEPT]) for p in prep.pieces(first, piece))
            records += first["pkt_off"].shape[0]
        reader = ()
    for raw in reader:
        records += raw.n
        if stage == "parse":
            _parse_only(raw.buf, raw.pkt_off, raw.caplen, raw.linktype, skip)
        elif stage != "walk":
            kept += sum(int(p.skip_counts[layout.KEPT]) for p in prep.pieces(raw, piece))
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    prep.close()
    meta_bytes = 8 * 3 + 1 * 2 + 16 * 2 + 2 * 3 + (8 if stage != "prep-nofk" else 0)  # per kept row
    return {
        "records": records,
        "rows": kept,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "written_bytes": kept * (layout.ROW_LEN + meta_bytes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=8192, help="records per chunk")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    stages = ["walk", "parse", "prep-nofk", "prep", "prep-2t", "cached"]
    size = args.capture.stat().st_size
    for stage in stages:  # compile and warm the page cache (not timed)
        run_stage(stage, args.capture, 64) if stage != "walk" else None
    run_stage("walk", args.capture, args.chunk)
    runs: dict[str, list] = {s: [] for s in stages}
    copies = []
    for _ in range(args.runs):
        copies.append(copy_bandwidth())
        for stage in stages:
            runs[stage].append(run_stage(stage, args.capture, args.chunk))
    copy_bps = statistics.median(copies)
    out = {
        "capture": str(args.capture),
        "bytes": size,
        "chunk": args.chunk,
        "runs": args.runs,
        "copy_bytes_per_s": copy_bps,
        "copy_runs_bytes_per_s": copies,
        "stages": {},
    }
    print(f"copy: {copy_bps / 1e9:.2f} GB/s copied ({2 * copy_bps / 1e9:.2f} GB/s of memory traffic)")
    print(
        f"{'stage':<10} {'Mpkt/s':>8} {'read GB/s':>10} {'write GB/s':>11} {'of copy':>8} {'CPU ns/pkt':>11}"
        "  runs (Mpkt/s)"
    )
    for stage in stages:
        rs = runs[stage]
        seconds = statistics.median(r["seconds"] for r in rs)
        cpu_seconds = statistics.median(r["cpu_seconds"] for r in rs)
        records, written = rs[0]["records"], rs[0]["written_bytes"]
        fraction = (size + written) / seconds / (2 * copy_bps)
        out["stages"][stage] = {
            "records": records,
            "rows": rs[0]["rows"],
            "seconds": seconds,
            "packets_per_s": records / seconds,
            "read_bytes_per_s": size / seconds,
            "written_bytes_per_s": written / seconds,
            "fraction_of_copy_traffic": fraction,
            "runs_seconds": [r["seconds"] for r in rs],
            "cpu_seconds": cpu_seconds,
            "cpu_ns_per_packet": cpu_seconds / records * 1e9,
        }
        print(
            f"{stage:<10} {records / seconds / 1e6:8.2f} {size / seconds / 1e9:10.2f} "
            f"{written / seconds / 1e9:11.2f} {fraction:8.0%} {cpu_seconds / records * 1e9:11.0f}  "
            + " ".join(f"{records / r['seconds'] / 1e6:.2f}" for r in rs)
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
