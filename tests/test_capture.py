"""Capture reader: formats, fields, windowing, frame numbering, bad input, the shared corpus."""

from __future__ import annotations

import struct

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pcapgen import (
    ns_of,
    pcap_bytes,
    pcap_record_offsets,
    pcapng_bytes,
    units_of,
    write_pcap,
    write_pcapng,
)

from pktnin.kernels.capture import (
    MAX_RECORD_LEN,
    CaptureError,
    CaptureReader,
    NotACapture,
    RawBatch,
    detect_format,
)


def read_all(src, **kw):
    """All records of a capture as a list of (frame, linktype, ts_ns, wirelen, bytes), and the reader."""
    reader = CaptureReader(src, **kw)
    out = []
    for raw in reader:
        assert isinstance(raw, RawBatch)
        assert raw.n <= reader.max_records
        assert raw.pkt_off.dtype == np.int64 and raw.caplen.dtype == np.int32 and raw.wirelen.dtype == np.int32
        assert raw.linktype.dtype == np.int32 and raw.ts_ns.dtype == np.int64 and raw.frame.dtype == np.int64
        assert np.all(raw.pkt_off + raw.caplen <= raw.buf.shape[0])
        for i in range(raw.n):
            data = bytes(raw.buf[raw.pkt_off[i] : raw.pkt_off[i] + raw.caplen[i]])
            out.append((int(raw.frame[i]), int(raw.linktype[i]), int(raw.ts_ns[i]), int(raw.wirelen[i]), data))
    assert reader.records == len(out)
    return out, reader


