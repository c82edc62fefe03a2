"""Small writers of test captures: classic pcap and pcapng, any byte order, magic, link type and resolution.

Classic pcap:
    pcap_bytes(packets, linktype=1, nanosecond=False, big_endian=False, snaplen=65535) -> bytes
    write_pcap(path, packets, **same) -> Path
  `packets`: a list of `data` or `(ts_ns, data)` or `(ts_ns, data, wirelen)`; data is bytes. Bare data gets
  ts_ns = i * 1_000_000 (1 ms apart, from 0). wirelen defaults to len(data). Microsecond files store ts_ns // 1000.
  `linktype` is written as given (pass e.g. 1 | 0x10000000 to set the FCS bits).

pcapng:
    pcapng_bytes(sections) -> bytes
    write_pcapng(path, sections) -> Path
  `sections`: a list of dicts
    {"big_endian": False,                       # optional, default False
     "interfaces": [(linktype, tsresol), ...],  # IDBs written right after the SHB; optional 3rd item: tsoffset s
     "records": [...]}                          # blocks written after them, in order
  tsresol is the if_tsresol option byte (6: microseconds, 9: nanoseconds, 0x80 | 20: 2^-20 s) or None to omit
  the option (microseconds). Records:
    ("epb", if_id, ts_ns, data[, wirelen])  Enhanced Packet Block
    ("opb", if_id, ts_ns, data[, wirelen])  obsolete Packet Block (if_id is 16 bits, drops = 0)
    ("spb", data[, wirelen])                Simple Packet Block (no interface id, no timestamp)
    ("idb", linktype, tsresol[, tsoffset])  one more interface, mid-section
    ("unknown", block_type, body)           any other block (body padded to 4 bytes)
    ("raw", block_bytes)                    bytes inserted as they are (to build broken files)
  Timestamps are stored in the interface's units: units_of(ts_ns, tsresol) (truncated); tests compute the
  expected reading back with ns_of(units, tsresol, tsoffset).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

__all__ = [
    "pcap_bytes",
    "write_pcap",
    "pcapng_bytes",
    "write_pcapng",
    "units_of",
    "ns_of",
    "pcap_record_offsets",
]

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D


def _atomic_write(path, data: bytes) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _norm_packets(packets):
    out = []
    for i, p in enumerate(packets):
        if isinstance(p, (bytes, bytearray, memoryview)):
            out.append((i * 1_000_000, bytes(p), len(p)))
        elif len(p) == 2:
            out.append((p[0], bytes(p[1]), len(p[1])))
        else:
            out.append((p[0], bytes(p[1]), p[2]))
    return out


def pcap_bytes(packets, linktype=1, nanosecond=False, big_endian=False, snaplen=65535) -> bytes:
    """A classic pcap file as bytes; see the module doc."""
    e = ">" if big_endian else "<"
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    parts = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype & 0xFFFFFFFF)]
    for ts_ns, data, wirelen in _norm_packets(packets):
        sec, frac_ns = divmod(ts_ns, 1_000_000_000)
        frac = frac_ns if nanosecond else frac_ns // 1000
        parts.append(struct.pack(e + "IIII", sec, frac, len(data), wirelen))
        parts.append(data)
    return b"".join(parts)


def write_pcap(path, packets, **kwargs) -> Path:
    """Write pcap_bytes(packets, **kwargs) to path (atomically); returns the path."""
    return _atomic_write(path, pcap_bytes(packets, **kwargs))


def pcap_record_offsets(packets) -> list[int]:
    """File offsets of each record header in a classic pcap written from `packets`."""
    offs, pos = [], 24
    for _, data, _ in _norm_packets(packets):
        offs.append(pos)
        pos += 16 + len(data)
    return offs


# ---------------------------------------------------------------------------------------------------------------
# pcapng


def units_of(ts_ns: int, tsresol) -> int:
    """ts_ns in the units of an interface with this if_tsresol byte (None: microseconds), truncated."""
    if tsresol is None:
        tsresol = 6
    if tsresol & 0x80:
        return (ts_ns << (tsresol & 0x7F)) // 1_000_000_000
    return ts_ns * 10**tsresol // 1_000_000_000


def ns_of(units: int, tsresol, tsoffset_s: int = 0) -> int:
    """Nanoseconds of a timestamp in interface units (exact, rounded down), plus the interface's tsoffset."""
    if tsresol is None:
        tsresol = 6
    if tsresol & 0x80:
        ns = (units * 1_000_000_000) >> (tsresol & 0x7F)
    else:
        ns = units * 1_000_000_000 // 10**tsresol
    return ns + tsoffset_s * 1_000_000_000


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _block(e: str, btype: int, body: bytes) -> bytes:
    body = _pad4(body)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _option(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + _pad4(value)


def _idb(e: str, linktype: int, tsresol, tsoffset=None, snaplen=0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += _option(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += _option(e, 14, struct.pack(e + "q", tsoffset))
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    return _block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts)


def pcapng_bytes(sections) -> bytes:
    """A pcapng file as bytes; see the module doc."""
    out = []
    for sec in sections:
        e = ">" if sec.get("big_endian") else "<"
        shb_body = struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)
        out.append(_block(e, 0x0A0D0D0A, shb_body))
        ifaces = []
        for itf in sec.get("interfaces", []):
            ifaces.append(itf)
            out.append(_idb(e, itf[0], itf[1], itf[2] if len(itf) > 2 else None))
        for rec in sec.get("records", []):
            kind = rec[0]
            if kind in ("epb", "opb"):
                if_id, ts_ns, data = rec[1], rec[2], bytes(rec[3])
                wirelen = rec[4] if len(rec) > 4 else len(data)
                tsresol = ifaces[if_id][1] if if_id < len(ifaces) else None
                units = units_of(ts_ns, tsresol)
                hi, lo = units >> 32, units & 0xFFFFFFFF
                if kind == "epb":
                    head = struct.pack(e + "IIIII", if_id, hi, lo, len(data), wirelen)
                    out.append(_block(e, 6, head + data))
                else:
                    head = struct.pack(e + "HHIIII", if_id, 0, hi, lo, len(data), wirelen)
                    out.append(_block(e, 2, head + data))
            elif kind == "spb":
                data = bytes(rec[1])
                wirelen = rec[2] if len(rec) > 2 else len(data)
                out.append(_block(e, 3, struct.pack(e + "I", wirelen) + data))
            elif kind == "idb":
                ifaces.append(rec[1:])
                out.append(_idb(e, rec[1], rec[2], rec[3] if len(rec) > 3 else None))
            elif kind == "unknown":
                out.append(_block(e, rec[1], bytes(rec[2])))
            elif kind == "raw":
                out.append(bytes(rec[1]))
            else:
                raise ValueError(f"unknown record kind {kind!r}")
    return b"".join(out)


def write_pcapng(path, sections) -> Path:
    """Write pcapng_bytes(sections) to path (atomically); returns the path."""
    return _atomic_write(path, pcapng_bytes(sections))
