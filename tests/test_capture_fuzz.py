"""Fuzz the compiled record walk with random and mutated captures read from memory.

Every case must either read (possibly with errors in the reader's report) or be refused with NotACapture; any
other exception is a failure, and every record handed out must lie inside its buffer. A subset also checks that
tiny windows give exactly the results of one big window, and a smaller run repeats the fuzz in a subprocess
with numba's bounds checking on, so that a read past the window would raise instead of passing silently.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pcapgen import pcap_bytes, pcapng_bytes

from pktnin.kernels.capture import MAX_RECORD_LEN, CaptureError, CaptureReader

N_CASES = 100_000
INTERESTING_U32 = [
    0,
    1,
    3,
    4,
    11,
    12,
    13,
    15,
    16,
    20,
    27,
    28,
    31,
    32,
    33,
    0xFF,
    0xFFFF,
    0x10000,
    MAX_RECORD_LEN - 1,
    MAX_RECORD_LEN,
    MAX_RECORD_LEN + 1,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
]
WINDOWS = [1, 7, 13, 64, 100, 512, 1 << 20]


def _pcap_fields(data: bytes, big: bool) -> list[int]:
    """Offsets of the length fields (caplen, wirelen) of each record of a valid classic pcap."""
    e = ">" if big else "<"
    out, pos = [20], 24
    while pos + 16 <= len(data):
        out += [pos + 8, pos + 12]
        pos += 16 + struct.unpack_from(e + "I", data, pos + 8)[0]
    return out


def _pcapng_fields(data: bytes) -> list[int]:
    """Offsets of block lengths, trailers, interface ids and captured lengths of a valid pcapng."""
    out, pos, e = [], 0, "<"
    while pos + 12 <= len(data):
        if data[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
            e = "<" if data[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            out.append(pos + 8)
        btype, blen = struct.unpack_from(e + "II", data, pos)
        out += [pos, pos + 4, pos + blen - 4]
        if btype in (2, 6):
            out += [pos + 8, pos + 20, pos + 24]
        elif btype == 3:
            out.append(pos + 8)
        elif btype == 1:
            out += [pos + 8, pos + 16, pos + 18, pos + 20]  # link type, first option code/length/value
        pos += blen
    return out


def make_bases(rng) -> list[tuple[bytes, list[int]]]:
    bases = []
    for nano in (False, True):
        for big in (False, True):
            for n in (0, 1, 5, 40):
                pkts = [(int(rng.integers(0, 2**32 * 10**9)), rng.bytes(int(rng.integers(0, 120)))) for _ in range(n)]
                data = pcap_bytes(pkts, nanosecond=nano, big_endian=big, linktype=int(rng.integers(0, 300)))
                bases.append((data, _pcap_fields(data, big)))
    kinds = ("epb", "opb", "spb", "unknown", "idb")
    for big1 in (False, True):
        for n in (1, 4, 30):
            sections = []
            for s in range(1 + n // 10):
                recs = []
                for _ in range(n):
                    kind = kinds[int(rng.integers(0, len(kinds)))]
                    payload = rng.bytes(int(rng.integers(0, 100)))
                    if kind in ("epb", "opb"):
                        recs.append((kind, int(rng.integers(0, 3)), int(rng.integers(0, 2**60)), payload))
                    elif kind == "spb":
                        recs.append(("spb", payload))
                    elif kind == "unknown":
                        recs.append(("unknown", int(rng.integers(7, 2**31)), payload))
                    else:
                        recs.append(("idb", int(rng.integers(0, 300)), int(rng.choice([6, 9, 0x80 | 24]))))
                sections.append(
                    {"big_endian": big1 ^ bool(s % 2), "interfaces": [(1, None), (113, 9), (101, 3)], "records": recs}
                )
            data = pcapng_bytes(sections)
            bases.append((data, _pcapng_fields(data)))
    return bases


def mutate(rng, data: bytes, fields: list[int]) -> bytes:
    arr = np.frombuffer(data, dtype=np.uint8).copy()
    how = int(rng.integers(0, 7))
    if how == 0 or how == 6:  # bit flips (anywhere, or in the headers part)
        k = int(rng.integers(1, 9))
        pos = rng.integers(0, len(arr), k) if how == 0 else rng.integers(0, min(len(arr), 64), k)
        arr[pos] ^= np.uint8(1) << rng.integers(0, 8, k).astype(np.uint8)
    if how == 1 or how == 5:  # truncation
        arr = arr[: int(rng.integers(0, len(arr) + 1))]
    if (how == 2 or how == 5) and fields:  # length-field corruption
        for _ in range(int(rng.integers(1, 3))):
            off = int(fields[int(rng.integers(0, len(fields)))])
            if rng.random() < 0.7:
                val = INTERESTING_U32[int(rng.integers(0, len(INTERESTING_U32)))]
            else:
                val = int(rng.integers(0, 2**32))
            raw = np.array([val], dtype="<u4" if rng.random() < 0.5 else ">u4").view(np.uint8)
            end = min(off + 4, len(arr))
            if off < end:
                arr[off:end] = raw[: end - off]
    if how == 3:  # random bytes over a random region after the file header
        start = int(rng.integers(0, len(arr) + 1))
        stop = min(len(arr), start + int(rng.integers(1, 64)))
        arr[start:stop] = rng.integers(0, 256, stop - start, dtype=np.uint8)
    if how == 4:  # a valid file header followed by random bytes
        head = 24 if data[:4] != b"\x0a\x0d\x0d\x0a" else 28
        arr = np.concatenate([arr[:head], rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8)])
    return arr.tobytes()


def read_checked(data: bytes, window: int, max_records: int, table: int):
    """Read data from memory and check every output against its bounds; returns a comparable summary."""
    try:
        reader = CaptureReader(data, window_bytes=window, max_records=max_records)
    except CaptureError as e:  # NotACapture and friends: allowed
        assert e.offset == 0
        return ("refused",)
    reader.interface_capacity = table
    records = []
    last_frame = -1
    for raw in reader:
        n = raw.n
        assert 1 <= n <= max_records
        size = raw.buf.shape[0]
        off, cl = raw.pkt_off, raw.caplen.astype(np.int64)
        assert off.min() >= 0 and cl.min() >= 1 and cl.max() <= MAX_RECORD_LEN
        assert (off + cl).max() <= size
        assert raw.wirelen.min() >= 0
        assert raw.linktype.min() >= 0 and raw.linktype.max() <= 0xFFFF
        fr = raw.frame
        assert fr[0] > last_frame and (n == 1 or np.all(np.diff(fr) > 0))
        last_frame = int(fr[-1])
        for i in range(n):
            records.append(
                (
                    int(fr[i]),
                    int(raw.linktype[i]),
                    int(raw.ts_ns[i]),
                    int(raw.wirelen[i]),
                    raw.buf[off[i] : off[i] + cl[i]].tobytes(),
                )
            )
    assert reader.records == len(records)
    assert reader.frames == reader.records + reader.corrupt_records + reader.ts_overflow + reader.zero_length
    for err in reader.errors:
        assert isinstance(err, CaptureError) and 0 <= err.offset < len(data)
    fatal = None if reader.fatal is None else str(reader.fatal)
    return records, fatal, [str(e) for e in reader.errors], (reader.corrupt_records, reader.zero_length)


def run_fuzz(n_cases: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    bases = make_bases(rng)
    outcomes = {"refused": 0, "fatal": 0, "clean": 0}
    for case in range(n_cases):
        if case % 50 == 0:  # pure noise, sometimes behind a valid magic
            data = rng.bytes(int(rng.integers(0, 200)))
            if rng.random() < 0.5:
                data = bases[int(rng.integers(0, len(bases)))][0][:28] + data
        else:
            base, fields = bases[int(rng.integers(0, len(bases)))]
            data = mutate(rng, base, fields)
        window = WINDOWS[int(rng.integers(0, len(WINDOWS)))]
        max_records = int(rng.choice([1, 3, 65536]))
        table = int(rng.choice([1, 2, 65536]))
        try:
            got = read_checked(data, window, max_records, table)
        except AssertionError as e:
            raise AssertionError(f"case {case}: {data.hex()} window={window} max={max_records}: {e}") from e
        if got[0] == "refused":
            outcomes["refused"] += 1
            continue
        outcomes["fatal" if got[1] else "clean"] += 1
        if case % 20 == 0:  # window independence
            assert read_checked(data, 1 << 20, 65536, table) == read_checked(data, 5, 2, table), data.hex()
    # the mutations reach every outcome: refused files, fatal errors and clean reads
    assert min(outcomes.values()) > n_cases // 100, outcomes
    return n_cases


@pytest.mark.slow
def test_fuzz_record_walk():
    assert run_fuzz(N_CASES, seed=12345) == N_CASES


@pytest.mark.slow
def test_fuzz_with_bounds_checking(tmp_path):
    # A fresh process compiles the walk with bounds checks (its own cache dir keeps them out of the normal cache).
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    here = Path(__file__).parent
    code = (
        "import sys, numba; assert numba.config.BOUNDSCHECK; sys.path.insert(0, sys.argv[1]); "
        "import test_capture_fuzz as t; t.run_fuzz(3000, seed=7)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(here)], env=env, capture_output=True, text=True, timeout=300, cwd=here.parent
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


# ----------------------------------------------------------------------------------------------------------------
# Timestamps: random interface options (any if_tsresol byte, extreme signed if_tsoffset, repeated options, mid-
# section interfaces) and extreme 64-bit timestamps, against exact integer arithmetic done here from the
# generator's own description (not by parsing the bytes).

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TS_UNITS = [0, 1, 2**31, 2**32 - 1, 2**32, 10**18, 2**62, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
TS_OFFSETS = [
    0,
    1,
    -1,
    2**31,
    -(2**31),
    9_223_372_036,
    -9_223_372_036,
    9_223_372_037,
    -9_223_372_037,
    INT64_MAX,
    INT64_MIN,
    INT64_MAX - 1,
    INT64_MIN + 1,
]


def _exact_ns(units: int, tsresol: int, off: int) -> int | None:
    if tsresol & 0x80:
        ns = (units * 10**9) >> (tsresol & 0x7F)
    else:
        ns = units * 10**9 // 10**tsresol
    ns += off * 10**9
    return ns if INT64_MIN <= ns <= INT64_MAX else None


def _ts_case(rng) -> tuple[bytes, dict[int, int | None]]:
    """A pcapng file and, per packet frame, its exact timestamp (None: out of int64 range, must be skipped)."""
    from pcapgen import _block, _option

    out, expected, frame = [], {}, 0
    for _ in range(int(rng.integers(1, 3))):
        e = ">" if rng.random() < 0.5 else "<"
        out.append(_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
        ifaces = []
        for _ in range(int(rng.integers(1, 12))):
            if not ifaces or rng.random() < 0.25:  # an interface (also between packets)
                tsresol, off, opts = 6, 0, b""
                for _ in range(int(rng.integers(0, 4))):  # options may repeat: the last one counts
                    if rng.random() < 0.6:
                        tsresol = (
                            int(rng.integers(0, 256))
                            if rng.random() < 0.7
                            else int(rng.choice([6, 9, 0x80 | 63, 0x80 | 64, 0xFF, 28, 29]))
                        )
                        opts += _option(e, 9, bytes([tsresol]))
                    else:
                        off = (
                            TS_OFFSETS[int(rng.integers(len(TS_OFFSETS)))]
                            if rng.random() < 0.7
                            else int(rng.integers(-(2**63), 2**63))
                        )
                        opts += _option(e, 14, struct.pack(e + "q", off))
                if opts:
                    opts += struct.pack(e + "HH", 0, 0)
                out.append(_block(e, 1, struct.pack(e + "HHI", 1, 0, 0) + opts))
                ifaces.append((tsresol, off))
            if_id = int(rng.integers(0, len(ifaces)))
            units = (
                TS_UNITS[int(rng.integers(len(TS_UNITS)))]
                if rng.random() < 0.5
                else int(rng.integers(0, 2**64, dtype=np.uint64))
            )
            data = rng.bytes(int(rng.integers(1, 40)))
            if rng.random() < 0.8:
                head = struct.pack(e + "IIIII", if_id, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
                out.append(_block(e, 6, head + data))
            else:  # obsolete packet block: 16-bit interface id
                head = struct.pack(e + "HHIIII", if_id, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
                out.append(_block(e, 2, head + data))
            expected[frame] = _exact_ns(units, *ifaces[if_id])
            frame += 1
    return b"".join(out), expected


def run_timestamp_fuzz(n_cases: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    overflow = exact = 0
    for case in range(n_cases):
        data, expected = _ts_case(rng)
        reader = CaptureReader(data, window_bytes=int(rng.choice([16, 200, 1 << 20])))
        got = {}
        for raw in reader:
            got.update(zip(raw.frame.tolist(), raw.ts_ns.tolist()))
        want = {f: ns for f, ns in expected.items() if ns is not None}
        assert got == want, f"case {case}: {data.hex()}"
        assert reader.ts_overflow == len(expected) - len(want) and reader.fatal is None and not reader.corrupt_records
        overflow += len(expected) - len(want)
        exact += len(want)
    assert overflow > n_cases // 10 and exact > n_cases  # both outcomes are well covered
    return n_cases


def test_fuzz_pcapng_timestamps():
    assert run_timestamp_fuzz(1500, seed=99) == 1500


@pytest.mark.slow
def test_fuzz_pcapng_timestamps_long():
    assert run_timestamp_fuzz(8000, seed=2026) == 8000


# ----------------------------------------------------------------------------------------------------------------
# Files that shrink while they are read: the records handed out are always a prefix of the file's records, and a
# file that ends early says so.


def run_shrink_fuzz(n_cases: int, seed: int, tmp: Path) -> int:
    rng = np.random.default_rng(seed)
    bases = [b for b, _ in make_bases(rng) if len(b) > 64]
    path = tmp / "shrinking.cap"
    cut_seen = 0
    for case in range(n_cases):
        data = bases[int(rng.integers(0, len(bases)))]
        if rng.random() < 0.3:
            data = mutate(rng, data, [])
        full = read_checked(data, 1 << 20, 65536, 65536)
        if full[0] == "refused":
            continue
        path.write_bytes(data)
        window = int(rng.choice([16, 64, 100, 512, 4096]))
        reader = CaptureReader(path, window_bytes=window, max_records=int(rng.choice([1, 3, 65536])))
        after = int(rng.integers(0, 4))
        new_size = int(rng.integers(0, len(data)))
        if after == 0:
            os.truncate(path, new_size)
        records = []
        for k, raw in enumerate(reader, start=1):
            off, cl = raw.pkt_off, raw.caplen
            assert (off + cl).max() <= raw.buf.shape[0]
            records += [
                (
                    int(raw.frame[i]),
                    int(raw.linktype[i]),
                    int(raw.ts_ns[i]),
                    int(raw.wirelen[i]),
                    raw.buf[off[i] : off[i] + cl[i]].tobytes(),
                )
                for i in range(raw.n)
            ]
            if k == after:
                os.truncate(path, new_size)
        assert records == full[0][: len(records)], f"case {case}: not a prefix"
        fatal = reader.fatal
        if after > 0 and len(records) < len(full[0]):  # (cut before the walk opened it: simply a shorter file)
            assert fatal is not None, f"case {case}: records lost without an error"
        if fatal is not None and "cut short" in fatal.reason:
            # where the data stopped for the reader: the new end, or later when it had read past it already
            assert new_size <= fatal.offset < len(data)
            cut_seen += 1
    assert cut_seen > n_cases // 10
    return n_cases


def test_fuzz_shrinking_files(tmp_path):
    assert run_shrink_fuzz(400, seed=31, tmp=tmp_path) == 400


@pytest.mark.slow
def test_fuzz_shrinking_files_long(tmp_path):
    assert run_shrink_fuzz(3000, seed=32, tmp=tmp_path) == 3000
