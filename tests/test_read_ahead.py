"""The record walk on a thread of its own (packets.read_ahead): same batches, errors passed on, stops with its consumer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pktnin.kernels.capture import CaptureReader
from pktnin.packets import iter_packets, iter_raw_batches, read_ahead
from pktnin.synth import write_synthetic_capture


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pktnin-read"]


def test_items_in_order_and_producer_error_after_them():
    def items(stopped):
        yield from range(5)
        raise RuntimeError("walk failed")

    got = []
    with pytest.raises(RuntimeError, match="walk failed"):
        for x in read_ahead(items, depth=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
    assert not _reader_threads()


def test_consumer_that_stops_early_stops_the_producer():
    produced = []

    def items(stopped):
        for i in range(10_000):
            if stopped():
                return
            produced.append(i)
            yield i

    gen = read_ahead(items, depth=2)
    assert next(gen) == 0
    gen.close()
    assert not _reader_threads()
    assert len(produced) <= 4  # one taken, two queued, one waiting to be put when the consumer left


def test_held_windows_are_never_overwritten_by_the_walk_ahead(tmp_path, monkeypatch):
    """Batches kept by the consumer keep their bytes while the walk reads further windows (small windows: many)."""
    monkeypatch.setattr(CaptureReader.__init__, "__defaults__", (8192, 65536))
    capture = write_synthetic_capture(tmp_path / "cap.pcap", packets=3000, seed=11)
    plain = [(r.index, bytes(raw.buf[raw.pkt_off[0] : raw.pkt_off[-1] + raw.caplen[-1]]))
             for r, raw in iter_raw_batches([capture], max_records=100) if raw is not None]  # fmt: skip
    held = []
    for report, raw in read_ahead(lambda stopped: iter_raw_batches([capture], max_records=100, should_stop=stopped)):
        if raw is not None:
            held.append((report.index, raw))
        time.sleep(0.0005)  # let the walk run ahead
    assert len(held) == len(plain) > 20
    for (index, raw), (index2, data) in zip(held, plain, strict=True):
        assert index == index2 and bytes(raw.buf[raw.pkt_off[0] : raw.pkt_off[-1] + raw.caplen[-1]]) == data


@pytest.mark.parametrize("threads", [2, 3])
def test_iter_packets_with_the_walk_on_its_own_thread_matches_one_thread(tmp_path, threads):
    files = [write_synthetic_capture(tmp_path / f"c{i}.pcap", packets=2500, seed=i) for i in range(3)]
    one_reports: list = []
    one = list(iter_packets(files, max_records=700, threads=1, reports=one_reports))
    reports: list = []
    rows, meta = [], []
    for batch in iter_packets(files, max_records=700, threads=threads, reuse_rows=True, reports=reports):
        rows.append(batch.rows.copy())
        meta.append({k: v.copy() for k, v in batch.meta.items()})
    assert np.array_equal(np.concatenate(rows), np.concatenate([b.rows for b in one]))
    for key in ("frame", "ts_ns", "src_port", "dst_port", "flow_key"):
        assert np.array_equal(np.concatenate([m[key] for m in meta]), np.concatenate([b.meta[key] for b in one]))
    assert [(r.index, r.records, r.kept) for r in reports] == [(r.index, r.records, r.kept) for r in one_reports]
    assert not _reader_threads()


def test_iter_packets_reports_a_bad_file_and_goes_on_with_the_walk_ahead(tmp_path):
    good = write_synthetic_capture(tmp_path / "a.pcap", packets=500, seed=1)
    bad = tmp_path / "b.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 40)  # a pcap header, then garbage
    after = write_synthetic_capture(tmp_path / "c.pcap", packets=500, seed=2)
    reports: list = []
    kept = sum(len(b) for b in iter_packets([good, bad, after], threads=2, reports=reports))
    assert [r.path for r in reports] == [good, bad, after]
    assert reports[0].records == 500 and reports[2].records == 500
    assert reports[1].errors and kept == reports[0].kept + reports[2].kept
