"""Write a capture whose flow sizes are heavy-tailed, as on real links: most packets belong to a few long flows.

Flow sizes are Pareto(alpha) scaled to about --packets in all (every flow at least one payload packet); each
flow is TCP (85 %) or UDP between a client and a server port of common services, starts at a uniform time in
the first --seconds, and sends its packets with exponential gaps (mean 2 ms, below any idle timeout), a few
small opening packets, then mostly full-size segments, mostly from the server. Payloads are random bytes, like
encrypted traffic. Packets of all flows are interleaved by time; the file is classic pcap (microseconds).

    python bench/make_heavy_tailed_capture.py --out /data/heavy.pcap [--packets 300000 --flows 3000 --alpha 1.1]

Prints the flow-size profile: the share of packets in flows of at least 100 packets and the share of packets
among each flow's first K (what `--decide flow` sends to the engine).
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

SERVICES = [(6, 443), (6, 443), (6, 443), (6, 80), (6, 8080), (6, 1935), (6, 5228), (6, 993), (17, 443), (17, 3478)]
GAP_MEAN_S = 0.002


def flow_sizes(rng: np.random.Generator, flows: int, packets: int, alpha: float) -> np.ndarray:
    raw = rng.pareto(alpha, flows) + 1.0
    return np.maximum(1, np.round(raw * (packets / raw.sum()))).astype(np.int64)


def profile(sizes: np.ndarray, ks=(1, 2, 4, 8)) -> dict:
    total = int(sizes.sum())
    return {
        "packets": total,
        "flows": len(sizes),
        "largest_flow": int(sizes.max()),
        "median_flow": float(np.median(sizes)),
        "share_in_flows_of_100_or_more": float(sizes[sizes >= 100].sum() / total),
        "share_in_first_k": {str(k): float(np.minimum(sizes, k).sum() / total) for k in ks},
    }


def write_capture(path: Path, packets: int, flows: int, alpha: float, seconds: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    sizes = flow_sizes(rng, flows, packets, alpha)
    start = rng.uniform(0, seconds, len(sizes))
    flow_of = np.repeat(np.arange(len(sizes)), sizes)
    gaps = rng.exponential(GAP_MEAN_S, len(flow_of))
    firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    gaps[firsts] = 0.0
    cum = np.cumsum(gaps)
    t = start[flow_of] + cum - np.repeat(cum[firsts], sizes)
    index_in_flow = np.arange(len(flow_of)) - np.repeat(firsts, sizes)
    order = np.argsort(t, kind="stable")

    service = rng.integers(0, len(SERVICES), len(sizes))
    client = rng.integers(0x0A000000, 0x0A00FFFF, len(sizes))  # 10.0.0.0/16
    server = rng.integers(0xC6336400, 0xC63364FF, len(sizes))  # 198.51.100.0/24
    cport = rng.integers(32768, 61000, len(sizes))
    from_server = rng.random(len(flow_of)) < 0.7
    bulk = rng.random(len(flow_of)) < 0.7
    lengths = np.where(index_in_flow < 2, rng.integers(60, 520, len(flow_of)),
                       np.where(bulk, 1448, rng.integers(40, 1449, len(flow_of))))  # fmt: skip
    noise = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes() * 2  # payload bytes: slices of random data
    offsets = rng.integers(0, 1 << 20, len(flow_of))
    base_us = 1_700_000_000 * 1_000_000
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in order.tolist():
            f = int(flow_of[i])
            proto, sport = SERVICES[service[f]]
            n = int(lengths[i])
            payload = noise[offsets[i] : offsets[i] + n]
            src, dst, sp, dp = int(client[f]), int(server[f]), int(cport[f]), sport
            if from_server[i] and index_in_flow[i] > 0:
                src, dst, sp, dp = dst, src, dp, sp
            if proto == 6:
                l4 = struct.pack("!HHIIBBHHH", sp, dp, int(index_in_flow[i]) * 1448, 1, 5 << 4, 0x18, 65535, 0, 0)
            else:
                l4 = struct.pack("!HHHH", sp, dp, 8 + n, 0)
            ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(l4) + n, i & 0xFFFF, 0x4000, 64, proto, 0, src, dst)
            frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + l4 + payload
            us = base_us + int(t[i] * 1e6)
            fh.write(struct.pack("<IIII", us // 1_000_000, us % 1_000_000, len(frame), len(frame)))
            fh.write(frame)
    tmp.replace(path)
    return {"file": str(path), "bytes": path.stat().st_size, "seed": seed, "alpha": alpha, **profile(sizes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--flows", type=int, default=3000)
    ap.add_argument("--alpha", type=float, default=1.1, help="Pareto shape: lower is heavier-tailed")
    ap.add_argument("--seconds", type=float, default=300.0, help="flows start within this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(json.dumps(write_capture(args.out, args.packets, args.flows, args.alpha, args.seconds, args.seed), indent=1))


if __name__ == "__main__":
    main()
