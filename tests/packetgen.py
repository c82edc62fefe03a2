"""Builders of raw packets (bytes) for the tests, and of RawBatch-like dicts from them.

Layers nest by calling: `ethernet(ipv4(tcp(payload=b"hi")))`. Every field has a plain default, and every
length/offset field can be overridden to build broken packets.

Transport:   tcp(sport, dport, payload, seq, ack, flags, options, data_offset, checksum)
             udp(sport, dport, payload, length, checksum)
Network:     ipv4(l4, proto, src, dst, ttl, ident, options, frag_offset, more_fragments, total_length, ihl, version)
             ipv6(l4, next_header, src, dst, hop_limit, ext, payload_length, flow_label, version)
             IPv6 extension headers for `ext`: ext_options(kind, units), ext_ah(units), ext_fragment(offset, more)
Link:        ethernet(ip, ethertype, vlans=[(tpid, vid), ...], pad_to=60), sll(ip), sll2(ip),
             null(ip, family, byteorder), loop(ip, family); raw IP needs no wrapper (link types 101/12/14/228/229)
Batches:     batch(records) -> dict with the RawBatch fields; a record is (data, linktype) or
             (data, linktype, caplen). caplen < len(data) simulates snaplen truncation: the bytes past caplen are
             still in buf (as in a real capture, other bytes follow), so a parser that reads past caplen is caught.
Catalog:     catalog() -> list of (name, data, linktype, caplen) covering every case of the layout.
"""

from __future__ import annotations

import ipaddress
import struct

import numpy as np


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def tcp(
    sport: int = 40000,
    dport: int = 443,
    payload: bytes = b"",
    seq: int = 0x01020304,
    ack: int = 0x05060708,
    flags: int = 0x18,
    window: int = 0xFFFF,
    options: bytes = b"",
    data_offset: int | None = None,
    checksum: int = 0xC5C5,
    urgent: int = 0,
) -> bytes:
    """TCP segment; options are padded with NOPs to a multiple of 4; data_offset (in 32-bit words) overrides."""
    if len(options) % 4:
        options += b"\x01" * (4 - len(options) % 4)
    if data_offset is None:
        data_offset = 5 + len(options) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, data_offset << 4, flags, window, checksum, urgent)
    return header + options + payload


def udp(
    sport: int = 40000, dport: int = 443, payload: bytes = b"", length: int | None = None, checksum: int = 0xD7D7
) -> bytes:
    if length is None:
        length = 8 + len(payload)
    return struct.pack("!HHHH", sport, dport, length, checksum) + payload


def ipv4(
    l4: bytes,
    proto: int = 6,
    src: str = "192.0.2.1",
    dst: str = "198.51.100.2",
    ttl: int = 64,
    ident: int = 0x4242,
    options: bytes = b"",
    frag_offset: int = 0,
    more_fragments: bool = False,
    dont_fragment: bool = True,
    total_length: int | None = None,
    ihl: int | None = None,
    version: int = 4,
    tos: int = 0,
    checksum: int = 0xBEEF,
) -> bytes:
    """IPv4 packet; options padded with zeros (end of options) to a multiple of 4; frag_offset in 8-byte units."""
    if len(options) % 4:
        options += b"\x00" * (4 - len(options) % 4)
    if ihl is None:
        ihl = 5 + len(options) // 4
    if total_length is None:
        total_length = 20 + len(options) + len(l4)
    flags_frag = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0) | frag_offset
    header = struct.pack(
        "!BBHHHBBH4s4s",
        (version << 4) | ihl,
        tos,
        total_length,
        ident,
        flags_frag,
        ttl,
        proto,
        checksum,
        _addr(src),
        _addr(dst),
    )
    return header + options + l4


def ext_options(kind: int = 0, units: int = 0) -> tuple[int, bytes]:
    """Hop-by-hop (0), routing (43) or destination options (60) header of (units+1)*8 bytes."""
    size = (units + 1) * 8
    return kind, bytes([units]) + bytes([1, size - 4]) + b"\x00" * (size - 4)


def ext_ah(units: int = 4) -> tuple[int, bytes]:
    """Authentication header (51) of (units+2)*4 bytes."""
    size = (units + 2) * 4
    return 51, bytes([units]) + b"\x00\x00" + b"\xab" * (size - 4)


def ext_fragment(offset: int = 0, more: bool = False, ident: int = 0x11223344) -> tuple[int, bytes]:
    """Fragment header (44), 8 bytes; offset in 8-byte units."""
    return 44, b"\x00" + struct.pack("!HI", (offset << 3) | int(more), ident)


