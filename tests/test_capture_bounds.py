"""Bounds and recovery of the capture reader: a pcapng block longer than the bound is skipped unread (memory
bounded by the window, not the block), a damaged gzip stream keeps every record decoded before the damage, and
zero-length records are skipped under their own reason, consistently in the report, the summary and the exit code."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import pcap_bytes, pcapng_bytes

from pktnin.cli import app
from pktnin.cli.errors import EXIT_OK
from pktnin.kernels.capture import CaptureReader

REPO = Path(__file__).resolve().parents[1]


def _epb(payload: bytes, if_id: int = 0) -> bytes:
    body = struct.pack("<IIIII", if_id, 0, 0, len(payload), len(payload)) + payload
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def _big_block_capture(big_payload: int) -> tuple[bytes, int]:
    """SHB + IDB + EPB "first" + an EPB of big_payload bytes + EPB "last"; returns (bytes, offset of the big one)."""
    head = pcapng_bytes([{"interfaces": [(1, 6)], "records": [("epb", 0, 0, b"first")]}])
    return head + _epb(bytes(big_payload)) + _epb(b"last"), len(head)


def _read(src, **kw):
    reader = CaptureReader(src, **kw)
    got = [raw.buf[o : o + c].tobytes() for raw in reader for o, c in zip(raw.pkt_off, raw.caplen)]
    return got, reader


@pytest.mark.parametrize("how", ["memory", "file", "gzip", "stdin"])
def test_block_above_the_bound_is_skipped_unread(how, tmp_path, monkeypatch):
    data, big_off = _big_block_capture(4000)
    src: object = data
    if how in ("file", "gzip"):
        src = tmp_path / "big.pcapng"
        src.write_bytes(gzip.compress(data) if how == "gzip" else data)
    elif how == "stdin":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        src = "-"
    got, reader = _read(src, window_bytes=64, max_block_bytes=1024)
    assert got == [b"first", b"last"]
    assert reader.fatal is None and reader.corrupt_records == 1 and reader.frames == 3
    (err,) = reader.errors
    assert err.offset == big_off and "exceeds the 1024-byte bound" in err.reason and "without reading" in err.reason
    # the default bound reads the same block
    got, reader = _read(data, window_bytes=64)
    assert len(got) == 3 and reader.errors == []


def test_stream_ending_inside_a_skipped_block_is_reported(monkeypatch):
    data, big_off = _big_block_capture(4000)
    cut = big_off + 2000
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data[:cut])))
    got, reader = _read("-", window_bytes=64, max_block_bytes=1024)
    assert got == [b"first"]
    assert reader.fatal is not None and reader.fatal.offset == cut and "inside the block skipped" in str(reader.fatal)


def test_oversized_interface_block_keeps_interface_numbering():
    """An IDB above the bound still takes its interface number: packets on it are bad-interface records, the
    interfaces after it keep their ids."""
    idb = lambda link, pad: struct.pack("<IIHHI", 1, 20 + pad, link, 0, 0) + bytes(pad) + struct.pack("<I", 20 + pad)  # noqa: E731
    shb = pcapng_bytes([{}])
    data = shb + idb(1, 2048) + idb(101, 0) + _epb(b"on-0", 0) + _epb(b"on-1", 1)
    got, reader = _read(data, window_bytes=64, max_block_bytes=1024)
    assert got == [b"on-1"] and reader.corrupt_records == 1


PEAK_RSS = textwrap.dedent("""
    import resource, sys
    from pktnin.kernels.capture import CaptureReader
    n = sum(raw.n for raw in CaptureReader(sys.argv[1]))
    print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # KiB -> MiB
