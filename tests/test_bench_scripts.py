"""bench/baselines.py and bench/file_bootstrap.py end to end on a small generated dataset (scikit-learn, no TF)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx_fixtures import tiny_model
from test_dataset import csv_corpus, second_csv  # noqa: F401  (fixtures: labeled captures of two sources)

from pktnin.dataset.format import DatasetWriter, load_dataset, write_dataset

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


@pytest.fixture(scope="module")
def two_sources(dataset, tmp_path_factory):
    """The same rows as two sources: files 0-14 are source "one", files 15-29 source "two"."""
    d = load_dataset(dataset)
    source = (d.file >= 15).astype(np.int64)
    meta = {**d.meta, "inputs": [{"name": "one", "files": [0, 15]}, {"name": "two", "files": [15, 30]}]}
    with DatasetWriter(tmp_path_factory.mktemp("bench2") / "ds") as writer:
        writer.append_rows(d.rows[:300])
        writer.append_rows(d.rows[300:])
        return writer.finish(d.labels, d.split, d.flow, meta, file_index=d.file, source_index=source)


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


def test_baselines_per_split_and_source_and_saved_predictions(two_sources, tmp_path):
    out, preds = tmp_path / "b.json", tmp_path / "pred"
    done = run(
        "baselines.py",
        str(two_sources),
        "--json",
        str(out),
        "--trees",
        "30",
        "--forests",
        "balanced",
        "--eval",
        "val,test",
        "--max-fit-per-class",
        "60",
        "--save-predictions",
        str(preds),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["forest_fit_rows"] == 3 * 60 and report["fit_rows"] == 360
    assert set(report["by_split"]) == {"val", "test"} and report["results"] == report["by_split"]["test"]
    assert set(report["results"]) == {"port lookup", "port table, balanced", "RF, 1500 bytes, balanced"}
    for r in report["results"].values():
        assert set(r["by_source"]) == {"one", "two"} and r["flow"]["macro_f1"] >= 0
        assert sum(v["packets"] for v in r["by_source"].values()) == 120
    assert report["results"]["port lookup"]["report"]["macro_f1"] > 0.6  # bytes 22-23 are the lower port
    saved = np.load(preds / "RF_1500_bytes_balanced.npz")
    assert saved["test_probs"].shape == (120, 3) and saved["val_idx"].size == 120

    boot = tmp_path / "boot.json"
    done = run(
        "file_bootstrap.py",
        str(two_sources),
        "--predictions",
        f"rf={preds / 'RF_1500_bytes_balanced.npz'}",
        "--predictions",
        f"port={preds / 'port_lookup.npz'}",
        "--reference",
        "rf",
        "--source",
        "two",
        "--replicates",
        "200",
        "--json",
        str(boot),
    )
    assert done.returncode == 0, done.stderr
    b = json.loads(boot.read_text())
    assert b["test_files"] == 3 and b["test_packets"] == 60 and b["source"] == "two"
    bad = run(
        "file_bootstrap.py",
        str(two_sources),
        "--predictions",
        f"rf={preds / 'RF_1500_bytes_balanced.npz'}",
        "--reference",
        "rf",
        "--source",
        "three",
    )
    assert bad.returncode != 0 and "three" in bad.stderr


def test_port_fusion_tunes_beta_and_writes_the_fused_graph(two_sources, tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx", CLASSES, seed=1)
    out = tmp_path / "fusion.json"
    done = run(
        "port_fusion.py",
        str(two_sources),
        "--model",
        f"tiny={model}",
        "--tune-sources",
        "one",
        "--out-dir",
        str(tmp_path / "fused"),
        "--save-predictions",
        str(tmp_path / "pred"),
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    r = json.loads(out.read_text())["models"]["tiny"]
    assert 0 <= r["beta"] <= 1 and r["tuning_macro_f1"] >= r["tuning_network_macro_f1"]
    assert r["test"]["fused"]["report"]["macro_f1"] > r["test"]["network"]["report"]["macro_f1"]
    assert (tmp_path / "fused" / "tiny_port.onnx").is_file()
    assert np.load(tmp_path / "pred" / "tiny_port.npz")["test_probs"].shape == (120, 3)
    given = run(
        "port_fusion.py",
        str(two_sources),
        "--model",
        f"tiny={model}",
        "--given",
        "10,frequencies,0.3",
        "--json",
        str(out),
    )
    assert given.returncode == 0, given.stderr
    r = json.loads(out.read_text())["models"]["tiny"]
    assert (r["smoothing"], r["balanced"], r["beta"], r["given"]) == (10.0, False, 0.3, True)


def test_file_bootstrap_flow_decisions_and_flow_level(dataset, tmp_path):
    from pktnin.trainer.metrics import macro_f1

    d = load_dataset(dataset)
    te = d.indices("test")
    flows = np.unique(d.flow[te])  # here one flow a file
    labels = np.array([d.labels[te][d.flow[te] == f][0] for f in flows])
    decided = np.where(np.arange(flows.size) % 3 == 0, (labels + 1) % 3, labels)  # every third flow wrong
    np.savez(tmp_path / "flows.npz", flow=flows[::-1], probs=np.eye(3, dtype=np.float32)[decided][::-1])
    np.savez(tmp_path / "truth.npz", flow=flows, probs=np.eye(3, dtype=np.float32)[labels])
    for level, y, pred in (
        ("packet", d.labels[te], decided[np.searchsorted(flows, d.flow[te])]),
        ("flow", labels, decided),
    ):
        out = tmp_path / f"{level}.json"
        done = run("file_bootstrap.py", str(dataset), "--flow-predictions", f"flow={tmp_path / 'flows.npz'}",
                   "--flow-predictions", f"truth={tmp_path / 'truth.npz'}", "--reference", "truth",
                   "--level", level, "--replicates", "100", "--json", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr
        b = json.loads(out.read_text())
        assert b["test_units"] == (te.size if level == "packet" else flows.size)
        assert b["results"]["flow"]["macro_f1"] == pytest.approx(macro_f1(y, pred, 3))
        assert b["results"]["truth"]["macro_f1"] == 1.0
    np.savez(tmp_path / "short.npz", flow=flows[1:], probs=np.eye(3, dtype=np.float32)[labels[1:]])
    bad = run("file_bootstrap.py", str(dataset), "--flow-predictions", f"truth={tmp_path / 'short.npz'}",
              "--reference", "truth")  # fmt: skip
    assert bad.returncode != 0 and "no decision" in bad.stderr


def _flows_dataset(corpus: Path, second: tuple[Path, Path], out: Path):
    """The two labeled sources built into one dataset with the flow features' per-row metadata."""
    from pktnin.dataset.build import build_dataset
    from pktnin.dataset.options import BuildOptions

    labels_csv, pcaps = second
    meta = ["ts_ns", "src_addr", "src_port", "dst_port"]
    build_dataset(BuildOptions(corpus / "labels.csv", out, more_sources=[(labels_csv, pcaps)], packet_meta=meta))
    return load_dataset(out)