def ipv6(
    l4: bytes,
    next_header: int = 6,
    src: str = "2001:db8::1",
    dst: str = "2001:db8:ffff::2",
    hop_limit: int = 64,
    ext: list[tuple[int, bytes]] = (),
    payload_length: int | None = None,
    flow_label: int = 0xABCDE,
    traffic_class: int = 0x28,
    version: int = 6,
) -> bytes:
    """IPv6 packet. `ext` is a list of (header type, header bytes after its next-header byte), in order;
    the next-header bytes are chained here, the last one pointing at `next_header`."""
    body = b""
    types = [kind for kind, _ in ext] + [next_header]
    for i, (_, rest) in enumerate(ext):
        body += bytes([types[i + 1]]) + rest
    body += l4
    first = types[0]
    if payload_length is None:
        payload_length = len(body)
    word = (version << 28) | (traffic_class << 20) | flow_label
    return struct.pack("!IHBB16s16s", word, payload_length, first, hop_limit, _addr(src), _addr(dst)) + body


def _ethertype_of(ip: bytes) -> int:
    return 0x86DD if ip and ip[0] >> 4 == 6 else 0x0800


def ethernet(
    ip: bytes,
    ethertype: int | None = None,
    vlans: list[tuple[int, int]] = (),
    pad_to: int = 60,
    dst: bytes = b"\x02\x00\x00\x00\x00\x02",
    src: bytes = b"\x02\x00\x00\x00\x00\x01",
) -> bytes:
    """Ethernet II frame; vlans = [(tpid, vid), ...] outermost first (priority bits set to 5); padded to pad_to."""
    if ethertype is None:
        ethertype = _ethertype_of(ip)
    frame = dst + src
    for tpid, vid in vlans:
        frame += struct.pack("!HH", tpid, (5 << 13) | vid)
    frame += struct.pack("!H", ethertype) + ip
    if len(frame) < pad_to:
        frame += b"\xee" * (pad_to - len(frame))  # non-zero padding, so leaking it into a row is visible
    return frame


def sll(ip: bytes, protocol: int | None = None) -> bytes:
    """Linux cooked capture v1 (link type 113): 16-byte header, protocol at offset 14."""
    if protocol is None:
        protocol = _ethertype_of(ip)
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", protocol) + ip