""")


def _peak_rss(path: str, stdin=None) -> tuple[int, int]:
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, path], stdin=stdin, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300, check=True)  # fmt: skip
    n, mib = proc.stdout.split()
    return int(n), int(mib)


def test_memory_stays_bounded_by_the_window_not_the_block(tmp_path):
    """A 512 MiB block (sparse file; and through a pipe) costs no more memory than a small file."""
    small = tmp_path / "small.pcapng"
    small.write_bytes(_big_block_capture(100)[0])
    _, base = _peak_rss(str(small))
    head, big_off = _big_block_capture(0)
    big = 512 << 20
    sparse = tmp_path / "sparse.pcapng"
    with open(sparse, "wb") as f:  # the big EPB's header, a hole, its trailer, then "last"
        f.write(head[:big_off] + struct.pack("<IIIIIII", 6, 32 + big, 0, 0, 0, big, big))
        f.seek(big_off + 28 + big)
        f.write(struct.pack("<I", 32 + big) + _epb(b"last"))
    n, sparse_mib = _peak_rss(str(sparse))
    assert n == 2 and sparse_mib < base + 64, (base, sparse_mib)
    with open(sparse, "rb") as f:
        n, pipe_mib = _peak_rss("-", stdin=f)
    assert n == 2 and pipe_mib < base + 64, (base, pipe_mib)


def _gz_case(tmp_path, name: str, blob: bytes) -> tuple[int, CaptureReader]:
    path = tmp_path / f"{name}.pcap.gz"
    path.write_bytes(blob)
    got, reader = _read(path)
    return len(got), reader


def test_damaged_gzip_keeps_every_record_decoded_before_the_damage(tmp_path):
    pkts = [bytes([i % 251]) * 200 for i in range(3000)]
    data = pcap_bytes(pkts)
    gz = gzip.compress(data)
    record = 16 + 200
    n, reader = _gz_case(tmp_path, "cut", gz[: len(gz) // 2])
    decoded = len(zlib.decompressobj(31).decompress(gz[: len(gz) // 2]))  # what zlib itself recovers
    assert n == (decoded - 24) // record and n > 0
    assert "cut short" in reader.fatal.reason and "compressed offset" in reader.fatal.reason
    bad_crc = bytearray(gz)
    bad_crc[-8] ^= 1
    for name, blob, what in [
        ("crc", bytes(bad_crc), "CRC check failed"),
        ("junk", gz + b"junk after it", "junk after a gzip member"),
    ]:
        n, reader = _gz_case(tmp_path, name, blob)
        assert n == len(pkts), name
        assert what in reader.fatal.reason and reader.fatal.offset == len(data), name
    n, reader = _gz_case(tmp_path, "padded", gz + bytes(5000))  # zero padding after the last member is fine
    assert n == len(pkts) and reader.fatal is None
    n, reader = _gz_case(tmp_path, "members", gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    assert n == len(pkts) and reader.fatal is None


def test_zero_length_records_agree_in_report_summary_frame_and_exit_code(tmp_path):
    from typer.testing import CliRunner

    packets = mixed_traffic(4, 40)
    with_empty = [p for pair in zip(packets, [(t, b"") for t, _ in packets]) for p in pair]  # every other is empty
    path = tmp_path / "z.pcap"
    path.write_bytes(pcap_bytes(with_empty))
    model = tiny_model(tmp_path / "tiny.onnx", ["a", "b"])
    out, report, summary = tmp_path / "p.parquet", tmp_path / "r.json", tmp_path / "s.json"
    result = CliRunner().invoke(app, ["score", str(path), "--model", str(model), "--out", str(out), "--report",
                                      str(report), "--summary", str(summary), "--no-progress"])  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert "Files with errors" not in result.output and "zero-length" in result.output
    (row,) = json.loads(report.read_text())
    assert row["status"] == "ok" and row["error"] is None and row["error_offset"] is None
    assert row["corrupt_records"] == 0 and row["records"] == len(with_empty)
    assert row["skips"]["zero-length"] == len(packets)
    s = json.loads(summary.read_text())
    assert s["skipped_packets"]["zero-length"] == len(packets) and s["files_with_errors"] == []
    frames = pq.read_table(out, columns=["frame"]).column("frame").to_pylist()
    assert max(frames) < row["records"] and all(f % 2 == 0 for f in frames)


def test_damaged_zstd_is_an_error_of_the_file_keeping_what_was_decoded(tmp_path):
    """A bad checksum or junk after a frame is the file's error (no exception out of the reader), and the records
    decoded before it are kept but for at most one read of ZSTD_PIECE decoded bytes."""
    zstandard = pytest.importorskip("zstandard")
    from pktnin.kernels.streams import ZSTD_PIECE

    pkts = [bytes([i % 251]) * 200 for i in range(3000)]
    zs = zstandard.ZstdCompressor(write_checksum=True).compress(pcap_bytes(pkts))
    record = 16 + 200
    bad_sum = bytearray(zs)
    bad_sum[-2] ^= 1
    for name, blob, what in [("sum", bytes(bad_sum), "checksum"), ("junk", zs + b"junk after it", "frame")]:
        n, reader = _gz_case(tmp_path, name, blob)
        assert len(pkts) - ZSTD_PIECE // record - 1 <= n < len(pkts), name
        assert "zstd data cut short or damaged" in reader.fatal.reason and what in reader.fatal.reason, name
    n, reader = _gz_case(tmp_path, "cut", zs[: len(zs) // 2])
    decoded = len(zstandard.ZstdDecompressor().decompressobj().decompress(zs[: len(zs) // 2]))
    assert n == (decoded - 24) // record and reader.fatal is not None