def test_flow_baselines_on_a_built_dataset(csv_corpus, second_csv, tmp_path):  # noqa: F811
    d = _flows_dataset(csv_corpus, second_csv, tmp_path / "d")
    out, preds = tmp_path / "f.json", tmp_path / "pred"
    done = run("flow_baselines.py", str(tmp_path / "d"), "--trees", "10", "--json", str(out),
               "--save-predictions", str(preds))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    test_rows, test_flows = d.indices("test"), np.unique(d.flow[d.indices("test")])
    assert report["chosen_on_val"]["GBT"] in (1, 2, 4, 8)
    for name, r in report["results"].items():
        assert r["packets"] == test_rows.size and r["flows"] == test_flows.size, name
        assert 0.0 <= r["packet_macro_f1"] <= 1.0 and 0.0 <= r["flow_macro_f1"] <= 1.0
        assert sum(v["flows"] for v in r["by_source"].values()) == test_flows.size
    assert {"port lookup", "RF, first packet, balanced"} <= set(report["results"])
    assert set(report["by_split"]["val"]) >= {f"GBT, flow features, K={k}" for k in (1, 2, 4, 8)}
    saved = np.load(preds / "port_lookup.npz")
    assert sorted(saved["flow"].tolist()) == test_flows.tolist() and saved["probs"].shape == (test_flows.size, 4)

    # The chosen trees as one ONNX flow model: the same features and probabilities, so the same test figures.
    k = report["chosen_on_val"]["GBT"]
    onnx_path, exported = tmp_path / "trees.onnx", tmp_path / "trees.json"
    done = run("export_flow_trees.py", str(tmp_path / "d"), "--k", str(k), "--out", str(onnx_path),
               "--val-figures", str(out), "--json", str(exported))  # fmt: skip
    assert done.returncode == 0, done.stderr
    check = json.loads(exported.read_text())
    trees = report["results"][f"GBT, flow features, K={k}"]
    for split in ("val", "test"):
        assert check[split]["features_equal"] and check[split]["argmax_agreement"] == 1.0
        assert check[split]["max_abs_diff"] < 1e-5
    assert check["test"]["onnx"]["packet_macro_f1"] == trees["packet_macro_f1"]
    assert check["test"]["onnx"]["flow_macro_f1"] == trees["flow_macro_f1"]
    assert check["provenance"]["validation"]["packet_macro_f1"] == round(
        report["by_split"]["val"][f"GBT, flow features, K={k}"]["packet_macro_f1"], 4
    )