def sll2(ip: bytes, protocol: int | None = None) -> bytes:
    """Linux cooked capture v2 (link type 276): 20-byte header, protocol at offset 0."""
    if protocol is None:
        protocol = _ethertype_of(ip)
    return struct.pack("!HHIHBB8s", protocol, 0, 3, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + ip


def null(ip: bytes, family: int | None = None, byteorder: str = "little") -> bytes:
    """BSD loopback (link type 0): 4-byte address family in the capturing host's byte order."""
    if family is None:
        family = 30 if ip and ip[0] >> 4 == 6 else 2
    return family.to_bytes(4, byteorder) + ip


def loop(ip: bytes, family: int | None = None) -> bytes:
    """OpenBSD loopback (link type 108): 4-byte address family in network byte order."""
    return null(ip, family, "big")


def batch(records, gap: int = 16, seed: int = 0) -> dict:
    """RawBatch-like dict from records (data, linktype) or (data, linktype, caplen).

    Records are laid out one after the other in buf with `gap` random bytes before each (standing in for
    record headers), so reads outside [pkt_off, pkt_off + caplen) see unrelated bytes.
    """
    rng = np.random.default_rng(seed)
    parts, offsets, caplens, linktypes = [], [], [], []
    pos = 0
    for record in records:
        data, linktype = record[0], record[1]
        caplen = record[2] if len(record) > 2 else len(data)
        head = rng.integers(0, 256, gap, dtype=np.uint8).tobytes()
        parts += [head, data]
        offsets.append(pos + gap)
        caplens.append(caplen)
        linktypes.append(linktype)
        pos += gap + len(data)
    tail = rng.integers(0, 256, gap, dtype=np.uint8).tobytes()
    parts.append(tail)
    buf = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
    n = len(offsets)
    return {
        "buf": buf,
        "pkt_off": np.array(offsets, dtype=np.int64),
        "caplen": np.array(caplens, dtype=np.int32),
        "wirelen": np.array([len(r[0]) for r in records], dtype=np.int32),
        "linktype": np.array(linktypes, dtype=np.int32),
        "ts_ns": np.arange(n, dtype=np.int64) * 1000 + 1_600_000_000_000_000_000,
        "frame": np.arange(n, dtype=np.int64) + 7,
    }


def payload_bytes(n: int, start: int = 1) -> bytes:
    """n recognizable non-zero bytes (1, 2, ..., 255, 1, ...)."""
    return bytes((start + i) % 255 + 1 for i in range(n))


def catalog() -> list[tuple[str, bytes, int, int]]:
    """Named packets (name, data, linktype, caplen) that cover every rule of packet layout v1."""
    p = payload_bytes(100)
    big = payload_bytes(1600)
    t = tcp(payload=p)
    u = udp(sport=5000, dport=6000, payload=p)
    v4 = ipv4(t)
    v6 = ipv6(t)
    cases = [
        ("eth-ipv4-tcp", ethernet(v4), 1),
        ("eth-ipv4-udp", ethernet(ipv4(u, proto=17)), 1),
        ("eth-ipv6-tcp", ethernet(v6), 1),
        ("eth-ipv6-udp", ethernet(ipv6(u, next_header=17)), 1),
        ("eth-vlan", ethernet(v4, vlans=[(0x8100, 42)]), 1),
        ("eth-qinq", ethernet(v6, vlans=[(0x88A8, 100), (0x8100, 200)]), 1),
        ("eth-qinq-old", ethernet(v4, vlans=[(0x9100, 7), (0x9100, 8), (0x8100, 9)]), 1),
        ("eth-vlan-truncated", ethernet(b"", ethertype=0x8100, pad_to=0), 1),
        ("eth-arp", ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20, ethertype=0x0806), 1),
        ("eth-short", b"\x00" * 10, 1),
        ("eth-padding", ethernet(ipv4(tcp(payload=b"abc"))), 1),
        ("eth-version-mismatch", ethernet(v6, ethertype=0x0800), 1),
        ("sll-ipv4", sll(v4), 113),
        ("sll-ipv6", sll(v6), 113),
        ("sll-arp", sll(b"\x00" * 28, protocol=0x0806), 113),
        ("sll2-ipv4", sll2(v4), 276),
        ("sll2-ipv6-udp", sll2(ipv6(u, next_header=17)), 276),
        ("raw101-ipv4", v4, 101),
        ("raw101-ipv6", v6, 101),
        ("raw12-ipv4", v4, 12),
        ("raw14-ipv6", v6, 14),
        ("raw228-ipv4", v4, 228),
        ("raw229-ipv6", v6, 229),
        ("raw-not-ip", b"\x10" + v4[1:], 101),
        ("raw-empty", b"", 101),
        ("null-le-ipv4", null(v4), 0),
        ("null-be-ipv4", null(v4, byteorder="big"), 0),
        ("null-le-ipv6-24", null(v6, family=24), 0),
        ("null-be-ipv6-28", null(v6, family=28, byteorder="big"), 0),
        ("null-ipv6-10", null(v6, family=10), 0),
        ("null-unknown-family", null(v4, family=7), 0),
        ("loop-ipv4", loop(v4), 108),
        ("loop-ipv6", loop(v6, family=24), 108),
        ("loop-le-family", null(v4, byteorder="little"), 108),
        ("unsupported-link", ethernet(v4), 105),
        ("ipv4-options", ethernet(ipv4(t, options=b"\x94\x04\x00\x00\x01\x01\x01\x00")), 1),
        ("ipv4-first-fragment", ethernet(ipv4(t, more_fragments=True, dont_fragment=False)), 1),
        ("ipv4-fragment", ethernet(ipv4(p, frag_offset=185, dont_fragment=False)), 1),
        ("ipv4-ihl-4", ethernet(ipv4(t, ihl=4)), 1),
        ("ipv4-total-below-ihl", ethernet(ipv4(t, total_length=19)), 1),
        ("ipv4-total-short", ethernet(ipv4(t, total_length=20 + 20 + 10)), 1),
        ("ipv4-total-long", ethernet(ipv4(t, total_length=1400)), 1),
        ("ipv4-total-zero-tso", ethernet(ipv4(tcp(payload=big), total_length=0)), 1),
        ("ipv4-icmp", ethernet(ipv4(b"\x08\x00" + p, proto=1)), 1),
        ("ipv4-header-cut", ethernet(v4, pad_to=0), 1, 14 + 12),
        ("ipv4-options-cut", ethernet(ipv4(t, options=b"\x01" * 20)), 1, 14 + 30),
        ("ipv6-hbh-routing-dst", ethernet(ipv6(t, ext=[ext_options(0, 1), ext_options(43, 0), ext_options(60, 2)])), 1),
        ("ipv6-ah", ethernet(ipv6(u, next_header=17, ext=[ext_ah(4)])), 1),
        ("ipv6-frag-first", ethernet(ipv6(t, ext=[ext_fragment(0, True)])), 1),
        ("ipv6-frag-later", ethernet(ipv6(p, ext=[ext_fragment(100, False)])), 1),
        ("ipv6-8-ext", ethernet(ipv6(t, ext=[ext_options(60, 0)] * 8)), 1),
        ("ipv6-9-ext", ethernet(ipv6(t, ext=[ext_options(60, 0)] * 9)), 1),
        ("ipv6-ext-cut", ethernet(ipv6(b"", ext=[ext_options(0, 3)], next_header=6), pad_to=0), 1, 14 + 40 + 20),
        ("ipv6-payload-length-0", ethernet(ipv6(t, payload_length=0)), 1),
        ("ipv6-payload-length-short", ethernet(ipv6(t, payload_length=20 + 30)), 1),
        ("ipv6-payload-length-long", ethernet(ipv6(t, payload_length=9000)), 1),
        ("ipv6-header-cut", ethernet(v6), 1, 14 + 39),
        ("ipv6-icmp", ethernet(ipv6(b"\x80\x00" + p, next_header=58)), 1),
        ("ipv6-no-next", ethernet(ipv6(b"", next_header=59)), 1),
        ("tcp-options", ethernet(ipv4(tcp(payload=p, options=b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + b"\x07" * 8))), 1),
        ("tcp-doff-4", ethernet(ipv4(tcp(payload=p, data_offset=4))), 1),
        ("tcp-doff-past-end", ethernet(ipv4(tcp(payload=b"x", data_offset=15)), pad_to=0), 1),
        ("tcp-doff-to-end", ethernet(ipv4(tcp(payload=b"", options=b"\x01" * 8)), pad_to=0), 1),
        ("tcp-header-cut", ethernet(v4), 1, 14 + 20 + 15),
        ("tcp-empty", ethernet(ipv4(tcp(payload=b"", flags=0x10))), 1),
        ("udp-empty", ethernet(ipv4(udp(payload=b""), proto=17)), 1),
        ("udp-header-cut", ethernet(ipv4(udp(payload=p), proto=17)), 1, 14 + 20 + 7),
        ("dns-dst", ethernet(ipv4(udp(dport=53, payload=p), proto=17)), 1),
        ("dns-src-tcp", ethernet(ipv6(tcp(sport=53, payload=p))), 1),
        ("payload-1460", ethernet(ipv4(tcp(payload=big[:1460]))), 1),
        ("payload-1600", ethernet(ipv4(tcp(payload=big))), 1),
        ("payload-1600-udp6", sll(ipv6(udp(payload=big), next_header=17)), 113),
        ("snaplen-payload", ethernet(ipv4(tcp(payload=big))), 1, 14 + 40 + 60),
        ("snaplen-at-payload", ethernet(ipv4(tcp(payload=p))), 1, 14 + 40),
        ("vlan-sll-not-unwrapped", sll(b"\x00\x2a\x08\x00" + v4, protocol=0x8100), 113),
        ("caplen-zero", ethernet(v4), 1, 0),
    ]
    return [(c[0], c[1], c[2], c[3] if len(c) > 3 else len(c[1])) for c in cases]


