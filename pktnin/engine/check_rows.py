"""Rows of traffic no dataset holds, for checking a quantized engine against float32: synthetic flows
(pktnin.synth), the same kind of flows captured oddly (truncated by a short snap length, raw-IP and Linux
cooked link types), and flows on services the synthetic set does not use (random ports, TTLs, TCP flags and
windows). A model never trained on such rows is where an int8 engine's labels drift first.
"""

from __future__ import annotations

import struct

import dpkt
import numpy as np

from pktnin.kernels.cpu import transform
from pktnin.layout import ROW_LEN
from pktnin.synth import synthetic_packets

SNAP_LENGTHS = (64, 96, 200)  # the truncations of the odd set: header only, a little payload, some payload
SLL_HEADER = struct.Struct(">HHH8sH")  # Linux cooked v1: packet type, ARPHRD, address length, address, protocol


def _rows(frames: list[bytes], linktype: int, mask: str) -> np.ndarray:
    """The layout rows of captured frames (of one link type), made in memory by the CPU prep kernel: what reading
    them from a capture gives, without writing one."""
    if not frames:
        return np.zeros((0, ROW_LEN), np.uint8)
    lengths = np.array([len(f) for f in frames], dtype=np.int64)
    n = len(frames)
    raw = {
        "buf": np.frombuffer(b"".join(frames), dtype=np.uint8),
        "pkt_off": np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        "caplen": lengths,
        "linktype": np.full(n, linktype),
        "ts_ns": np.zeros(n),
        "frame": np.arange(n),
    }
    return transform(raw, mask=mask)[0].copy()


def _jittered(frames: list[tuple[float, bytes]], rng: np.random.Generator) -> list[tuple[float, bytes]]:
    """The frames with other services: each flow's server port, and every packet's TTL, TCP flags and window,
    drawn at random (the ports stay consistent within a flow, as on a real network)."""
    server_ports: dict[int, int] = {}
    out = []
    for ts, frame in frames:
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        l4 = getattr(ip, "data", None)
        if not isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
            out.append((ts, frame))
            continue
        server = min(l4.sport, l4.dport)
        port = server_ports.setdefault(server, int(rng.integers(1, 65536)))
        if l4.sport == server:
            l4.sport = port
        else:
            l4.dport = port
        if isinstance(l4, dpkt.tcp.TCP):
            l4.flags = int(rng.choice([0x10, 0x18, 0x11, 0x19, 0x02, 0x12, 0x04]))
            l4.win = int(rng.integers(0, 65536))
        if isinstance(ip, dpkt.ip.IP):
            ip.ttl = int(rng.integers(1, 256))
        else:
            ip.hlim = int(rng.integers(1, 256))
        l4.sum = 0
        if isinstance(ip, dpkt.ip.IP):
            ip.sum = 0
        out.append((ts, bytes(eth)))
    return out


def synthetic_rows(packets: int = 2000, seed: int = 1000, mask: str = "paper") -> dict[str, np.ndarray]:
    """{"synthetic": rows of plain Ethernet captures, "odd": rows of truncated, raw-IP and cooked captures,
    "services": rows of the same flows on random ports with random TTLs, TCP flags and windows} (each about
    `packets` records before the layout's skips; a seed gives the same rows every time)."""
    frames = synthetic_packets(packets, seed)
    rng = np.random.default_rng(seed)
    third = max(1, len(frames) // 3)
    ethernet = dpkt.pcap.DLT_EN10MB
    odd = []
    for k, snaplen in enumerate(SNAP_LENGTHS):
        chunk = frames[k * len(frames) // len(SNAP_LENGTHS) : (k + 1) * len(frames) // len(SNAP_LENGTHS)]
        odd.append(_rows([f[:snaplen] for _, f in chunk], ethernet, mask))
    odd.append(_rows([f[14:] for _, f in frames[:third]], 101, mask))  # LINKTYPE_RAW: the IP packet alone
    sll = [
        SLL_HEADER.pack(int(rng.integers(0, 5)), 1, 6, f[6:12] + b"\0\0", int.from_bytes(f[12:14], "big")) + f[14:]
        for _, f in frames[third : 2 * third]
    ]
    odd.append(_rows(sll, 113, mask))  # LINKTYPE_LINUX_SLL
    services = _jittered(synthetic_packets(packets, seed + 1), rng)
    return {
        "synthetic": _rows([f for _, f in frames], ethernet, mask),
        "odd": np.concatenate(odd),
        "services": _rows([f for _, f in services], ethernet, mask),
    }