def test_flow_cv_folds_by_file_and_exports_its_winner(csv_corpus, second_csv, tmp_path):  # noqa: F811
    d = _flows_dataset(csv_corpus, second_csv, tmp_path / "d")
    out, preds = tmp_path / "cv.json", tmp_path / "pred"
    candidates = [
        "RF, first packet, 50x256 leaves",
        "GBT, first packet + flow K=4",
        "RF, 2 payload packets a direction",
    ]
    only = [arg for name in candidates for arg in ("--only", name)]
    done = run("flow_cv.py", str(tmp_path / "d"), "--folds", "2", *only, "--json", str(out),
               "--save-predictions", str(preds))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["cv"]) == {"port lookup", *candidates} and report["cv_winner"] in candidates
    pool = np.isin(d.split, [0, 1])
    train_val_flows = np.unique(d.flow[pool]).size
    for name, cv in report["cv"].items():
        assert len(cv["folds"]) == 2 and sum(f["flows"] for f in cv["folds"]) == train_val_flows, name
        assert np.mean([(f["packet_macro_f1"] + f["flow_macro_f1"]) / 2 for f in cv["folds"]]) == pytest.approx(
            cv["score"]
        )
    assert report["cv"]["port lookup"]["onnx_mb_fold0"] is None
    assert sum(report["fold_files"]) == np.unique(d.file[pool]).size  # every file in exactly one fold
    test_flows = np.unique(d.flow[d.indices("test")])
    assert all(r["flows"] == test_flows.size for r in report["test"].values())
    assert sorted(np.load(preds / "port_lookup.npz")["flow"].tolist()) == test_flows.tolist()

    winner = report["cv_winner"]
    onnx_path, exported = tmp_path / "w.onnx", tmp_path / "w.json"
    done = run("export_flow_trees.py", str(tmp_path / "d"), "--candidate", winner, "--out", str(onnx_path),
               "--cv-figures", str(out), "--json", str(exported))  # fmt: skip
    assert done.returncode == 0, done.stderr
    check = json.loads(exported.read_text())
    for split in ("val", "test"):
        assert check[split]["features_equal"] and check[split]["argmax_agreement"] == 1.0
        assert check[split]["max_abs_diff"] < 1e-5
    assert check["test"]["onnx"]["flow_macro_f1"] == report["test"][winner]["flow_macro_f1"]
    assert check["provenance"]["cross_validation"]["score"] == round(report["cv"][winner]["score"], 4)


def test_flow_cv_keeps_each_file_in_one_fold_and_spreads_sources():
    sys.path.insert(0, str(BENCH))
    from flow_cv import file_folds

    from pktnin.dataset.flows import FlowSet

    rng = np.random.default_rng(1)
    n = 600
    capture_file = rng.integers(0, 40, n)
    source = (capture_file >= 20).astype(np.int16)  # files 0-19 one source, 20-39 the other
    label = (capture_file % 4).astype(np.int16)
    zeros = np.zeros(n, np.int64)
    flows = FlowSet(index=np.zeros((n, 1), np.int64), feats=np.zeros((n, 1, 4), np.float32), src_port=zeros,
                    dst_port=zeros, label=label, split=zeros.astype(np.int8), capture_file=capture_file,
                    source=source, packets=zeros + 1, flow=np.arange(n))  # fmt: skip
    fold = file_folds(flows, 5, seed=0)
    for f in np.unique(capture_file):
        assert np.unique(fold[capture_file == f]).size == 1
    for k in range(5):
        assert set(source[fold == k]) == {0, 1}  # both sources in every fold
    assert np.array_equal(fold, file_folds(flows, 5, seed=0))


