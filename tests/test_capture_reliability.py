"""The capture reader under hostile conditions: files cut short while read, extreme pcapng timestamps, cut headers."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pcapgen import pcap_bytes, pcapng_bytes

from pktnin.kernels.capture import CaptureError, CaptureReader
from pktnin.layout import SKIP_REASONS, SKIP_TS_OVERFLOW
from pktnin.packets import iter_packets, iter_raw_batches

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
REPO = Path(__file__).resolve().parents[1]


def _truncate_in_child(path: Path, size: int) -> None:
    subprocess.run(
        [sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], int(sys.argv[2]))", str(path), str(size)],
        check=True,
    )


def _records(reader):
    out = []
    for raw in reader:
        for i in range(raw.n):
            o, c = int(raw.pkt_off[i]), int(raw.caplen[i])
            out.append((int(raw.frame[i]), int(raw.ts_ns[i]), raw.buf[o : o + c].tobytes()))
    return out


# ----------------------------------------------------------------------------------------------------------------
# A capture that shrinks while it is read


def _big_pcap(tmp_path, n=400, size=200) -> tuple[Path, list[bytes]]:
    pkts = [bytes([i % 251]) * size for i in range(n)]
    path = tmp_path / "shrinking.pcap"
    path.write_bytes(pcap_bytes(pkts))
    return path, pkts


def test_file_cut_short_between_windows_keeps_rows_before(tmp_path):
    path, pkts = _big_pcap(tmp_path)
    reader = CaptureReader(path, window_bytes=8192, max_records=8)
    got = []
    cut = 24 + 100 * 216 + 50  # inside record 100, well past the first window
    for raw in reader:
        if not got:  # the reader has started: another process cuts the file
            _truncate_in_child(path, cut)
        got += [raw.buf[o : o + c].tobytes() for o, c in zip(raw.pkt_off, raw.caplen)]
    assert got == pkts[: len(got)] and 30 < len(got) <= 100
    assert reader.fatal is not None and reader.fatal.offset <= cut
    assert "file cut short at offset" in reader.fatal.reason and f"{len(pcap_bytes(pkts))} bytes" in reader.fatal.reason
    # every record that lies whole before the point where the data ended is kept
    ended = reader.fatal.offset
    assert len(got) == sum(1 for i in range(len(pkts)) if 24 + (i + 1) * 216 <= ended)


def test_file_cut_inside_the_window_being_walked_does_not_crash(tmp_path):
    # One window holds the whole file and the walk hands it out 4 records at a time; the file is cut to a few
    # bytes after the first batch. A memory map would fault (SIGBUS) on the next batch; run in a child so that a
    # crash shows as a failure instead of killing the test run.
    path, pkts = _big_pcap(tmp_path)
    code = textwrap.dedent(f"""
        import os, subprocess, sys
        from pktnin.kernels.capture import CaptureReader
        reader = CaptureReader({str(path)!r}, max_records=4)
        n = 0
        for raw in reader:
            if n == 0:
                subprocess.run([sys.executable, "-c", "import os; os.truncate({str(path)!r}, 30)"], check=True)
            n += raw.n
        print(n, reader.fatal)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = int(proc.stdout.split()[0])
    assert n == len(pkts)  # the window was read before the cut: its bytes are whole and consistent


def test_file_cut_reported_by_iter_packets_and_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(CaptureReader.__init__, "__defaults__", (4096, 65536))  # small windows: many reads
    path, _ = _big_pcap(tmp_path)
    other = tmp_path / "z-next.pcap"
    other.write_bytes(pcap_bytes([b"\x00" * 60]))
    reports = []
    seen = 0
    for report, raw in iter_raw_batches([path, other], max_records=16):
        if raw is not None and report.index == 0 and seen == 0:
            os.truncate(path, 24 + 216 * 30)  # past the first window; the cut shows on a later one
        seen += 1
        if raw is None:
            reports.append(report)
    first, second = reports
    assert first.stopped_early and not first.failed and first.status == "partial"
    assert any("file cut short at offset" in e for e in first.errors)
    assert second.status == "ok" and second.records == 1


