"""Plain-Python reference of packet layout v1, written from the specification independently of pktnin.layout.

Slow (struct + bytes slicing, exceptions for skips) and meant only as a test oracle.
"""

from __future__ import annotations

import struct

import numpy as np

ROW = 1500
BODY = 1460
REASONS = [
    "kept",
    "unsupported-link",
    "non-ip",
    "fragment",
    "non-tcp-udp",
    "malformed",
    "dns",
    "no-payload",
    "ts-overflow",
    "zero-length",
]  # the last two are the capture reader's (a time outside int64 ns, an empty record): never a parse result
IPV6_FAMILIES = {10, 24, 28, 30}
VLAN_TPIDS = {0x8100, 0x88A8, 0x9100}


class Skip(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.code = REASONS.index(reason)


def _need(data: bytes, end: int) -> None:
    if end > len(data):
        raise Skip("malformed")


def _link(data: bytes, linktype: int) -> tuple[int, int, int]:
    """(offset of the IP header, expected IP version, outermost vlan id)."""
    if linktype == 1:
        _need(data, 14)
        (ethertype,) = struct.unpack_from("!H", data, 12)
        pos, vlan, tags = 14, 0, 0
        while ethertype in VLAN_TPIDS:
            _need(data, pos + 4)
            tci, ethertype = struct.unpack_from("!HH", data, pos)
            if tags == 0:
                vlan = tci & 0xFFF
            tags += 1
            pos += 4
        return pos, {0x0800: 4, 0x86DD: 6}.get(ethertype) or _raise("non-ip"), vlan
    if linktype in (113, 276):
        size, at = (16, 14) if linktype == 113 else (20, 0)
        _need(data, size)
        (ethertype,) = struct.unpack_from("!H", data, at)
        return size, {0x0800: 4, 0x86DD: 6}.get(ethertype) or _raise("non-ip"), 0
    if linktype in (101, 12, 14, 228, 229):
        _need(data, 1)
        version = data[0] >> 4
        if version not in (4, 6):
            raise Skip("non-ip")
        return 0, version, 0
    if linktype in (0, 108):
        _need(data, 4)
        families = {struct.unpack_from("!I", data, 0)[0]}
        if linktype == 0:
            families.add(struct.unpack_from("<I", data, 0)[0])
        if 2 in families:
            return 4, 4, 0
        if families & IPV6_FAMILIES:
            return 4, 6, 0
        raise Skip("non-ip")
    raise Skip("unsupported-link")


def _raise(reason: str):
    raise Skip(reason)


def parse(data: bytes, linktype: int, keep_dns: bool = False) -> dict:
    """Parse one captured packet (exactly its captured bytes); raise Skip or return the fields."""
    net, version, vlan = _link(data, linktype)
    ip = data[net:]
    if version == 4:
        _need(ip, 20)
        if ip[0] >> 4 != 4:
            raise Skip("malformed")
        ihl = (ip[0] & 15) * 4
        (total,) = struct.unpack_from("!H", ip, 2)
        if ihl < 20 or 0 < total < ihl or ihl > len(ip):
            raise Skip("malformed")
        (flags_frag,) = struct.unpack_from("!H", ip, 6)
        if flags_frag & 0x1FFF:
            raise Skip("fragment")
        if total:  # 0: TSO / BIG-TCP, the captured bytes are the packet
            ip = ip[:total]
        proto = ip[9]
        net_seg = bytearray(ip[:20])
        net_seg[12:20] = bytes(8)
        src, dst = ip[12:16] + bytes(12), ip[16:20] + bytes(12)
        pos = ihl
        strict_net = (4, 5, 8, 10, 11)
    else:
        _need(ip, 40)
        if ip[0] >> 4 != 6:
            raise Skip("malformed")
        (plen,) = struct.unpack_from("!H", ip, 4)
        if plen:
            ip = ip[: 40 + plen]
        proto = ip[6]
        net_seg = bytearray(ip[:8] + bytes(12))
        src, dst = ip[8:24], ip[24:40]
        pos = 40
        strict_net = (7,)
        count = 0
        while proto in (0, 43, 60, 51, 44):
            count += 1
            if count > 8:
                raise Skip("malformed")
            if proto == 44:
                _need(ip, pos + 8)
                (frag,) = struct.unpack_from("!H", ip, pos + 2)
                if frag >> 3:
                    raise Skip("fragment")
                size = 8
            else:
                _need(ip, pos + 2)
                size = (ip[pos + 1] + 2) * 4 if proto == 51 else (ip[pos + 1] + 1) * 8
                _need(ip, pos + size)
            proto = ip[pos]
            pos += size
    if proto == 6:
        _need(ip, pos + 20)
        doff = (ip[pos + 12] >> 4) * 4
        if doff < 20:
            raise Skip("malformed")
        _need(ip, pos + doff)
        trans_seg = bytearray(ip[pos : pos + 20])
        payload = ip[pos + doff :]
        strict_trans = tuple(range(12)) + (16, 17)
    elif proto == 17:
        _need(ip, pos + 8)
        trans_seg = bytearray(ip[pos : pos + 8] + bytes(12))
        payload = ip[pos + 8 :]
        strict_trans = (0, 1, 2, 3, 6, 7)
    else:
        raise Skip("non-tcp-udp")
    sport, dport = struct.unpack_from("!HH", ip, pos)
    if not keep_dns and 53 in (sport, dport):
        raise Skip("dns")
    if not payload:
        raise Skip("no-payload")
    return {
        "ip_version": version,
        "proto": proto,
        "src_addr": bytes(src),
        "dst_addr": bytes(dst),
        "src_port": sport,
        "dst_port": dport,
        "vlan": vlan,
        "net_seg": bytes(net_seg),
        "trans_seg": bytes(trans_seg),
        "payload": bytes(payload),
        "strict_net": strict_net,
        "strict_trans": strict_trans,
    }


def make_row(fields: dict, mask: str = "paper") -> bytes:
    net, trans = bytearray(fields["net_seg"]), bytearray(fields["trans_seg"])
    if mask == "strict":
        for i in fields["strict_net"]:
            net[i] = 0
        for i in fields["strict_trans"]:
            trans[i] = 0
    row = bytes(net) + bytes(trans) + fields["payload"][:BODY]
    return row + bytes(ROW - len(row))


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def flow_key(fields: dict) -> int:
    a = (fields["src_addr"], fields["src_port"])
    b = (fields["dst_addr"], fields["dst_port"])
    first, second = sorted([a, b])
    head = bytes([fields["ip_version"], fields["proto"]]) + struct.pack("!H", fields["vlan"])
    return fnv1a64(head + first[0] + struct.pack("!H", first[1]) + second[0] + struct.pack("!H", second[1]))


def reference_packet(data: bytes, linktype: int, mask: str = "paper", keep_dns: bool = False):
    """(skip code, row bytes or None, fields dict or None) for one packet's captured bytes."""
    try:
        fields = parse(bytes(data), linktype, keep_dns)
    except Skip as skip:
        return skip.code, None, None
    fields["flow_key"] = flow_key(fields)
    return 0, make_row(fields, mask), fields


def reference_batch(raw: dict, mask: str = "paper", keep_dns: bool = False) -> tuple[np.ndarray, dict]:
    """The CPU kernel's (rows, meta) for a RawBatch-like dict, computed packet by packet."""
    buf = bytes(np.asarray(raw["buf"], dtype=np.uint8))
    rows, skip, kept_fields, index = [], [], [], []
    for i, (off, caplen, linktype) in enumerate(zip(raw["pkt_off"], raw["caplen"], raw["linktype"])):
        off, caplen = int(off), int(caplen)
        if off < 0 or caplen < 0 or off + caplen > len(buf):
            code, row, fields = REASONS.index("malformed"), None, None
        else:
            code, row, fields = reference_packet(buf[off : off + caplen], int(linktype), mask, keep_dns)
        skip.append(code)
        if code == 0:
            rows.append(np.frombuffer(row, dtype=np.uint8))
            kept_fields.append(fields)
            index.append(i)
    k = len(index)
    index = np.array(index, dtype=np.int64)
    meta = {
        "index": index,
        "frame": np.asarray(raw["frame"], dtype=np.int64)[index],
        "ts_ns": np.asarray(raw["ts_ns"], dtype=np.int64)[index],
        "ip_version": np.array([f["ip_version"] for f in kept_fields], dtype=np.uint8),
        "proto": np.array([f["proto"] for f in kept_fields], dtype=np.uint8),
        "src_addr": np.array([list(f["src_addr"]) for f in kept_fields], dtype=np.uint8).reshape(k, 16),
        "dst_addr": np.array([list(f["dst_addr"]) for f in kept_fields], dtype=np.uint8).reshape(k, 16),
        "src_port": np.array([f["src_port"] for f in kept_fields], dtype=np.uint16),
        "dst_port": np.array([f["dst_port"] for f in kept_fields], dtype=np.uint16),
        "vlan": np.array([f["vlan"] for f in kept_fields], dtype=np.uint16),
        "flow_key": np.array([f["flow_key"] for f in kept_fields], dtype=np.uint64),
        "skip": np.array(skip, dtype=np.uint8),
        "skip_counts": np.bincount(np.array(skip, dtype=np.int64), minlength=len(REASONS)).astype(np.int64),
    }
    rows_array = np.stack(rows) if rows else np.zeros((0, ROW), dtype=np.uint8)
    return rows_array, meta
