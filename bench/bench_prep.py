"""Prep throughput on one large capture: pktnin's read + prep against ndpiReader (and a dpkt loop), in one run.

Peers, each in its own child process, on the same capture (page cache warm):
  pktnin   `pktnin bench prep --json` with 1 and 2 threads (every metadata column), and 2 threads without flow
           keys (the columns the packet writer needs); its own timing, from the first read to the last row
  ndpiReader  nDPI's demo reader (C, full DPI, one thread; Debian package libndpi-bin), timed by its own
           "Packet Processing Time" (setup excluded); skipped with a note when it is not installed
  baseline pktnin from another source tree (--baseline-tree, e.g. an older commit), when given
  dpkt     a plain Python loop over the first --dpkt-packets records (no layout work), once
The headline is the faster of 1 and 2 threads in the run. Rounds are interleaved (round 1 of every peer, then
round 2, ...) and each figure is the median of --runs rounds:
the machine may be shared, so each process's CPU time (user + system, all threads) is reported beside its wall
time. bench/profile_prep.py runs once in the same run: per-stage packets/s and bytes/s against a copy benchmark.

The large capture: replay real traffic into one classic pcap OUTSIDE the repository, e.g.
    python bench/make_big_capture.py --corpus ../shared/corpus/pcaps --out ~/captures/big.pcap --records 2100000
    python bench/bench_prep.py ~/captures/big.pcap --save bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dpkt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_child(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """(stdout, wall seconds, CPU seconds of the child: user + system, all threads)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
    return out, wall, usage.ru_utime + usage.ru_stime


