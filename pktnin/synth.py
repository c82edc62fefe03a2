"""Realistic synthetic captures, for `pktnin bench` without input and for the quick-start examples.

Flows of the kinds an analyst sees on a network: TLS and HTTP over TCP, QUIC and RTP over UDP, SSH, DNS (which
the layout skips), bare ACKs (no payload), IPv4 and IPv6, packet sizes from 0 to a full MTU. Payload bytes are
random where the real protocol is encrypted, with the real record headers in front.
"""

from __future__ import annotations

import os
from pathlib import Path

import dpkt
import numpy as np

from pktnin.atomic import atomic_path

# (name, transport, server port, IPv6 share, payload sizes to draw from)
FLOW_KINDS = (
    ("tls", "tcp", 443, 0.2, (0, 0, 31, 517, 1380, 1448, 1448)),
    ("http", "tcp", 80, 0.0, (0, 120, 350, 1448)),
    ("ssh", "tcp", 22, 0.1, (0, 36, 52, 100, 1448)),
    ("quic", "udp", 443, 0.3, (33, 1200, 1252, 1350)),
    ("rtp", "udp", 16384, 0.0, (172, 172, 172, 332)),
    ("dns", "udp", 53, 0.2, (33, 48, 120)),
)


def _payload(kind: str, size: int, rng: np.random.Generator) -> bytes:
    if size == 0:
        return b""
    body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    if kind == "tls" and size >= 5:  # application-data record header, then ciphertext
        return b"\x17\x03\x03" + (size - 5).to_bytes(2, "big") + body[5:]
    if kind == "http":
        return (b"GET /index.html HTTP/1.1\r\nHost: example.org\r\n\r\n" + body)[:size]
    if kind == "ssh" and size >= 5:
        return (size - 4).to_bytes(4, "big") + body[4:]
    if kind == "rtp" and size >= 12:
        return b"\x80\x00" + body[2:]
    return body


def _addr(rng: np.random.Generator, v6: bool) -> bytes:
    if v6:
        return bytes([0x20, 0x01, 0x0D, 0xB8]) + rng.integers(0, 256, 12, dtype=np.uint8).tobytes()
    return bytes([10, int(rng.integers(0, 256)), int(rng.integers(0, 256)), int(rng.integers(1, 255))])


def synthetic_packets(packets: int, seed: int = 0) -> list[tuple[float, bytes]]:
    """`packets` Ethernet frames (timestamp, bytes) from interleaved flows of every kind."""
    rng = np.random.default_rng(seed)
    flows = []
    for i in range(max(2 * len(FLOW_KINDS), packets // 40)):
        # Every kind appears; each kind's IPv6 share is met over the rounds rather than drawn, so that even a
        # small capture has both IP versions.
        name, transport, port, v6_share, sizes = FLOW_KINDS[i % len(FLOW_KINDS)]
        round_ = i // len(FLOW_KINDS)
        v6 = int((round_ + 1) * v6_share) > int(round_ * v6_share) or (round_ == 1 and v6_share > 0)
        flows.append(
            (name, transport, port, v6, sizes, _addr(rng, v6), _addr(rng, v6), int(rng.integers(32768, 61000)))
        )
    out = []
    ts = 1_700_000_000.0
    for i in range(packets):
        name, transport, port, v6, sizes, client, server, cport = flows[int(rng.integers(len(flows)))]
        upstream = bool(rng.random() < 0.4)
        src, dst = (client, server) if upstream else (server, client)
        sport, dport = (cport, port) if upstream else (port, cport)
        data = _payload(name, int(sizes[int(rng.integers(len(sizes)))]), rng)
        if transport == "tcp":
            l4 = dpkt.tcp.TCP(
                sport=sport,
                dport=dport,
                seq=int(rng.integers(2**32)),
                ack=int(rng.integers(2**32)),
                flags=dpkt.tcp.TH_ACK | (dpkt.tcp.TH_PUSH if data else 0),
                win=502,
                data=data,
            )
            proto = dpkt.ip.IP_PROTO_TCP
        else:
            l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
            l4.ulen = 8 + len(data)
            proto = dpkt.ip.IP_PROTO_UDP
        if v6:
            ip = dpkt.ip6.IP6(src=src, dst=dst, nxt=proto, hlim=64, data=l4)
            ip.plen = len(bytes(l4))
            eth_type = dpkt.ethernet.ETH_TYPE_IP6
        else:
            ip = dpkt.ip.IP(src=src, dst=dst, p=proto, ttl=64, id=i & 0xFFFF, data=l4)
            eth_type = dpkt.ethernet.ETH_TYPE_IP
        frame = dpkt.ethernet.Ethernet(
            src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02", type=eth_type, data=ip
        )
        ts += float(rng.exponential(2e-4))
        out.append((ts, bytes(frame)))
    return out


def write_synthetic_capture(path: str | os.PathLike, packets: int = 20000, seed: int = 0) -> Path:
    """Write a classic microsecond pcap of synthetic traffic, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, frame in synthetic_packets(packets, seed):
            writer.writepkt(frame, ts=ts)
    return path


EXAMPLES = (("office-mix.pcap", 600, 1), ("branch-site.pcap", 400, 2), ("night-batch.pcap", 250, 3))


def write_examples(folder: str | os.PathLike) -> list[Path]:
    """The quick-start captures committed under examples/ (regenerate with `python -m pktnin.synth examples`)."""
    return [write_synthetic_capture(Path(folder) / name, packets=n, seed=seed) for name, n, seed in EXAMPLES]


if __name__ == "__main__":
    import sys

    for written in write_examples(sys.argv[1] if len(sys.argv) > 1 else "examples"):
        print(written)
