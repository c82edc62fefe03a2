"""File names that are not valid UTF-8 (POSIX names are bytes): scored, written as text with their stray bytes
as \\xNN, kept exact in the JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import pcap_bytes

from pktnin.names import name_text

REPO = Path(__file__).resolve().parents[1]


def test_name_text():
    assert name_text("plain/ü.pcap") == "plain/ü.pcap"
    assert name_text(os.fsdecode(b"caf\xe9.pcap")) == "caf\\xe9.pcap"


def test_names_that_are_not_utf8_are_scored_and_written(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = pcap_bytes(mixed_traffic(1, 40))
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.pcap")
    cut = os.path.join(os.fsencode(folder), b"cut\xff.pcap")
    with open(odd, "wb") as f:
        f.write(good)
    with open(cut, "wb") as f:
        f.write(good[:-30])
    model = tiny_model(tmp_path / "tiny.onnx", ["a", "b"])
    out, flows = tmp_path / "p.parquet", tmp_path / "f.parquet"
    reports = {fmt: tmp_path / f"r.{fmt}" for fmt in ("json", "csv")}
    for report in reports.values():
        args = ["score", folder, "--model", model, "--out", out, "--flows", flows, "--report", report,
                "--summary", tmp_path / "s.json", "--no-progress", "--force"]  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "pktnin", *map(str, args)], capture_output=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
        text = (proc.stdout + proc.stderr).decode()
        assert proc.returncode == 3, text  # the cut file; the run itself went through
        assert "Traceback" not in text and "cut\\xff.pcap" in text
    names = {Path(n).name for n in pq.read_table(out).column("file").to_pylist()}
    assert names == {"caf\\xe9.pcap", "cut\\xff.pcap"}
    assert {Path(n).name for n in pq.read_table(flows).column("file").to_pylist()} == names
    rows = json.loads(reports["json"].read_text())
    assert {os.fsencode(r["file"]) for r in rows} == {odd, cut}  # exact bytes back
    csv_text = reports["csv"].read_bytes().decode("utf-8")  # valid UTF-8
    assert "caf\\xe9.pcap" in csv_text and "cut\\xff.pcap" in csv_text
    summary = json.loads((tmp_path / "s.json").read_text())
    assert os.fsencode(summary["files_with_errors"][0]["file"]) == cut
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".p.", "p.parquet."))]  # no side files left