def test_flow_cv_fuses_out_of_fold_probabilities(csv_corpus, second_csv, tmp_path):  # noqa: F811
    sys.path.insert(0, str(BENCH))
    from flow_baselines import _file_name

    d = _flows_dataset(csv_corpus, second_csv, tmp_path / "d")
    out, preds, oof = tmp_path / "cv.json", tmp_path / "pred", tmp_path / "oof"
    gbt, forest = "GBT, first packet + flow K=8", "RF, first packet, 20x1024 leaves"
    done = run("flow_cv.py", str(tmp_path / "d"), "--folds", "2", "--only", gbt, "--only", forest,
               "--stages", "cv,fuse,test,fuse-test", "--oof", str(oof), "--json", str(out),
               "--save-predictions", str(preds))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["fusion"]) == {
        "GBT first+flow K=8 + port table",
        "GBT first+flow K=8 + RF 20x1024",
        "GBT first+flow K=8 + RF 20x1024 + port table",
    }
    saved = np.load(oof / "GBT__first_packet___flow_K=8.npz")
    assert saved["probs"].shape[0] == np.unique(d.flow[np.isin(d.split, [0, 1])]).size
    assert set(saved["fold"].tolist()) == {0, 1}
    for name, r in report["fusion"].items():
        # the boosting alone (the grid's first point) scores as the cv stage scored it
        assert r["trees_alone"] == pytest.approx(report["cv"][gbt]["score"]), name
        assert r["score_same_oof"] >= r["trees_alone"] - 1e-12 and r["score_nested"] <= r["score_same_oof"] + 1e-12
        assert len(r["nested_choices"]) == 2 and (r["table"] is not None) == r["port"]
        test = report["fusion_test"][name]
        assert test["flows"] == np.unique(d.flow[d.indices("test")]).size
        probs = np.load(preds / f"{_file_name(name)}.npz")["probs"]
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)  # a convex mix of distributions
    if report["fusion_winner"] is not None:
        assert report["fusion"][report["fusion_winner"]]["score_nested"] > report["cv"][gbt]["score"]

    # the boosting fused with the port table as one graph, checked against the numpy fusion
    onnx_path, exported = tmp_path / "fused.onnx", tmp_path / "fused.json"
    done = run("export_flow_trees.py", str(tmp_path / "d"), "--fusion", "GBT first+flow K=8 + RF 20x1024 + port table",
               "--out", str(onnx_path), "--cv-figures", str(out), "--json", str(exported))  # fmt: skip
    assert done.returncode == 0, done.stderr
    check = json.loads(exported.read_text())
    for split in ("val", "test"):
        assert check[split]["features_equal"] and check[split]["argmax_agreement"] == 1.0
        assert check[split]["max_abs_diff"] < 1e-5
    assert check["provenance"]["fusion"]["w"] == report["fusion"]["GBT first+flow K=8 + RF 20x1024 + port table"]["w"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the trees-only graph removed


def test_quick_scores_equal_flow_scores():
    sys.path.insert(0, str(BENCH))
    from flow_baselines import flow_scores
    from flow_cv import quick_scores

    from pktnin.dataset.flows import FlowSet

    rng = np.random.default_rng(2)
    n, c = 500, 6
    label, pred = rng.integers(0, c - 1, n).astype(np.int16), rng.integers(0, c, n)
    source, zeros = rng.integers(0, 2, n).astype(np.int16), np.zeros(n, np.int64)
    flows = FlowSet(index=np.zeros((n, 1), np.int64), feats=np.zeros((n, 1, 4), np.float32), src_port=zeros,
                    dst_port=zeros, label=label, split=zeros.astype(np.int8), capture_file=zeros, source=source,
                    packets=rng.integers(1, 50, n), flow=np.arange(n))  # fmt: skip
    ref = flow_scores(flows, np.eye(c)[pred], c, ["a", "b"])
    assert quick_scores(flows, pred, c) == pytest.approx((ref["packet_macro_f1"] + ref["flow_macro_f1"]) / 2)
    sub = ref["by_source"]["b"]
    assert quick_scores(flows, pred, c, source == 1) == pytest.approx(
        (sub["packet_macro_f1"] + sub["flow_macro_f1"]) / 2
    )


def test_flow_probes_score_against_the_shipped_fusion(csv_corpus, second_csv, tmp_path):  # noqa: F811
    _flows_dataset(csv_corpus, second_csv, tmp_path / "d")
    oof, cv, out = tmp_path / "oof", tmp_path / "cv.json", tmp_path / "probes.json"
    members = ["--only", "GBT, first packet + flow K=8", "--only", "RF, first packet, 20x1024 leaves"]
    done = run("flow_cv.py", str(tmp_path / "d"), "--folds", "2", *members, "--stages", "cv", "--oof", str(oof),
               "--json", str(cv))  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run("flow_probes.py", str(tmp_path / "d"), "--oof", str(oof), "--folds", "2", "--json", str(out),
               "--gbt-settings", '{"max_iter": 5}')  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    shipped = report["shipped"]
    assert shipped["gbt_alone"] == pytest.approx(
        json.loads(cv.read_text())["cv"]["GBT, first packet + flow K=8"]["score"]
    )
    [gbt] = report["gbt"]
    assert gbt["settings"] == {"max_iter": 5}
    for r in (shipped, gbt, report["ngram"]):
        assert 0.0 <= r["nested"] <= r["all_folds"] + 1e-12 <= 1.0 + 1e-12
    # g = 0 is the shipped fusion itself: the n-gram grid's best is at least the shipped fusion's
    assert report["ngram"]["all_folds"] >= shipped["all_folds"] - 1e-12
    assert 0.0 <= report["bias"]["nested"] <= 1.0 and len(report["bias"]["folds"]) == 2
    for r in report["context"].values():  # c = 0 is the shipped fusion itself
        assert 0.0 <= r["with_context"] <= 1.0 and r["all_folds"] >= shipped["all_folds"] - 1e-12
    names = report["names"]  # g = 0 is the shipped fusion itself
    assert 0.0 <= names["with_known_name"] <= names["with_name"] <= 1.0
    assert names["all_folds"] >= shipped["all_folds"] - 1e-12 and len(names["fold_choices"]) == 2
    assert 0.0 <= names["joint"]["nested"] <= names["joint"]["all_folds"] + 1e-12 <= 1.0 + 1e-12


def test_earlier_context_is_the_mean_of_earlier_flows_with_the_key():
    sys.path.insert(0, str(BENCH))
    from flow_probes import earlier_context

    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]], np.float32)
    keys = ["s", "s", None, "s"]
    context, has = earlier_context(probs, keys, np.array([3, 0, 1, 2]))  # flow 3 first, then 0, 1, 2
    assert has.tolist() == [True, True, False, False]
    np.testing.assert_allclose(context[0], [0.2, 0.8])
    np.testing.assert_allclose(context[1], [0.6, 0.4])  # mean of flows 3 and 0


