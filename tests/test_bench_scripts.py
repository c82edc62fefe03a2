"""bench/baselines.py and bench/file_bootstrap.py end to end on a small generated dataset (scikit-learn, no TF)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pktnin.dataset.format import write_dataset

pytest.importorskip("sklearn")
BENCH = Path(__file__).resolve().parents[1] / "bench"
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """30 capture files of 20 rows, one class a file; bytes 22, 23 and 500 name the class in 80% of the rows."""
    rng = np.random.default_rng(0)
    files = np.repeat(np.arange(30), 20)
    labels = files % 3
    rows = rng.integers(0, 256, (files.size, 1500), dtype=np.uint8)
    informative = rng.random(files.size) < 0.8
    for column in (22, 23, 500):
        rows[informative, column] = 10 * labels[informative]
    split = np.array([0, 0, 0, 1, 2])[np.arange(30) % 5][files].astype(np.int8)  # whole files per split
    meta = {"classes": CLASSES, "sources": [f"f{i}.pcap" for i in range(30)]}
    return write_dataset(tmp_path_factory.mktemp("bench") / "ds", rows, labels, split, files, meta, file_index=files)


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)


def test_baselines_report_every_model(dataset, tmp_path):
    out = tmp_path / "baselines.json"
    done = run("baselines.py", str(dataset), "--json", str(out), "--trees", "60")
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())["results"]
    assert "port lookup" in results and "RF, 1500 bytes, balanced" in results
    # Chance is 1/3; three bytes name the class in 80% of the rows, and the forest finds them.
    assert results["RF, 1500 bytes"]["report"]["macro_f1"] > 0.5


def test_file_bootstrap_compares_with_the_reference(dataset, tmp_path):
    out = tmp_path / "boot.json"
    done = run("file_bootstrap.py", str(dataset), "--forests", "--replicates", "300", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["test_files"] == 6 and report["reference"] == "RF, 1500 bytes, balanced"
    ref = report["results"]["RF, 1500 bytes, balanced"]
    assert ref["minus_reference"] == 0 and ref["minus_reference_interval"] == [0, 0] and ref["share_ahead"] == 0
    for result in report["results"].values():
        low, high = result["interval"]
        assert 0 <= low <= high <= 1
    missing = run("file_bootstrap.py", str(dataset), "--reference", "nothing")
    assert missing.returncode != 0 and "reference 'nothing'" in missing.stderr