def test_score_cli_reports_a_file_cut_short_mid_run(tmp_path):
    """`pktnin score` over a file that is truncated while it is read exits cleanly and names the cut."""
    from onnx_fixtures import tiny_model
    from packetgen import mixed_traffic

    path = tmp_path / "shrinking.pcap"
    path.write_bytes(pcap_bytes(mixed_traffic(3, 600, max_payload=600)))
    model = tiny_model(tmp_path / "tiny.onnx", ["a", "b"])
    out = tmp_path / "out.parquet"
    # The child truncates the capture when the reader asks for its second window (small windows make many).
    code = textwrap.dedent(f"""
        import os, sys
        from pktnin.kernels import capture
        capture.CaptureReader.__init__.__defaults__ = (4096, 65536)
        original = capture._FileSource.window
        def window(self, off, length):
            if off > 0 and not getattr(window, "done", False):
                window.done = True
                os.truncate({str(path)!r}, off + 1000)
            return original(self, off, length)
        capture._FileSource.window = window
        from pktnin.cli import app
        sys.argv = ["pktnin", "score", {str(path)!r}, "--model", {str(model)!r}, "--out", {str(out)!r},
                    "--no-progress"]
        app()
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="250"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 3, text[-3000:]  # the run finished; an input was cut short
    assert "file cut short at offset" in text and "Traceback" not in text
    import pyarrow.parquet as pq

    rows = pq.read_table(out).num_rows
    assert 0 < rows < 600


# ----------------------------------------------------------------------------------------------------------------
# pcapng timestamps against exact integer arithmetic


def exact_ns(units: int, tsresol: int, tsoffset_s: int) -> int | None:
    """Python-int reference: floor(units * unit) in ns plus the offset; None when outside int64."""
    if tsresol & 0x80:
        ns = (units * 10**9) >> (tsresol & 0x7F)
    else:
        ns = units * 10**9 // 10**tsresol
    ns += tsoffset_s * 10**9
    return ns if INT64_MIN <= ns <= INT64_MAX else None


def _epb(e, if_id, units, data=b"\x00" * 4):
    head = struct.pack(e + "IIIII", if_id, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
    body = head + data + b"\0" * (-len(data) % 4)
    return struct.pack(e + "II", 6, 12 + len(body)) + body + struct.pack(e + "I", 12 + len(body))


UNITS = [
    0,
    1,
    999,
    10**9 - 1,
    10**9,
    2**32 - 1,
    2**32,
    1_700_000_000 * 10**6,
    2**62 + 12345,
    2**63 - 1,
    2**63,
    2**63 + 1,
    2**64 - 2,
    2**64 - 1,
]
OFFSETS = [
    0,
    1,
    -1,
    1_700_000_000,
    -1_700_000_000,
    9_223_372_035,
    9_223_372_036,
    9_223_372_037,
    -9_223_372_036,
    -9_223_372_037,
    -9_223_372_038,
    2**62,
    -(2**62),
    INT64_MAX,
    INT64_MIN,
]


def _check_resolution(tsresol: int, big: bool, rng) -> int:
    """One section per offset, every UNITS value plus random ones; returns the number of out-of-range records."""
    e = ">" if big else "<"
    units = UNITS + [int(x) for x in rng.integers(0, 2**64, 6, dtype=np.uint64)]
    sections = []
    expected = []
    for off in OFFSETS:
        recs = [("raw", _epb(e, 0, u)) for u in units]
        sections.append({"big_endian": big, "interfaces": [(1, tsresol, off)], "records": recs})
        expected += [exact_ns(u, tsresol, off) for u in units]
    reader = CaptureReader(pcapng_bytes(sections))
    got = {}
    for raw in reader:
        got.update(zip(raw.frame.tolist(), raw.ts_ns.tolist()))
    want = {i: ns for i, ns in enumerate(expected) if ns is not None}
    assert got == want, f"if_tsresol 0x{tsresol:02x}: {sorted(set(got.items()) ^ set(want.items()))[:5]}"
    overflow = len(expected) - len(want)
    assert reader.ts_overflow == overflow and reader.corrupt_records == 0
    if overflow:
        assert any("outside int64 nanoseconds" in str(err) for err in reader.errors)
    return overflow


def test_every_if_tsresol_byte_is_exact_or_flagged():
    rng = np.random.default_rng(13)
    flagged = 0
    for tsresol in range(256):
        flagged += _check_resolution(tsresol, big=bool(tsresol % 2), rng=rng)
    assert flagged > 0  # the extreme values do leave the int64 range


def test_ts_overflow_is_a_skip_reason_in_reports(tmp_path):
    path = tmp_path / "overflow.pcapng"
    frame = bytes(12) + b"\x08\x00" + bytes(46)  # Ethernet, IPv4 (malformed body: skipped, but counted)
    path.write_bytes(
        pcapng_bytes(
            [
                {
                    "interfaces": [(1, 0)],
                    "records": [("raw", _epb("<", 0, 2**40, frame)), ("raw", _epb("<", 0, 5, frame))],
                }
            ]
        )
    )
    reports = []
    list(iter_packets([path], reports=reports))
    (report,) = reports
    assert SKIP_REASONS[SKIP_TS_OVERFLOW] == "ts-overflow"
    assert report.skip_counts.get("ts-overflow") == 1
    assert report.records == 2 and report.kept + sum(report.skip_counts.values()) == report.records
    assert any("outside int64 nanoseconds" in e for e in report.errors)


# ----------------------------------------------------------------------------------------------------------------
# A classic pcap whose file header is cut


@pytest.mark.parametrize("n", range(4, 24))
def test_truncated_pcap_file_header_fails_the_file(tmp_path, n):
    # Nothing of such a file is readable: it fails, it is not "partial".
    data = pcap_bytes([(0, b"x" * 30)])[:n]
    with pytest.raises(CaptureError) as err:
        CaptureReader(data)
    assert err.value.offset == 0 and f"truncated file header: {n} of 24 bytes" in err.value.reason
    path = tmp_path / "cut.pcap"
    path.write_bytes(data)
    ((report, _),) = [item for item in iter_raw_batches([path]) if item[1] is None]
    assert report.failed and report.status == "failed" and "truncated file header" in report.errors[0]