def mixed_traffic(seed: int, n: int, flows: int = 6, max_payload: int = 300) -> list[tuple[int, bytes]]:
    """(timestamp ns, Ethernet frame) x n: a few bidirectional flows of IPv4 TCP, with IPv4 UDP behind a VLAN
    tag, IPv6 UDP, DNS (skipped unless DNS is kept) and an empty TCP segment (skipped) in every 10 packets."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        payload = rng.integers(0, 256, size=int(rng.integers(1, max_payload)), dtype=np.uint8).tobytes()
        flow = int(rng.integers(0, flows))
        client, server = f"10.0.{seed}.{flow + 1}", "192.0.2.80"
        sport, dport = 40000 + flow, 443
        if rng.random() < 0.5:  # server -> client: same flow, other direction
            client, server, sport, dport = server, client, dport, sport
        kind = i % 10
        if kind == 6:
            pkt = ethernet(ipv4(udp(sport, dport, payload), proto=17, src=client, dst=server), vlans=[(0x8100, 7)])
        elif kind == 7:
            pkt = ethernet(
                ipv6(udp(sport, dport, payload), next_header=17, src="2001:db8::1", dst=f"2001:db8::{seed + 2:x}")
            )
        elif kind == 8:
            pkt = ethernet(ipv4(udp(5353 + flow, 53, payload), proto=17, src=client, dst=server))
        elif kind == 9:
            pkt = ethernet(ipv4(tcp(sport, dport, b""), src=client, dst=server))
        else:
            pkt = ethernet(ipv4(tcp(sport, dport, payload), src=client, dst=server))
        out.append((1_600_000_000_000_000_000 + seed * 10**9 + i * 1000, pkt))
    return out
