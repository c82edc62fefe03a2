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
import tempfile
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


def pktnin_prep(paths: list[Path], source: Path | None = None) -> dict:
    """One `pktnin bench prep --json` run in a child process (the pktnin of `source` when given); adds the child's
    peak RSS and its CPU seconds (less sensitive than wall time to other users of a shared machine)."""
    cmd = [sys.executable, "-m", "pktnin.cli", "bench", "prep", "--json", *map(str, paths)]
    env = None if source is None else dict(os.environ, PYTHONPATH=str(source))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=source).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.strip().splitlines()[-1])
    # ru_maxrss of children is the max over all waited-for children: only trust it when it grew.
    result["peak_rss_mib"] = max(before.ru_maxrss, after.ru_maxrss) / 1024
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["packets_per_cpu_s"] = result["packets"] / cpu if cpu > 0 else 0.0
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
    # A private temporary name beside the target (mkstemp: 0600, never an existing file or a planted link).
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
            ts = 1_600_000_000.0
            for i in range(packets):
                writer.writepkt(records[i % len(records)], ts=ts + i * 1e-5)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(records)


def _median(results: list[dict]) -> dict:
    best = dict(results[0])
    for key in ("packets_per_s", "packets_per_cpu_s", "seconds"):
        best[key] = statistics.median(r[key] for r in results)
    best["runs_packets_per_s"] = [r["packets_per_s"] for r in results]
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
    return best


def median_run(paths: list[Path], runs: int, against: Path | None = None) -> dict:
    """Medians of `runs` runs; with `against` (another pktnin source tree), its runs interleaved with ours."""
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(pktnin_prep(paths))
        if against is not None:
            theirs.append(pktnin_prep(paths, against))
    best = _median(ours)
    if against is not None:
        best["against"] = _median(theirs)
        best["ratio_vs_against"] = best["packets_per_s"] / best["against"]["packets_per_s"]
        best["cpu_ratio_vs_against"] = best["packets_per_cpu_s"] / best["against"]["packets_per_cpu_s"]
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent
    ap.add_argument("--corpus", type=Path, default=here.parent.parent / "shared" / "corpus" / "pcaps")
    ap.add_argument("--big", type=Path, help="the large capture: made here if missing and kept (default: made in "
                    "a private temporary folder and removed at the end)")
    ap.add_argument("--big-packets", type=int, default=2_500_000)
    ap.add_argument("--dpkt-packets", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--save", type=Path, help="folder for prep.json and prep.md")
    ap.add_argument("--against", type=Path, help="source tree of another pktnin version (e.g. from `git archive`): "
                    "its prep runs interleaved with ours and the ratios are reported")
    args = ap.parse_args()

    corpus_files = sorted(p for p in args.corpus.rglob("*") if p.is_file())
    if not corpus_files:
        raise SystemExit(f"no files under {args.corpus}")
    with tempfile.TemporaryDirectory(prefix="pktnin-bench-") as private:
        if args.big is None:
            args.big = Path(private) / "big.pcap"
        run(args, corpus_files)


def run(args, corpus_files: list[Path]) -> None:
    if not args.big.exists() or args.big.stat().st_size == 0:
        print(f"writing {args.big} ({args.big_packets:,} packets) ...", file=sys.stderr)
        make_big_capture(corpus_files, args.big, args.big_packets)

    report = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "corpus": {"files": len(corpus_files), "pktnin": median_run([args.corpus], args.runs, args.against)},
        "big": {"file": str(args.big), "bytes": args.big.stat().st_size,
                "pktnin": median_run([args.big], args.runs, args.against)},
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
    if args.against is not None:
        lines += ["", f"Against {args.against} (interleaved runs, medians):", "",
                  "| input | packets/s ours | packets/s theirs | ratio | per CPU s ours | per CPU s theirs | ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for part in ("corpus", "big"):
            r = report[part]["pktnin"]
            a = r["against"]
            lines.append(
                f"| {part} | {r['packets_per_s']:,.0f} | {a['packets_per_s']:,.0f} | {r['ratio_vs_against']:.2f} | "
                f"{r['packets_per_cpu_s']:,.0f} | {a['packets_per_cpu_s']:,.0f} | {r['cpu_ratio_vs_against']:.2f} |"
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
