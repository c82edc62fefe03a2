"""bench/make_big_capture.py and bench/profile_prep.py on small generated captures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pcapgen

from pktnin.kernels.capture import CaptureReader

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from make_big_capture import make_big_capture  # noqa: E402 - bench/ is put on the path first


def packets(seed: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, int(rng.integers(14, 1600)), dtype=np.uint8).tobytes() for _ in range(n)]


def read_records(path: Path) -> list[bytes]:
    out = []
    for raw in CaptureReader(path):
        out += [raw.buf[o : o + c].tobytes() for o, c in zip(raw.pkt_off, raw.caplen)]
    return out


def test_big_capture_replays_ethernet_records_in_file_order(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    a, b, c = packets(1, 5), packets(2, 3), packets(3, 4)
    pcapgen.write_pcap(corpus / "a.pcap", a)
    pcapgen.write_pcap(corpus / "sub" / "b.pcap", b, big_endian=True, nanosecond=True)
    pcapgen.write_pcap(corpus / "c.pcap", c, linktype=101)  # raw IP: not replayed
    (corpus / "notes.txt").write_text("not a capture")
    out = tmp_path / "big" / "big.pcap"
    info = make_big_capture(corpus, out, 20)
    assert info == {"source_records": 8, "records": 20, "bytes": out.stat().st_size}
    assert read_records(out) == [(a + b)[i % 8] for i in range(20)]
    ts = np.concatenate([raw.ts_ns for raw in CaptureReader(out)])
    assert (np.diff(ts) == 10_000).all()
    assert not list(out.parent.glob("*.tmp"))


def test_profile_reports_every_stage(tmp_path):
    capture = pcapgen.write_pcap(tmp_path / "x.pcap", packets(4, 3000))
    out = tmp_path / "profile.json"
    cmd = [
        sys.executable,
        str(BENCH / "profile_prep.py"),
        str(capture),
        "--runs",
        "1",
        "--chunk",
        "1000",
        "--json",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["copy_bytes_per_s"] > 0
    assert list(report["stages"]) == ["walk", "parse", "prep-nofk", "prep", "prep-2t", "cached"]
    for stage in report["stages"].values():
        assert stage["records"] == 3000 and stage["packets_per_s"] > 0
    rows = {name: s["rows"] for name, s in report["stages"].items()}
    assert rows["walk"] == rows["parse"] == 0 and rows["prep"] == rows["prep-2t"] == rows["prep-nofk"]
