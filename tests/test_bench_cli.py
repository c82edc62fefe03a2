"""`pktnin bench` (every stage and end to end), the synthetic capture behind it, and the README quick start."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from onnx_fixtures import tiny_model
from typer.testing import CliRunner

from pktnin.cli import app
from pktnin.engine.bundled import default_model_path
from pktnin.packets import iter_packets
from pktnin.synth import EXAMPLES, synthetic_packets, write_synthetic_capture

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_synthetic_capture_is_deterministic_and_mixed(tmp_path):
    a = write_synthetic_capture(tmp_path / "a.pcap", packets=400, seed=5)
    b = write_synthetic_capture(tmp_path / "b.pcap", packets=400, seed=5)
    assert a.read_bytes() == b.read_bytes()
    reports: list = []
    batches = list(iter_packets([a], reports=reports))
    meta = {k: np.concatenate([x.meta[k] for x in batches]) for k in ("proto", "ip_version", "dst_port", "src_port")}
    assert reports[0].records == 400 and not reports[0].errors
    assert set(np.unique(meta["proto"])) == {6, 17} and set(np.unique(meta["ip_version"])) == {4, 6}
    assert reports[0].skip_counts.get("dns", 0) > 0 and reports[0].skip_counts.get("no-payload", 0) > 0
    sizes = [len(frame) for _, frame in synthetic_packets(400, seed=5)]
    assert min(sizes) < 80 and max(sizes) > 1400


def test_examples_are_the_generated_ones(tmp_path):
    for name, packets, seed in EXAMPLES:
        fresh = write_synthetic_capture(tmp_path / name, packets=packets, seed=seed)
        assert (ROOT / "examples" / name).read_bytes() == fresh.read_bytes(), name


def test_bench_json_reports_every_stage(tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx", ["web", "voip", "vpn"])
    capture = write_synthetic_capture(tmp_path / "cap.pcap", packets=300, seed=1)
    result = runner.invoke(
        app, ["bench", str(capture), "--model", str(model), "--runs", "2", "--batch", "64", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "onnxruntime" and report["files"] == 1
    rows = report["rows"]
    assert 0 < rows < 300  # DNS and empty packets are skipped by the layout
    assert report["read_prep"]["packets"] == 300
    assert report["end_to_end"]["packets"] == rows
    assert report["engine"]["packets"] >= rows
    for stage in ("read_prep", "engine", "end_to_end"):
        assert len(report[stage]["runs_packets_per_s"]) == 2 and report[stage]["packets_per_s"] > 0
    ratio = report["end_to_end"]["packets_per_s"] / report["engine"]["packets_per_s"]
    assert abs(report["end_to_end_over_engine"] - ratio) < 1e-9


def test_bench_without_path_generates_a_capture(tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx", ["a", "b"])
    result = runner.invoke(app, ["bench", "--model", str(model), "--packets", "300", "--runs", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["read_prep"]["packets"] == 300


def test_bench_prep_still_a_subcommand(tmp_path):
    capture = write_synthetic_capture(tmp_path / "cap.pcap", packets=200, seed=2)
    result = runner.invoke(app, ["bench", "prep", str(capture), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["packets"] == 200


def test_quick_start_scores_the_examples_with_the_bundled_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["score", str(ROOT / "examples"), "--out", "preds.parquet", "--no-progress"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "preds.parquet")
    assert {Path(f).name for f in table.column("file").to_pylist()} == {name for name, _, _ in EXAMPLES}
    classes = set(json.loads(_bundled_classes()))
    assert set(table.column("label").to_pylist()) <= classes
    probs = np.asarray(table.column("prob").to_pylist())
    assert np.all((probs > 0) & (probs <= 1))


def _bundled_classes() -> str:
    import onnx

    proto = onnx.load(str(default_model_path()), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}["pktnin.classes"]


def test_iter_packets_with_reused_rows_and_threads_matches_the_default(tmp_path):
    capture = write_synthetic_capture(tmp_path / "cap.pcap", packets=6000, seed=3)
    plain = list(iter_packets([capture], max_records=2500))
    rows, meta, reports = [], [], []
    for batch in iter_packets(
        [capture], max_records=2500, threads=2, reuse_rows=True, flow_keys=False, reports=reports
    ):
        rows.append(batch.rows.copy())  # the next batch may overwrite these buffers
        meta.append({k: v.copy() for k, v in batch.meta.items()})
    assert np.array_equal(np.concatenate(rows), np.concatenate([b.rows for b in plain]))
    for key in plain[0].meta:
        if key in ("flow_key", "index"):  # no flow keys asked; index counts within each chunk
            continue
        assert np.array_equal(np.concatenate([m[key] for m in meta]), np.concatenate([b.meta[key] for b in plain]))
    assert all("flow_key" not in m for m in meta)
    assert reports[0].records == 6000 and reports[0].kept == sum(len(r) for r in rows)
