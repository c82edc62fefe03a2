"""Build one large classic pcap by replaying the records of a folder of real captures.

The records of every classic-pcap Ethernet capture under --corpus (any byte order, micro- or nanosecond) are
concatenated, in file order, again and again until the output holds --records records. Each record keeps its
bytes and lengths; timestamps are rewritten to move forward by 10 us per record so that flow tables (ndpiReader)
see time advance. The file is written under a temporary name and renamed, little-endian microsecond pcap.

    python bench/make_big_capture.py --corpus ../shared/corpus/pcaps --out ~/captures/big.pcap --records 2100000

Keep the output outside the repository: it is derived from the corpus captures.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
from pathlib import Path

_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}
_ETHERNET = 1
_SNAPLEN = 262144


def ethernet_records(path: Path) -> list[bytes]:
    """The packet bytes of each record of a classic-pcap Ethernet capture; [] for any other file."""
    data = path.read_bytes()
    order = _MAGICS.get(data[:4])
    if order is None or len(data) < 24 or struct.unpack(order + "I", data[20:24])[0] & 0xFFFF != _ETHERNET:
        return []
    out = []
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack(order + "I", data[pos + 8 : pos + 12])[0]
        if caplen == 0 or caplen > _SNAPLEN or pos + 16 + caplen > len(data):
            break  # lost framing or truncated: keep what came before
        out.append(data[pos + 16 : pos + 16 + caplen])
        pos += 16 + caplen
    return out


def make_big_capture(corpus: Path, out: Path, records: int) -> dict:
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    source = [r for p in files for r in ethernet_records(p)]
    if not source:
        raise SystemExit(f"no classic-pcap Ethernet records under {corpus}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A private temporary name beside the target (0600, never an existing file or a planted link).
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    base_us = 1_600_000_000 * 1_000_000
    with os.fdopen(fd, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, _ETHERNET))
        chunk = []
        for i in range(records):
            pkt = source[i % len(source)]
            ts = base_us + 10 * i
            chunk.append(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(pkt), len(pkt)))
            chunk.append(pkt)
            if len(chunk) >= 65536:
                fh.write(b"".join(chunk))
                chunk.clear()
        fh.write(b"".join(chunk))
    os.replace(tmp, out)
    return {"source_records": len(source), "records": records, "bytes": out.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="folder of captures (searched recursively)")
    ap.add_argument("--out", type=Path, required=True, help="output pcap (outside the repository)")
    ap.add_argument("--records", type=int, default=2_100_000)
    args = ap.parse_args()
    info = make_big_capture(args.corpus, args.out, args.records)
    print(
        f"{args.out}: {info['records']:,} records, {info['bytes']:,} bytes "
        f"(replayed from {info['source_records']:,} corpus records)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