def pktnin_prep(capture: Path, threads: int | None, flow_keys: bool = True, tree: Path = ROOT) -> dict:
    cmd = [sys.executable, "-m", "pktnin.cli", "bench", "prep", "--json", str(capture)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if not flow_keys:
        cmd.append("--no-flow-keys")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out, wall, cpu = run_child(cmd, env)
    result = json.loads(out.strip().splitlines()[-1])
    result["process_wall_seconds"], result["process_cpu_seconds"] = wall, cpu
    return result


def ndpi_reader(capture: Path, exe: str) -> dict:
    out, wall, cpu = run_child([exe, "-i", str(capture)])
    ms = re.search(r"Packet Processing Time:\s+([\d.]+) msec", out)
    total = re.search(r"of (\d+) packets total", out)
    if not ms or not total:
        raise RuntimeError("ndpiReader output has no processing time or packet count")
    packets, seconds = int(total.group(1)), float(ms.group(1)) / 1000
    return {
        "packets": packets,
        "seconds": seconds,
        "packets_per_s": packets / seconds,
        "process_wall_seconds": wall,
        "process_cpu_seconds": cpu,
    }


def dpkt_loop(capture: Path, limit: int) -> dict:
    """A minimal dpkt parse of each record: Ethernet -> IPv4/IPv6 -> TCP/UDP, payload length."""
    packets = payload_bytes = 0
    start = time.perf_counter()
    with open(capture, "rb") as fh:
        for _ts, buf in dpkt.pcap.UniversalReader(fh):
            packets += 1
            try:
                ip = dpkt.ethernet.Ethernet(buf).data
                if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                    payload_bytes += len(ip.data.data)
            except (dpkt.UnpackError, ValueError):
                pass
            if packets >= limit:
                break
    seconds = time.perf_counter() - start
    return {"packets": packets, "seconds": seconds, "packets_per_s": packets / seconds}


def summarize(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key in ("seconds", "process_wall_seconds", "process_cpu_seconds", "cpu_seconds"):
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    out["packets_per_s"] = statistics.median(r["packets_per_s"] for r in runs)
    out["runs_packets_per_s"] = [r["packets_per_s"] for r in runs]
    # pktnin: CPU time of its timed section; ndpiReader: of the whole process (its setup is ~0.1 s).
    out["cpu_ns_per_packet"] = out.get("cpu_seconds", out["process_cpu_seconds"]) / out["packets"] * 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", type=Path, help="large classic pcap (see bench/make_big_capture.py)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ndpi", default=shutil.which("ndpiReader"), help="ndpiReader executable")
    ap.add_argument("--baseline-tree", type=Path, help="another pktnin source tree to measure as a peer")
    ap.add_argument("--dpkt-packets", type=int, default=300_000)
    ap.add_argument("--save", type=Path, help="folder for prep.json and prep.md")
    args = ap.parse_args()
    if not args.capture.is_file():
        raise SystemExit(f"{args.capture}: no such file; make one with bench/make_big_capture.py")

    peers = {
        "pktnin 2 threads": lambda: pktnin_prep(args.capture, 2),
        "pktnin 1 thread": lambda: pktnin_prep(args.capture, 1),
        "pktnin 2 threads, no flow keys": lambda: pktnin_prep(args.capture, 2, flow_keys=False),
    }
    notes = []
    if args.ndpi:
        peers["ndpiReader"] = lambda: ndpi_reader(args.capture, args.ndpi)
    else:
        notes.append("ndpiReader is not installed (Debian: apt-get install libndpi-bin): its peer was skipped.")
    if args.baseline_tree:
        peers["baseline"] = lambda: pktnin_prep(args.capture, None, tree=args.baseline_tree)
    print(f"{args.capture}: {args.capture.stat().st_size:,} bytes; warming up ...", file=sys.stderr)
    subprocess.run(["cat", str(args.capture)], stdout=subprocess.DEVNULL, check=True)  # page cache
    pktnin_prep(args.capture, 1)  # compiles and caches the kernels
    runs: dict[str, list] = {name: [] for name in peers}
    for r in range(args.runs):
        for name, fn in peers.items():
            runs[name].append(fn())
            print(f"round {r + 1} {name}: {runs[name][-1]['packets_per_s']:,.0f} packets/s", file=sys.stderr)
    results = {name: summarize(rs) for name, rs in runs.items()}

    with tempfile.TemporaryDirectory(prefix="pktnin-bench-") as private:
        prof_json = Path(private) / "profile.json"
        subprocess.run(
            [
                sys.executable,
                str(HERE / "profile_prep.py"),
                str(args.capture),
                "--runs",
                str(args.runs),
                "--json",
                str(prof_json),
            ],
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        profile = json.loads(prof_json.read_text())
    dpkt_result = dpkt_loop(args.capture, args.dpkt_packets)

    size = args.capture.stat().st_size
    copy_traffic = 2 * profile["copy_bytes_per_s"]
    # The headline is the faster thread count of this run (on a busy machine one thread can beat two).
    best_name = max(("pktnin 1 thread", "pktnin 2 threads"), key=lambda k: results[k]["packets_per_s"])
    best = results[best_name]
    lines = [
        f"| peer | packets/s (median of {args.runs}) | runs | CPU ns/packet | vs ndpiReader |",
        "|---|---:|---|---:|---:|",
    ]
    ndpi = results.get("ndpiReader")
    for name, res in results.items():
        ratio = f"{res['packets_per_s'] / ndpi['packets_per_s']:.2f}x" if ndpi else "n/a"
        lines.append(
            f"| {name} | {res['packets_per_s']:,.0f} | "
            + ", ".join(f"{x / 1e6:.2f}M" for x in res["runs_packets_per_s"])
            + f" | {res['cpu_ns_per_packet']:.0f} | {ratio} |"
        )
    lines.append(
        f"| dpkt loop (first {dpkt_result['packets']:,} records, once) | {dpkt_result['packets_per_s']:,.0f} "
        f"| | | {dpkt_result['packets_per_s'] / ndpi['packets_per_s']:.2f}x |"
        if ndpi
        else f"| dpkt loop | {dpkt_result['packets_per_s']:,.0f} | | | n/a |"
    )
    written = best["rows"] * 1500
    fraction = (size + written) / best["seconds"] / copy_traffic
    summary = {
        "headline": best_name,
        "prep_over_ndpireader": best["packets_per_s"] / ndpi["packets_per_s"] if ndpi else None,
        "prep_over_ndpireader_cpu_time": ndpi["cpu_ns_per_packet"] / best["cpu_ns_per_packet"] if ndpi else None,
        "prep_packets_per_s": best["packets_per_s"],
        "prep_memory_traffic_fraction_of_copy": fraction,
        "copy_bytes_per_s": profile["copy_bytes_per_s"],
    }
    load = os.getloadavg()
    report = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "load_average_at_end": load,
        "capture": {"file": str(args.capture), "bytes": size, "records": best["packets"], "rows": best["rows"]},
        "peers": results,
        "dpkt": dpkt_result,
        "profile": profile,
        "summary": summary,
        "notes": notes,
    }
    table = "\n".join(lines)
    prof_lines = [
        "| stage | packets/s | file GB/s | rows+meta GB/s | traffic / copy traffic | CPU ns/packet |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage, s in profile["stages"].items():
        prof_lines.append(
            f"| {stage} | {s['packets_per_s']:,.0f} | {s['read_bytes_per_s'] / 1e9:.2f} | "
            f"{s['written_bytes_per_s'] / 1e9:.2f} | {s['fraction_of_copy_traffic']:.0%} | "
            f"{s['cpu_ns_per_packet']:.0f} |"
        )
    print(table)
    print("\n".join(prof_lines))
    print(json.dumps(summary))
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        (args.save / "prep.json").write_text(json.dumps(report, indent=2) + "\n")
        cmd = "python bench/bench_prep.py " + " ".join(sys.argv[1:])
        ratio = f"{summary['prep_over_ndpireader']:.2f}x" if ndpi else "n/a (ndpiReader not installed)"
        (args.save / "prep.md").write_text(
            f"# Prep throughput\n\nMachine: {report['machine']}, Python {report['python']}; load average at the end "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared machine: rounds interleaved, medians).\n"
            f"Capture: {size:,} bytes, {best['packets']:,} records ({best['rows']:,} rows), replayed from real "
            f"traffic by bench/make_big_capture.py.\nCommand: `{cmd}`\n\n{table}\n\n"
            f"{best_name} / ndpiReader: {ratio} in wall time"
            + (f", {summary['prep_over_ndpireader_cpu_time']:.2f}x in CPU time per packet" if ndpi else "")
            + f"; {best['packets_per_s'] / 1e6:.2f} M packets/s; file read + rows "
            f"written at {fraction:.0%} of the memory traffic of a plain copy "
            f"({profile['copy_bytes_per_s'] / 1e9:.2f} GB/s copied).\n\n"
            f"Stages (bench/profile_prep.py, same run, medians of {profile['runs']}, chunks of {profile['chunk']} "
            f"records, rows into reused buffers in pieces):\n\n"
            + "\n".join(prof_lines)
            + "\n"
            + "".join(f"\n{n}\n" for n in notes)
        )


if __name__ == "__main__":
    main()
