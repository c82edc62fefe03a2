"""Byte-range capture reading and the index pass: the records of all shards of a file are the file's records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from packetgen import mixed_traffic
from pcapgen import pcap_record_offsets, write_pcap, write_pcapng

from pktnin.kernels.capture import CaptureReader, detect_format
from pktnin.scoring.units import cached_index, index_file, make_units


def records(reader: CaptureReader) -> list[tuple]:
    """Every record the reader yields: (frame, absolute offset, ts, link type, wire length, bytes)."""
    out = []
    for raw in reader:
        for i in range(raw.n):
            off = int(raw.pkt_off[i])
            data = bytes(raw.buf[off : off + int(raw.caplen[i])])
            out.append(
                (int(raw.frame[i]), raw.base + off, int(raw.ts_ns[i]), int(raw.linktype[i]), int(raw.wirelen[i]), data)
            )
    return out


def shard_records(path, split_bytes: int, step_records: int) -> tuple[list[tuple], int, int]:
    """Records of every shard of `path` in order, the shard count, corrupt records summed over shards."""
    out, corrupt = [], 0
    units = make_units([Path(path)], {}, split_bytes, step_records=step_records)
    for unit in units:
        (piece,) = unit.pieces
        reader = CaptureReader(path, max_records=5, window_bytes=4096, **piece.reader_kwargs())
        out += records(reader)
        corrupt += reader.corrupt_records
    return out, len(units), corrupt


def whole(path) -> tuple[list[tuple], int]:
    reader = CaptureReader(path)
    return records(reader), reader.corrupt_records


pytestmark = pytest.mark.usefixtures("private_cache")


def _pcapng_sections(seed: int) -> list[dict]:
    pk = mixed_traffic(seed, 90)
    return [
        {
            "big_endian": False,
            "interfaces": [(1, 6), (1, 9)],
            "records": [("epb", i % 2, ts, d) for i, (ts, d) in enumerate(pk[:30])]
            + [("idb", 1, 0x80 | 20)]
            + [("epb", 2, ts, d) for ts, d in pk[30:40]]
            + [("unknown", 0x99, b"xyz")],
        },
        {
            "big_endian": True,
            "interfaces": [(1, 9)],
            "records": [("epb", 0, ts, d) for ts, d in pk[40:70]]
            + [("spb", d) for _, d in pk[70:75]]
            + [("epb", 5, 0, pk[75][1])],
        },  # an undefined interface: counted corrupt, in whichever shard
        {"big_endian": False, "interfaces": [(1, None)], "records": [("opb", 0, ts, d) for ts, d in pk[76:90]]},
    ]


@pytest.fixture
def captures(tmp_path) -> list[Path]:
    pk = mixed_traffic(3, 120)
    return [
        write_pcap(tmp_path / "le.pcap", pk),
        write_pcap(tmp_path / "be_ns.pcap", pk, big_endian=True, nanosecond=True),
        write_pcapng(tmp_path / "multi.pcapng", _pcapng_sections(4)),
        write_pcapng(
            tmp_path / "be.pcapng",
            [{"big_endian": True, "interfaces": [(1, 9)], "records": [("epb", 0, ts, d) for ts, d in pk]}],
        ),
    ]


@pytest.mark.parametrize("split_bytes,step", [(1, 1), (777, 1), (1500, 3), (4099, 7), (10**6, 1)])
def test_shards_hold_exactly_the_file_records(captures, split_bytes, step):
    for path in captures:
        expect, corrupt = whole(path)
        got, n_shards, got_corrupt = shard_records(path, split_bytes, step)
        assert got == expect, (path.name, split_bytes, step)
        assert got_corrupt == corrupt
        if split_bytes < 2000:
            assert n_shards > 3, path.name


def test_absolute_offsets_and_first_frame(tmp_path):
    pk = mixed_traffic(1, 20)
    path = write_pcap(tmp_path / "a.pcap", pk)
    offs = pcap_record_offsets([d for _, d in pk])
    got = records(CaptureReader(path, max_records=3))
    assert [g[1] for g in got] == [o + 16 for o in offs]  # data follows each 16-byte record header
    # A reader over the records 5..9 numbers them from frame 5 and reports the same offsets.
    part = records(CaptureReader(path, start=offs[5], stop=offs[10], first_frame=5))
    assert part == got[5:10]


def test_reader_offset_and_state_resume_a_pcapng_walk(captures):
    path = captures[2]
    reader = CaptureReader(path, max_records=7)
    it = iter(reader)
    first = records_of_batches([next(it), next(it)])
    offset, frame, state = reader.offset, reader.frames, reader.state()
    rest = records(CaptureReader(path, start=offset, first_frame=frame, state=state))
    assert first + rest == whole(path)[0]


def records_of_batches(batches) -> list[tuple]:
    out = []
    for raw in batches:
        for i in range(raw.n):
            off = int(raw.pkt_off[i])
            out.append(
                (
                    int(raw.frame[i]),
                    raw.base + off,
                    int(raw.ts_ns[i]),
                    int(raw.linktype[i]),
                    int(raw.wirelen[i]),
                    bytes(raw.buf[off : off + int(raw.caplen[i])]),
                )
            )
    return out


def test_a_cut_off_a_record_boundary_is_an_error_not_lost_rows(tmp_path):
    pk = mixed_traffic(2, 10)
    path = write_pcap(tmp_path / "a.pcap", pk)
    offs = pcap_record_offsets([d for _, d in pk])
    reader = CaptureReader(path, start=offs[2], stop=offs[4] + 5, first_frame=2)
    got = records(reader)
    assert len(got) == 2 and reader.fatal is not None and reader.fatal.offset == offs[4]


def test_fatal_error_stays_in_the_last_shard(tmp_path):
    pk = mixed_traffic(5, 40)
    path = write_pcap(tmp_path / "t.pcap", pk)
    with open(path, "ab") as f:
        f.write(b"\x00" * 9)  # a truncated record header at the end
    cuts = index_file(path, 500, step_records=1)
    assert cuts and all(c.offset < os.path.getsize(path) - 9 for c in cuts)
    expect, _ = whole(path)
    got, _, _ = shard_records(path, 500, 1)
    assert got == expect


def test_index_is_cached_per_file_stamp(captures, tmp_path):
    path = captures[0]
    cuts = cached_index(path, 1000, step_records=2)
    cache_files = list((tmp_path / "cache" / "index").iterdir())
    assert len(cache_files) == 1 and cuts
    assert cached_index(path, 1000, step_records=2) == cuts
    os.utime(path, ns=(1, 1))  # a new stamp: a new index, the old entry is not used
    cached_index(path, 1000, step_records=2)
    assert len(list((tmp_path / "cache" / "index").iterdir())) == 2


def test_unit_ids_follow_path_stamp_start_and_settings(captures):
    a = make_units(captures, {"model": "x"}, 3000)
    b = make_units(captures, {"model": "x"}, 3000)
    c = make_units(captures, {"model": "y"}, 3000)
    assert [u.id for u in a] == [u.id for u in b]
    assert not {u.id for u in a} & {u.id for u in c}
    assert len({u.id for u in a}) == len(a)
    indexes = [p.file_index for u in a for p in u.pieces]
    assert indexes == sorted(indexes) and set(indexes) == set(range(len(captures)))


def test_corpus_shards_hold_exactly_the_file_records(corpus_pcaps):
    files = sorted(p for p in corpus_pcaps.rglob("*") if p.is_file())
    assert files
    for path in files:
        if detect_format(path) is None:
            continue  # not a capture: nothing to shard
        expect, corrupt = whole(path)
        split = max(1, os.path.getsize(path) // 5 + 13)  # about five shards at odd offsets
        got, _, got_corrupt = shard_records(path, split, 97)
        assert got == expect, path.name
        assert got_corrupt == corrupt, path.name