def test_hashed_ngrams_count_each_payload_trigram():
    sys.path.insert(0, str(BENCH))
    from flow_probes import hashed_ngrams

    from pktnin.layout import HEADER_LEN

    rows = np.zeros((1, 2, 1500), np.uint8)
    rows[0, :, 0] = 0x45  # IPv4, 20-byte header
    rows[0, :, 9] = 17  # UDP: an 8-byte transport header, so the payload length is the IP length less 28
    rows[0, 0, 3] = 28 + 6  # payload "abcabc": trigrams abc, bca, cab, abc
    rows[0, 0, HEADER_LEN : HEADER_LEN + 6] = np.frombuffer(b"abcabc", np.uint8)
    rows[0, 1, 3] = 28 + 2  # two bytes: no trigram
    rows[0, 1, HEADER_LEN : HEADER_LEN + 2] = np.frombuffer(b"zz", np.uint8)
    x = hashed_ngrams(rows, bits=16).toarray()[0]
    counts = np.sort(x[x > 0])
    # abc twice, bca and cab once, before scaling to unit length: log(3), log(2), log(2)
    expected = np.sort(np.log1p([2.0, 1.0, 1.0]))
    np.testing.assert_allclose(counts, expected / np.linalg.norm(expected), rtol=1e-6)
