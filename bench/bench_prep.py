"""Prep throughput: pktnin's compiled read + transform against a plain dpkt loop, in one run.

(a) the shared corpus (many small files of many link types) and (b) one large classic capture made by replaying
the corpus's Ethernet packets until it holds --big-packets records. Each pktnin figure is the median of --runs
runs in a fresh subprocess (`pktnin bench prep --json`, so peak RSS is that process's own); the dpkt loop only
walks Ethernet/IP/TCP/UDP (no layout work), on the whole corpus and on the first --dpkt-packets records of (b).

    python bench/bench_prep.py --corpus ../shared/corpus/pcaps --save bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import dpkt


def dpkt_loop(files: list[Path], limit: int | None = None) -> dict:
    """A minimal dpkt parse of every record: Ethernet -> IPv4/IPv6 -> TCP/UDP, payload length."""
    packets = 0
    payload_bytes = 0
    start = time.perf_counter()
    for path in files:
        try:
            with open(path, "rb") as fh:
                reader = dpkt.pcap.UniversalReader(fh)
                for _ts, buf in reader:
                    packets += 1
                    try:
                        eth = dpkt.ethernet.Ethernet(buf)
                        ip = eth.data
                        if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                            payload_bytes += len(ip.data.data)
                    except (dpkt.UnpackError, ValueError):
                        pass
                    if limit and packets >= limit:
                        break
        except (ValueError, dpkt.NeedData, dpkt.UnpackError, OSError):
            continue  # dpkt gives up on broken files; so does this baseline
        if limit and packets >= limit:
            break
    seconds = time.perf_counter() - start
    return {"packets": packets, "seconds": seconds, "packets_per_s": packets / seconds}


def pktnin_prep(paths: list[Path]) -> dict:
    """One `pktnin bench prep --json` run in a child process; adds the child's peak RSS."""
    cmd = [sys.executable, "-m", "pktnin.cli", "bench", "prep", "--json", *map(str, paths)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    # ru_maxrss of children is the max over all waited-for children: only trust it when it grew.
    result["peak_rss_mib"] = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return result


def make_big_capture(corpus_files: list[Path], out: Path, packets: int) -> int:
    """Replay the corpus's Ethernet records (classic pcap, any byte order) into one microsecond pcap."""
    records: list[bytes] = []
    for path in corpus_files:
        try:
            with open(path, "rb") as fh:
                reader = dpkt.pcap.UniversalReader(fh)
                if reader.datalink() != dpkt.pcap.DLT_EN10MB:
                    continue
                records.extend(buf for _ts, buf in reader if 0 < len(buf) <= 65535)
        except (ValueError, dpkt.NeedData, dpkt.UnpackError, OSError):
            continue
    if not records:
        raise SystemExit("no Ethernet records found in the corpus")
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        ts = 1_600_000_000.0
        for i in range(packets):
            writer.writepkt(records[i % len(records)], ts=ts + i * 1e-5)
    os.replace(tmp, out)
    return len(records)


def median_run(paths: list[Path], runs: int) -> dict:
    results = [pktnin_prep(paths) for _ in range(runs)]
    rates = [r["packets_per_s"] for r in results]
    best = dict(results[0])
    best["packets_per_s"] = statistics.median(rates)
    best["seconds"] = statistics.median(r["seconds"] for r in results)
    best["runs_packets_per_s"] = rates
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent
    ap.add_argument("--corpus", type=Path, default=here.parent.parent / "shared" / "corpus" / "pcaps")
    ap.add_argument("--big", type=Path, default=Path("/tmp/pktnin-bench-big.pcap"))
    ap.add_argument("--big-packets", type=int, default=2_500_000)
    ap.add_argument("--dpkt-packets", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--save", type=Path, help="folder for prep.json and prep.md")
    args = ap.parse_args()

    corpus_files = sorted(p for p in args.corpus.rglob("*") if p.is_file())
    if not corpus_files:
        raise SystemExit(f"no files under {args.corpus}")
    if not args.big.exists() or args.big.stat().st_size == 0:
        print(f"writing {args.big} ({args.big_packets:,} packets) ...", file=sys.stderr)
        make_big_capture(corpus_files, args.big, args.big_packets)

    report = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "corpus": {"files": len(corpus_files), "pktnin": median_run([args.corpus], args.runs)},
        "big": {"file": str(args.big), "bytes": args.big.stat().st_size, "pktnin": median_run([args.big], args.runs)},
    }
    report["corpus"]["dpkt"] = dpkt_loop(corpus_files)
    report["big"]["dpkt"] = dpkt_loop([args.big], limit=args.dpkt_packets)
    for part in ("corpus", "big"):
        r = report[part]
        r["speedup_vs_dpkt"] = r["pktnin"]["packets_per_s"] / r["dpkt"]["packets_per_s"]

    lines = [
        "| input | packets | pktnin packets/s (median of %d) | dpkt loop packets/s | ratio | pktnin peak RSS |" % args.runs,
        "|---|---:|---:|---:|---:|---:|",
    ]
    for part in ("corpus", "big"):
        r = report[part]
        lines.append(
            f"| {part} | {r['pktnin']['packets']:,} | {r['pktnin']['packets_per_s']:,.0f} | "
            f"{r['dpkt']['packets_per_s']:,.0f} | {r['speedup_vs_dpkt']:.1f}x | {r['pktnin']['peak_rss_mib']:.0f} MiB |"
        )
    table = "\n".join(lines)
    print(table)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        (args.save / "prep.json").write_text(json.dumps(report, indent=2) + "\n")
        cmd = "python bench/bench_prep.py " + " ".join(sys.argv[1:])
        (args.save / "prep.md").write_text(
            f"# Prep throughput\n\nMachine: {report['machine']}, Python {report['python']}.\n"
            f"Command: `{cmd}`\n\n{table}\n\n"
            f"The dpkt loop on the big file ran on its first {args.dpkt_packets:,} records.\n"
        )


if __name__ == "__main__":
    main()