def random_packets(rng, n, max_len=1600):
    return [rng.integers(0, 256, int(rng.integers(1, max_len)), dtype=np.uint8).tobytes() for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Detection


def test_detect_format_by_magic_not_name(tmp_path):
    pkts = [b"\x01\x02\x03"]
    for nano in (False, True):
        for big in (False, True):
            data = pcap_bytes(pkts, nanosecond=nano, big_endian=big)
            p = tmp_path / f"x{nano}{big}.pcapng"  # the name lies
            p.write_bytes(data)
            assert detect_format(p) == "pcap"
            assert detect_format(data) == "pcap"
    for big in (False, True):
        data = pcapng_bytes([{"big_endian": big, "interfaces": [(1, None)], "records": []}])
        p = tmp_path / f"y{big}.pcap"
        p.write_bytes(data)
        assert detect_format(p) == "pcapng"
    assert detect_format(b"") is None
    assert detect_format(b"\xd4\xc3") is None
    assert detect_format(b"GET / HTTP/1.1\r\n\r\n") is None
    bad_bom = bytearray(pcapng_bytes([{"interfaces": [], "records": []}]))
    bad_bom[8:12] = b"\0\0\0\0"
    assert detect_format(bytes(bad_bom)) is None


# ---------------------------------------------------------------------------------------------------------------
# Classic pcap


@pytest.mark.parametrize("nanosecond", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
def test_pcap_fields(tmp_path, nanosecond, big_endian):
    rng = np.random.default_rng(1)
    data = random_packets(rng, 300)
    ts = [1_600_000_000_123_456_789 + i * 1_234_567 for i in range(300)]
    pkts = []
    for i, (t, d) in enumerate(zip(ts, data)):
        wirelen = len(d) + (i % 3) * 100 if i % 7 else max(1, len(d) - 1)  # caplen > wirelen is tolerated
        pkts.append((t, d, wirelen))
    path = write_pcap(
        tmp_path / "f.cap", pkts, linktype=113, nanosecond=nanosecond, big_endian=big_endian, snaplen=1600
    )
    got, reader = read_all(path, window_bytes=4096, max_records=37)
    assert reader.format == "pcap" and reader.fatal is None and reader.errors == []
    assert reader.corrupt_records == 0 and reader.frames == 300
    assert len(got) == 300
    for i, (frame, link, ts_ns, wirelen, payload) in enumerate(got):
        want_ts = ts[i] if nanosecond else ts[i] // 1000 * 1000
        assert (frame, link, ts_ns, wirelen, payload) == (i, 113, want_ts, pkts[i][2], data[i])


def test_pcap_linktype_fcs_bits_masked():
    data = pcap_bytes([b"abcd"], linktype=1 | 0x10000000 | 0x04000000 | 0x00FF0000)
    got, _ = read_all(data)
    assert got[0][1] == 1


def test_pcap_matches_dpkt(tmp_path):
    rng = np.random.default_rng(2)
    pkts = [(1_500_000_000_000_000_000 + i * 999_000, d) for i, d in enumerate(random_packets(rng, 500))]
    path = write_pcap(tmp_path / "d.pcap", pkts)
    got, _ = read_all(path, window_bytes=4096)
    with open(path, "rb") as f:
        ref = list(dpkt.pcap.Reader(f))
    assert len(ref) == len(got)
    for (_, _, ts_ns, _, payload), (ts, buf) in zip(got, ref):
        assert payload == buf
        assert round(float(ts) * 1e6) == ts_ns // 1000


def test_small_and_normal_windows_agree(tmp_path):
    rng = np.random.default_rng(3)
    pkts = random_packets(rng, 2000, max_len=3000)
    pkts[500] = bytes(200_000)  # larger than the small window: it must grow for this record
    pkts[1500] = bytes(MAX_RECORD_LEN)  # exactly the limit is allowed
    path = write_pcap(tmp_path / "w.pcap", pkts, snaplen=MAX_RECORD_LEN)
    big, r1 = read_all(path)
    small, r2 = read_all(path, window_bytes=4096, max_records=7)
    tiny, r3 = read_all(path, window_bytes=1, max_records=1)
    assert big == small == tiny
    assert [g[4] for g in big] == pkts
    assert r1.frames == r2.frames == r3.frames == 2000


def test_batches_kept_past_their_window_stay_valid(tmp_path):
    # The reader releases each window when it moves on; batches the caller still holds must keep their bytes.
    rng = np.random.default_rng(6)
    pkts = random_packets(rng, 400)
    path = write_pcap(tmp_path / "keep.pcap", pkts)
    batches = list(CaptureReader(path, window_bytes=8192))
    assert len({id(raw.buf) for raw in batches}) > 10
    got = [raw.buf[o : o + c].tobytes() for raw in batches for o, c in zip(raw.pkt_off, raw.caplen)]
    assert got == pkts


def test_max_records_bounds_batches():
    data = pcap_bytes([b"x"] * 1000)
    reader = CaptureReader(data, max_records=64)
    sizes = [raw.n for raw in reader]
    assert sum(sizes) == 1000 and max(sizes) == 64


def test_reiteration_restarts():
    reader = CaptureReader(pcap_bytes([b"ab", b"", b"cd"]))
    first = [bytes(r.frame) for r in reader]
    assert reader.records == 2 and reader.corrupt_records == 1
    second = [bytes(r.frame) for r in reader]
    assert first == second and reader.records == 2 and reader.corrupt_records == 1


# ---------------------------------------------------------------------------------------------------------------
# pcapng

NG_SECTIONS = [
    {
        "big_endian": False,
        "interfaces": [(1, None), (113, 9), (101, 0x80 | 20, 7)],
        "records": [
            ("epb", 0, 1_600_000_000_123_456_789, b"eth-0"),
            ("epb", 1, 1_600_000_000_123_456_789, b"sll-1", 99),
            ("unknown", 0xBAD, b"ignored"),
            ("epb", 2, 1_600_000_001_000_000_000, b"raw-2"),
            ("spb", b"simple", 10),  # wirelen above the body: caplen = body
            ("opb", 1, 1_600_000_002_000_000_001, b"opb-1"),
            ("unknown", 5, b"isb-like stats block"),
            ("idb", 228, 3),
            ("epb", 3, 1_600_000_003_999_999_999, b"ipv4-3"),
            ("spb", b"abc", 2),  # wirelen below the body: caplen = wirelen
        ],
    },
    {
        "big_endian": True,
        "interfaces": [(276, 12), (0, None)],  # ids restart at 0 in a new section
        "records": [
            ("epb", 0, 1_000_000_123_456_789, b"sll2"),  # picoseconds: 2^64 units is only 213 days
            ("opb", 1, 1_700_000_000_000_001_000, b"null"),
            ("epb", 1, 1_700_000_000_000_002_000, b"n" * 1000),
            ("spb", b"big-endian simple"),
        ],
    },
    {"big_endian": False, "interfaces": [], "records": [("unknown", 0x40000BAD, b"")]},  # no packets at all
    {"big_endian": True, "interfaces": [(108, 0x80 | 40)], "records": [("epb", 0, 12_345_678_901, b"loop")]},
]


def expected_pcapng(sections):
    """(frame, linktype, ts_ns, wirelen, bytes) of every packet record, computed from the section specs."""
    out, frame = [], 0
    for sec in sections:
        ifaces = list(sec["interfaces"])
        for rec in sec["records"]:
            kind = rec[0]
            if kind == "idb":
                ifaces.append(rec[1:])
            elif kind in ("epb", "opb"):
                link, tsresol = ifaces[rec[1]][0], ifaces[rec[1]][1]
                tsoff = ifaces[rec[1]][2] if len(ifaces[rec[1]]) > 2 else 0
                wirelen = rec[4] if len(rec) > 4 else len(rec[3])
                ts = ns_of(units_of(rec[2], tsresol), tsresol, tsoff)
                out.append((frame, link, ts, wirelen, rec[3]))
                frame += 1
            elif kind == "spb":
                body_len = len(rec[1]) + (-len(rec[1]) % 4)
                wirelen = rec[2] if len(rec) > 2 else len(rec[1])
                data = (rec[1] + bytes(body_len - len(rec[1])))[: min(wirelen, body_len)]
                out.append((frame, ifaces[0][0], 0, wirelen, data))
                frame += 1
    return out


@pytest.mark.parametrize("window_bytes,max_records", [(64 << 20, 65536), (4096, 3), (1, 1)])
def test_pcapng_fields(tmp_path, window_bytes, max_records):
    path = write_pcapng(tmp_path / "multi.pcap", NG_SECTIONS)
    got, reader = read_all(path, window_bytes=window_bytes, max_records=max_records)
    assert reader.format == "pcapng" and reader.fatal is None and reader.errors == []
    want = expected_pcapng(NG_SECTIONS)
    assert got == want
    assert reader.frames == len(want) == 12


def test_pcapng_timestamp_resolutions():
    for tsresol in (None, 0, 3, 6, 9, 12, 15, 0x80, 0x80 | 10, 0x80 | 30, 0x80 | 40, 0x80 | 60):
        ts = 1_650_000_000_987_654_321
        while units_of(ts, tsresol) >= 2**64:  # the largest timestamp the resolution can hold
            ts //= 7
        sec = [{"interfaces": [(1, tsresol)], "records": [("epb", 0, ts, b"x")]}]
        got, _ = read_all(pcapng_bytes(sec))
        assert got[0][2] == ns_of(units_of(ts, tsresol), tsresol), tsresol
        assert abs(got[0][2] - ts) <= 1_000_000_000  # sanity: the same second


def test_pcapng_many_packets_windows_agree(tmp_path):
    rng = np.random.default_rng(4)
    recs = []
    for i, d in enumerate(random_packets(rng, 3000, max_len=2000)):
        kind = ("epb", "opb", "spb")[i % 3]
        recs.append(("spb", d) if kind == "spb" else (kind, i % 2, 1_000_000_000 * i + i, d))
        if i % 500 == 0:
            recs.append(("unknown", 0x0BAD, bytes(100_000)))  # larger than a small window
    sections = [
        {"interfaces": [(1, 9), (113, None)], "records": recs[:1500]},
        {"big_endian": True, "interfaces": [(1, 6), (101, 9)], "records": recs[1500:]},
    ]
    path = write_pcapng(tmp_path / "many.pcapng", sections)
    big, _ = read_all(path)
    small, _ = read_all(path, window_bytes=4096, max_records=100)
    assert big == small == expected_pcapng(sections)


def test_pcapng_matches_dpkt_single_interface(tmp_path):
    rng = np.random.default_rng(5)
    recs = [("epb", 0, 1_600_000_000_000_000_000 + i * 1000, d) for i, d in enumerate(random_packets(rng, 200))]
    path = write_pcapng(tmp_path / "one.pcapng", [{"interfaces": [(1, None)], "records": recs}])
    got, _ = read_all(path)
    with open(path, "rb") as f:
        ref = list(dpkt.pcapng.Reader(f))
    assert [g[4] for g in got] == [buf for _, buf in ref]


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_empty_and_text_files_are_not_captures(tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(NotACapture) as e:
        CaptureReader(empty)
    assert e.value.offset == 0 and "empty.pcap: offset 0: empty file" in str(e.value)
    text = tmp_path / "notes.pcap"
    text.write_text("this is not a capture\n" * 10)
    with pytest.raises(NotACapture) as e:
        CaptureReader(text)
    assert e.value.offset == 0 and e.value.path == str(text) and "not a pcap or pcapng" in e.value.reason
    with pytest.raises(CaptureError):
        CaptureReader(tmp_path / "missing.pcap")


@pytest.mark.parametrize("cut", [3, 10, 10 + 5])  # into the data, all data, into the header
def test_truncated_last_record_keeps_good_ones(tmp_path, cut):
    pkts = [bytes([i]) * 10 for i in range(5)]
    data = pcap_bytes(pkts)
    path = tmp_path / "capture.pcap"
    path.write_bytes(data[: len(data) - cut])
    got, reader = read_all(path, window_bytes=4096)
    assert [g[4] for g in got] == pkts[:4]
    last = pcap_record_offsets(pkts)[4]
    assert reader.fatal is not None and reader.fatal.offset == last
    assert reader.errors == [reader.fatal]
    assert str(reader.fatal).startswith(f"capture.pcap: offset {last}: truncated record")


def test_record_length_above_limit_is_fatal(tmp_path):
    pkts = [bytes([i]) * 20 for i in range(6)]
    data = bytearray(pcap_bytes(pkts))
    off = pcap_record_offsets(pkts)[3]
    data[off + 8 : off + 12] = struct.pack("<I", 300000)
    path = tmp_path / "capture.pcap"
    path.write_bytes(bytes(data))
    got, reader = read_all(path)
    assert [g[4] for g in got] == pkts[:3]
    assert str(reader.fatal) == f"capture.pcap: offset {off}: record length 300000 exceeds 262144"
    assert (reader.fatal.path, reader.fatal.offset) == (str(path), off)


def test_record_length_beyond_file_is_fatal():
    pkts = [b"a" * 30, b"b" * 30, b"c" * 30]
    data = bytearray(pcap_bytes(pkts))
    off = pcap_record_offsets(pkts)[1]
    data[off + 8 : off + 12] = struct.pack("<I", 5000)
    got, reader = read_all(bytes(data))
    assert [g[4] for g in got] == pkts[:1]
    assert reader.fatal.offset == off and "record length 5000" in reader.fatal.reason


def test_zero_length_records_are_counted_once(tmp_path):
    pkts = [b"one", b"", b"two", b"", b"", b"three"]
    path = write_pcap(tmp_path / "z.pcap", pkts, big_endian=True)
    got, reader = read_all(path)
    assert [(g[0], g[4]) for g in got] == [(0, b"one"), (2, b"two"), (5, b"three")]
    assert reader.corrupt_records == 3 and reader.fatal is None and reader.frames == 6
    (err,) = reader.errors
    assert err.offset == pcap_record_offsets(pkts)[1] and "zero-length record" in err.reason and "3" in err.reason


def _block(btype, body, big=False, length=None, trailer=None):
    e = ">" if big else "<"
    body = body + b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return (
        struct.pack(e + "II", btype, n if length is None else length)
        + body
        + struct.pack(e + "I", n if trailer is None else trailer)
    )


GOOD_NG = [{"interfaces": [(1, None)], "records": [("epb", 0, 1000, b"good-1"), ("epb", 0, 2000, b"good-2")]}]


@pytest.mark.parametrize(
    "bad,reason",
    [
        (_block(0xBAD, b"x" * 8, length=8), "block length 8 is less than 12"),
        (_block(0xBAD, b"x" * 8, length=22), "block length 22 is not a multiple of 4"),
        (_block(0xBAD, b"x" * 8, length=400), "block length 400 goes beyond the end of the file"),
        (_block(0xBAD, b"x" * 8, trailer=24), "trailing block length 24 does not match the block length 20"),
        (_block(6, b"x" * 8)[:10], "truncated block header"),
        (_block(0x0A0D0D0A, struct.pack("<IHHq", 0x11223344, 1, 0, -1)), "bad byte-order magic 0x11223344"),
        (_block(0x0A0D0D0A, b"\x4d\x3c\x2b\x1a", length=16), "block length 16 is less than 28"),
    ],
)
def test_pcapng_impossible_blocks_are_fatal(tmp_path, bad, reason):
    good = pcapng_bytes(GOOD_NG)
    tail = (
        b""
        if "truncated" in reason
        else pcapng_bytes([{"interfaces": [(1, None)], "records": [("epb", 0, 3000, b"after")]}])
    )
    path = tmp_path / "capture.pcapng"
    path.write_bytes(good + bad + tail)
    for window in (64 << 20, 4096):
        got, reader = read_all(path, window_bytes=window)
        assert [g[4] for g in got] == [b"good-1", b"good-2"]
        assert reader.fatal.offset == len(good), reader.fatal
        assert reason in reader.fatal.reason and str(reader.fatal).startswith(f"capture.pcapng: offset {len(good)}:")


def test_pcapng_truncated_last_block(tmp_path):
    data = pcapng_bytes(GOOD_NG)
    got, reader = read_all(data[:-6])
    assert [g[4] for g in got] == [b"good-1"]
    assert reader.fatal.offset == len(data) - 32 - 8 and "goes beyond the end of the file" in reader.fatal.reason


def test_pcapng_corrupt_records_are_skipped():
    e = "<"
    epb_long = _block(6, struct.pack(e + "IIIII", 0, 0, 0, 500, 500) + b"short body")  # caplen > block
    epb_noif = _block(6, struct.pack(e + "IIIII", 7, 0, 0, 3, 3) + b"abc")  # undefined interface
    opb_noif = _block(2, struct.pack(e + "HHIIII", 9, 0, 0, 0, 3, 3) + b"abc")
    epb_short = _block(6, b"\0" * 8)  # too short for the EPB fields
    epb_zero = _block(6, struct.pack(e + "IIIII", 0, 0, 0, 0, 0))
    idb_short = _block(1, b"")  # defines interface 1 as unusable
    epb_if1 = _block(6, struct.pack(e + "IIIII", 1, 0, 0, 3, 3) + b"abc")
    spb_noif = pcapng_bytes([{"interfaces": [], "records": [("spb", b"lonely")]}])
    head = pcapng_bytes(GOOD_NG)
    tail = _block(6, struct.pack(e + "IIIII", 0, 0, 5, 4, 4) + b"last")
    data = head + epb_long + epb_noif + opb_noif + epb_short + epb_zero + idb_short + epb_if1 + tail + spb_noif
    got, reader = read_all(data, window_bytes=64)
    assert [(g[0], g[4]) for g in got] == [(0, b"good-1"), (1, b"good-2"), (8, b"last")]
    assert reader.fatal is None and reader.corrupt_records == 7 and reader.frames == 10
    offs = {}
    pos = len(head)
    for name, blk in [
        ("long", epb_long),
        ("noif", epb_noif),
        ("opb", opb_noif),
        ("short", epb_short),
        ("zero", epb_zero),
        ("idb", idb_short),
    ]:
        offs[name] = pos
        pos += len(blk)
    errs = {e.offset: e.reason for e in reader.errors}
    assert "captured length 500 exceeds its block" in errs[offs["long"]]
    assert "undefined interface 7" in errs[offs["noif"]] and "first of 4" in errs[offs["noif"]]
    assert "packet block length 20 is too short" in errs[offs["short"]]
    assert "zero-length record" in errs[offs["zero"]]
    assert "interface description block length 12 is too short" in errs[offs["idb"]]
    assert len(reader.errors) == 5


def test_pcapng_oversized_record_is_skipped():
    e = "<"
    huge = _block(6, struct.pack(e + "IIIII", 0, 0, 0, 300000, 300000) + bytes(300000))  # framing intact
    after = _block(6, struct.pack(e + "IIIII", 0, 0, 0, 5, 5) + b"after")
    head = pcapng_bytes(GOOD_NG)
    got, reader = read_all(head + huge + after, window_bytes=4096)
    assert [(g[0], g[4]) for g in got] == [(0, b"good-1"), (1, b"good-2"), (3, b"after")]
    (err,) = reader.errors
    assert err.offset == len(head) and "record length 300000 exceeds 262144" in err.reason
    assert reader.fatal is None and reader.corrupt_records == 1


def test_pcapng_interface_table_capacity():
    sec = [
        {
            "interfaces": [(1, None), (113, None), (101, None)],
            "records": [("epb", 0, 0, b"a"), ("epb", 1, 0, b"b"), ("epb", 2, 0, b"c")],
        }
    ]
    reader = CaptureReader(pcapng_bytes(sec))
    reader.interface_capacity = 2  # interface 2 does not fit: its records count as undefined
    got = [bytes(raw.linktype) for raw in reader]
    assert reader.records == 2 and reader.corrupt_records == 1
    assert np.frombuffer(b"".join(got), np.int32).tolist() == [1, 113]
    assert "undefined interface 2" in reader.errors[0].reason


# ---------------------------------------------------------------------------------------------------------------
# Property test (hypothesis): whatever is written reads back, for any window and batch size.

packet_st = st.tuples(st.integers(0, 2**32 * 10**9 - 1), st.binary(min_size=0, max_size=300))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packet_st, max_size=40), st.booleans(), st.booleans(), st.integers(1, 2048), st.integers(1, 50))
def test_pcap_roundtrip_property(pkts, nano, big, window, max_records):
    data = pcap_bytes(pkts, nanosecond=nano, big_endian=big, linktype=276)
    got, reader = read_all(data, window_bytes=window, max_records=max_records)
    want = [(i, 276, t if nano else t // 1000 * 1000, len(d), d) for i, (t, d) in enumerate(pkts) if d]
    assert got == want
    assert reader.corrupt_records == sum(1 for _, d in pkts if not d) and reader.fatal is None


# ---------------------------------------------------------------------------------------------------------------
# Shared corpus (skipped when absent)


def test_corpus_reads_and_agrees_with_dpkt(corpus_pcaps):
    n_pcap = 0
    for path in sorted(p for p in corpus_pcaps.rglob("*") if p.is_file()):
        if detect_format(path) is None:
            with pytest.raises(NotACapture):
                CaptureReader(path)
            continue
        got, reader = read_all(path, window_bytes=1 << 16)
        if reader.format != "pcap":
            continue
        n_pcap += 1
        with open(path, "rb") as f:
            try:
                ref = list(dpkt.pcap.Reader(f))
            except (dpkt.dpkt.NeedData, ValueError):
                continue
        for frame, _, _, _, payload in got:
            assert ref[frame][1] == payload, (path, frame)
        nonempty = sum(1 for i, (_, buf) in enumerate(ref) if buf and (reader.fatal is None or i < reader.frames))
        assert nonempty == len(got), path
    assert n_pcap > 0
