"""Training, checkpoints, alpha fusion and evaluation end to end on a small synthetic dataset.

The class of a synthetic row is written into a few header bytes (plus noise); everything else is random, so a
model that learns anything beats chance. Models are the real presets at a small width so the tests stay fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from onnx_fixtures import reference_probs, tiny_model  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from pktnin import checkpoint as ckpt  # noqa: E402
from pktnin.cli import app  # noqa: E402
from pktnin.dataset.format import load_dataset, write_dataset  # noqa: E402
from pktnin.engine.export import checkpoint_provenance  # noqa: E402
from pktnin.errors import UsageError  # noqa: E402
from pktnin.layout import CAPTURE_FIELDS  # noqa: E402
from pktnin.trainer.data import (  # noqa: E402
    balanced_class_weights,
    make_tf_dataset,
    predict_rows,
    select_training_rows,
    training_sample_weights,
)
from pktnin.trainer.evaluate import evaluate, load_result, write_evaluation  # noqa: E402
from pktnin.trainer.fusion import fuse  # noqa: E402
from pktnin.trainer.train import TrainSettings, branch_checkpoint_path, logs_dir_for, train  # noqa: E402

pytestmark = pytest.mark.tf

CLASSES = ["chat", "email", "video", "voip"]
WIDTH = 0.05  # nin1: 10 filters, dense 51 and 3 units: fast, for tests of plumbing
LEARN_WIDTH = 0.25  # nin1: 50 filters, dense 256 and 16 units: learns the synthetic task in 2 epochs


def synthetic_rows(n_per_class: int, seed: int):
    """Rows whose 40 header bytes follow a per-class template plus noise; the 1460 body bytes are noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), n_per_class)
    rows = rng.integers(0, 256, (y.size, 1500), dtype=np.uint8)
    templates = rng.integers(0, 200, (len(CLASSES), 40))
    rows[:, :40] = (templates[y] + rng.integers(0, 56, (y.size, 40))).astype(np.uint8)
    # 10-packet flows of one class each; flows never straddle splits.
    flow = np.arange(y.size) // 10
    flow_split = rng.choice(3, flow.max() + 1, p=[0.6, 0.2, 0.2])
    return rows, y, flow_split[flow].astype(np.int8), flow.astype(np.int64)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    rows, y, split, flow = synthetic_rows(150, seed=3)
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", rows, y, split, flow, {"classes": CLASSES})


@pytest.fixture(scope="module")
def trained(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "nin1.keras"
    summary = train(
        "nin1", dataset_dir, out, TrainSettings(epochs=3, batch=16, seed=1, width=LEARN_WIDTH), progress=False
    )
    return out, summary


def test_training_beats_chance_and_keeps_the_best_epoch(trained, dataset_dir):
    out, summary = trained
    history = summary["history"]
    assert summary["epochs_run"] == 3
    assert summary["val_macro_f1"] == max(history["val_macro_f1"])
    assert summary["best_epoch"] == int(np.argmax(history["val_macro_f1"])) + 1
    # Chance for 4 balanced classes is 0.25 accuracy.
    assert summary["val_macro_f1"] > 0.6
    # Learning rate 1e-3 decays by 0.98 per epoch.
    np.testing.assert_allclose(history["learning_rate"], [1e-3, 0.98e-3, 0.98**2 * 1e-3], rtol=1e-5)
    assert all(rate > 0 for rate in summary["train_packets_per_s"])
    logs = logs_dir_for(out)
    assert any((logs / "train").iterdir()) and any((logs / "validation").iterdir())


def test_checkpoint_round_trip(trained, dataset_dir):
    out, summary = trained
    model, meta = ckpt.load_checkpoint(out)
    assert meta["preset"] == "nin1"
    assert meta["classes"] == CLASSES
    assert meta["layout_version"] == 1 and meta["input"] == "row1500" and meta["alpha"] is None
    assert meta["metrics"]["macro_f1"] == pytest.approx(summary["val_macro_f1"])
    assert meta["training"]["best_epoch"] == summary["best_epoch"]
    assert meta["data"]["meta"]["classes"] == CLASSES
    data = load_dataset(dataset_dir)
    val = data.indices("val")
    probs = predict_rows(model, data.rows, val)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    from pktnin.trainer.metrics import macro_f1

    assert macro_f1(data.labels[val], probs.argmax(axis=1), len(CLASSES)) == pytest.approx(summary["val_macro_f1"])
    # Saving again and reloading gives the same predictions (no optimizer state needed).
    again = ckpt.save_checkpoint(model, out.with_name("copy.keras"), meta)
    model2, meta2 = ckpt.load_checkpoint(again)
    np.testing.assert_allclose(predict_rows(model2, data.rows, val[:32]), probs[:32], rtol=1e-5, atol=1e-6)
    assert meta2 == meta
    assert not list(out.parent.glob("*.tmp*"))
    # No optimizer state in the file: scoring does not need it and it would triple the size.
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(out) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as weights:
        names = []
        weights.visit(names.append)
    assert names and not [n for n in names if "optimizer" in n]


def test_training_is_deterministic(dataset_dir, tmp_path):
    runs = [
        train(
            "nin1", dataset_dir, tmp_path / f"again{i}.keras",
            TrainSettings(epochs=1, batch=16, seed=1, width=WIDTH, max_train=160), progress=False
        )
        for i in range(2)
    ]  # fmt: skip
    assert runs[0]["history"]["loss"] == runs[1]["history"]["loss"]
    assert runs[0]["history"]["val_macro_f1"] == runs[1]["history"]["val_macro_f1"]
    weights = [ckpt.load_checkpoint(tmp_path / f"again{i}.keras")[0].get_weights() for i in range(2)]
    for w0, w1 in zip(*weights):
        np.testing.assert_array_equal(w0, w1)


def test_parallel_fused_checkpoint_is_alpha_mix_of_branches(dataset_dir, tmp_path):
    out = tmp_path / "par.keras"
    summary = train(
        "nin_parallel",
        dataset_dir,
        out,
        TrainSettings(epochs=1, batch=32, seed=2, width=WIDTH, max_train=240),
        progress=False,
    )
    alpha = summary["alpha"]
    meta = ckpt.load_metadata(out)
    assert meta["preset"] == "nin_parallel" and meta["alpha"] == alpha
    curve = meta["training"]["alpha_curve"]
    assert len(curve) == 101 and curve[0][0] == 0.0 and curve[-1][0] == 1.0
    assert max(s for _, s in curve) == pytest.approx(meta["metrics"]["macro_f1"])
    assert set(meta["training"]["branches"]) == {"nin1", "nin2"}

    fused, _ = ckpt.load_checkpoint(out)
    nin1, _ = ckpt.load_checkpoint(branch_checkpoint_path(out, "nin1"))
    nin2, _ = ckpt.load_checkpoint(branch_checkpoint_path(out, "nin2"))
    data = load_dataset(dataset_dir)
    idx = data.indices("test")[:64]
    p1 = predict_rows(nin1, data.rows, idx)
    p2 = predict_rows(nin2, data.rows, idx)
    np.testing.assert_allclose(predict_rows(fused, data.rows, idx), fuse(p1, p2, alpha), atol=1e-5)

    # `pktnin fuse` rebuilds the same model from the kept branches, without training.
    refused = tmp_path / "refused.keras"
    result = CliRunner().invoke(
        app, ["fuse", str(branch_checkpoint_path(out, "nin1")), str(branch_checkpoint_path(out, "nin2")),
              "--data", str(dataset_dir), "--out", str(refused)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ckpt.load_metadata(refused)["alpha"] == alpha
    again, _ = ckpt.load_checkpoint(refused)
    np.testing.assert_allclose(predict_rows(again, data.rows, idx), fuse(p1, p2, alpha), atol=1e-5)
    swapped = CliRunner().invoke(
        app, ["fuse", str(branch_checkpoint_path(out, "nin2")), str(branch_checkpoint_path(out, "nin1")),
              "--data", str(dataset_dir), "--out", str(tmp_path / "bad.keras")],
    )  # fmt: skip
    assert swapped.exit_code != 0 and "no preset fuses 'nin2' and 'nin1'" in " ".join(swapped.output.split())


def test_small_body_fusion_trained_in_mixed_precision_is_saved_in_float32(dataset_dir, tmp_path):
    """nin_parallel_small (NIN1 + NIN_small on the body, beyond the paper) in mixed_bfloat16: every checkpoint
    computes in float32, the fused one is Eq. 3 of its branches, its ONNX export matches Keras, and `pktnin fuse`
    recognises the pair."""
    import onnxruntime as ort

    from pktnin.engine.export import export_onnx

    out = tmp_path / "small.keras"
    settings = TrainSettings(epochs=1, batch=32, seed=2, width=WIDTH, max_train=200, precision="mixed_bfloat16")
    summary = train("nin_parallel_small", dataset_dir, out, settings, progress=False)
    meta = ckpt.load_metadata(out)
    assert meta["preset"] == "nin_parallel_small" and set(meta["training"]["branches"]) == {"nin1", "nin_small_body"}
    assert meta["training"]["branches"]["nin_small_body"]["settings"]["precision"] == "mixed_bfloat16"
    fused, _ = ckpt.load_checkpoint(out)
    body, body_meta = ckpt.load_checkpoint(branch_checkpoint_path(out, "nin_small_body"))
    assert body_meta["preset"] == "nin_small_body"
    for model in (fused, body):
        assert {layer.dtype_policy.name for layer in model._flatten_layers()} == {"float32"}
    data = load_dataset(dataset_dir)
    idx = data.indices("test")[:64]
    p1 = predict_rows(ckpt.load_checkpoint(branch_checkpoint_path(out, "nin1"))[0], data.rows, idx)
    p2 = predict_rows(body, data.rows, idx)
    expected = fuse(p1, p2, summary["alpha"])
    np.testing.assert_allclose(predict_rows(fused, data.rows, idx), expected, atol=1e-5)
    onnx_path = export_onnx(out, tmp_path / "small.onnx", input_dtype="uint8")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: data.rows[idx]}
    np.testing.assert_allclose(session.run(None, feed)[0], expected, atol=1e-4)
    refused = CliRunner().invoke(
        app, ["fuse", str(branch_checkpoint_path(out, "nin1")), str(branch_checkpoint_path(out, "nin_small_body")),
              "--data", str(dataset_dir), "--out", str(tmp_path / "again.keras")],
    )  # fmt: skip
    assert refused.exit_code == 0 and "nin_parallel_small" in refused.output, refused.output


def test_refit_on_train_and_val_runs_the_given_epochs_and_claims_no_validation_score(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    rows_both = data.indices("train").size + data.indices("val").size
    out = tmp_path / "refit.keras"
    summary = train(
        "nin1",
        dataset_dir,
        out,
        TrainSettings(epochs=2, batch=32, seed=1, width=WIDTH, fit="train+val", patience=1),
        progress=False,
    )
    meta = ckpt.load_metadata(out)
    assert meta["metrics"] is None and summary["val_macro_f1"] is None
    assert meta["training"]["fit"] == "train+val" and meta["training"]["train_rows"] == rows_both
    assert summary["epochs_run"] == 2 and meta["training"]["best_epoch"] == 2  # no early stop, last epoch kept
    with pytest.raises(ValueError, match="alpha"):
        train(
            "nin_parallel",
            dataset_dir,
            tmp_path / "p.keras",
            TrainSettings(epochs=1, width=WIDTH, fit="train+val"),
            progress=False,
        )
    fused = tmp_path / "fixed.keras"
    result = CliRunner().invoke(
        app, ["fuse", str(out), str(out), "--data", str(dataset_dir), "--out", str(fused), "--alpha", "0.3"]
    )
    assert result.exit_code != 0 and "no preset fuses 'nin1' and 'nin1'" in " ".join(result.output.split())


def test_fuse_with_a_given_alpha_skips_the_search(dataset_dir, tmp_path):
    nin1, nin2 = tmp_path / "n1.keras", tmp_path / "n2.keras"
    for name, path in (("nin1", nin1), ("nin2", nin2)):
        train(
            name,
            dataset_dir,
            path,
            TrainSettings(epochs=1, batch=32, seed=1, width=WIDTH, max_train=64, fit="train+val"),
            progress=False,
        )
    out = tmp_path / "fixed.keras"
    result = CliRunner().invoke(
        app, ["fuse", str(nin1), str(nin2), "--data", str(dataset_dir), "--out", str(out), "--alpha", "0.3"]
    )
    assert result.exit_code == 0, result.output
    meta = ckpt.load_metadata(out)
    assert meta["alpha"] == 0.3 and meta["metrics"] is None and meta["training"]["alpha_curve"] is None
    assert meta["training"]["fit"] == "train+val"
    provenance = checkpoint_provenance(meta)
    assert provenance["fit"] == "train+val" and provenance["validation_macro_f1"] is None
    assert {b["fit"] for b in provenance["branches"].values()} == {"train+val"}
    data = load_dataset(dataset_dir)
    idx = data.indices("test")[:32]
    p1 = predict_rows(ckpt.load_checkpoint(nin1)[0], data.rows, idx)
    p2 = predict_rows(ckpt.load_checkpoint(nin2)[0], data.rows, idx)
    np.testing.assert_allclose(predict_rows(ckpt.load_checkpoint(out)[0], data.rows, idx), fuse(p1, p2, 0.3), atol=1e-5)


def test_evaluate_checkpoint_writes_json_and_plots(trained, dataset_dir, tmp_path):
    out, _ = trained
    result = evaluate(out, dataset_dir, split="test")
    data = load_dataset(dataset_dir)
    test_idx = data.indices("test")
    assert result["rows"] == test_idx.size
    assert result["packet"]["samples"] == test_idx.size
    assert result["flow"]["flows"] == np.unique(data.flow[test_idx]).size
    assert result["packet"]["macro_f1"] > 0.5
    written = write_evaluation(result, tmp_path / "r.json", tmp_path / "plots", compare=[result])
    names = {p.name for p in written}
    assert {"r.json", "f1_packet.png", "f1_flow.png", "confusion_packet.png", "confusion_flow.png"} <= names
    for p in written:
        assert p.stat().st_size > 0
    assert load_result(tmp_path / "r.json")["packet"] == json.loads(json.dumps(result["packet"]))


@pytest.mark.parametrize("input_dtype", ["uint8", "float32"])
def test_evaluate_onnx_model(dataset_dir, tmp_path, input_dtype):
    model = tiny_model(tmp_path / "tiny.onnx", CLASSES, input_dtype=input_dtype)
    result = evaluate(model, dataset_dir, split="val")
    data = load_dataset(dataset_dir)
    idx = data.indices("val")
    rows = np.asarray(data.rows[idx])
    probs = reference_probs(model, rows)  # converts to bytes/255 itself for a float32 input
    from pktnin.trainer.metrics import classification_report

    expected = classification_report(data.labels[idx], probs.argmax(axis=1), CLASSES)
    assert result["packet"] == expected
    assert result["runtime"] == "onnx"


def test_evaluate_rejects_other_classes(dataset_dir, tmp_path):
    model = tiny_model(tmp_path / "other.onnx", ["a", "b", "c", "d"])
    with pytest.raises(UsageError, match="classes"):
        evaluate(model, dataset_dir)


def test_cli_train_and_evaluate(dataset_dir, tmp_path):
    import typer

    from pktnin.cli import evaluate as evaluate_cli
    from pktnin.cli import train as train_cli

    app = typer.Typer()
    train_cli.register(app)
    evaluate_cli.register(app)
    runner = CliRunner()
    out = tmp_path / "m.keras"
    res = runner.invoke(app, ["train", "nin1", "--data", str(dataset_dir), "--out", str(out), "--epochs", "1",
                              "--batch", "32", "--max-train", "200", "--width", str(WIDTH), "--no-progress",
                              "--xla"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert ckpt.load_metadata(out)["training"]["xla"] is True
    res = runner.invoke(app, ["evaluate", str(out), "--data", str(dataset_dir), "--split", "val", "--out",
                              str(tmp_path / "e.json"), "--plots", str(tmp_path / "p")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert load_result(tmp_path / "e.json")["split"] == "val"
    assert (tmp_path / "p" / "confusion_packet.png").is_file()
    res = runner.invoke(app, ["train", "nin1", "--data", str(tmp_path / "missing"), "--out", str(out)])
    assert res.exit_code != 0 and "missing" in res.output


def test_pipeline_rows_labels_and_weights_stay_aligned(dataset_dir):
    data = load_dataset(dataset_dir)
    idx = data.indices("train")[:50]
    weights = np.arange(1, idx.size + 1, dtype=np.float32)  # a distinct weight per row
    ds = make_tf_dataset(data.rows, data.labels, idx, len(CLASSES), batch=16, shuffle_seed=0, sample_weights=weights)
    seen = 0
    for x, y, w in ds:
        x, y, w = x.numpy(), y.numpy(), w.numpy()
        label = y.argmax(axis=1)
        # Each row is found among the selected rows with the label and weight of that very row.
        for row, lab, wt in zip(x, label, w):
            match = np.flatnonzero(np.all(np.asarray(data.rows[idx]) == np.round(row * 255).astype(np.uint8), axis=1))
            assert match.size == 1 and data.labels[idx[match[0]]] == lab and wt == weights[match[0]]
        seen += x.shape[0]
    assert seen == idx.size


def test_training_row_selection():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 40)
    split = np.zeros(100, np.int8)
    split[::10] = 1
    capped = select_training_rows(labels, split, seed=0, max_per_class=20)
    assert np.all(split[capped] == 0)
    np.testing.assert_array_equal(np.bincount(labels[capped]), [20, 9, 20])
    budget = select_training_rows(labels, split, seed=0, max_train=30)
    assert budget.size == 30 and np.all(np.diff(budget) > 0)
    np.testing.assert_array_equal(budget, select_training_rows(labels, split, seed=0, max_train=30))
    weights = balanced_class_weights(labels, 4)
    assert weights[3] == 0
    assert np.sum(weights[labels]) == pytest.approx(labels.size)  # mean weight per sample is 1
    assert weights[1] == pytest.approx(100 / (3 * 10))


def test_file_weighting_gives_each_class_and_each_of_its_files_an_equal_share():
    # Class 0: file 0 has 6 rows, file 1 has 2; class 1: file 2 has 4 rows. 12 rows, 2 classes.
    labels = np.array([0] * 8 + [1] * 4)
    file = np.array([0] * 6 + [1] * 2 + [2] * 4)
    idx = np.arange(12)
    w = training_sample_weights(labels, idx, "file", 3, file)
    # Each class 12/2 = 6 in total; class 0 splits it 3 + 3 over its files: 0.5 a row in file 0, 1.5 in file 1.
    np.testing.assert_allclose(w, [0.5] * 6 + [1.5] * 2 + [1.5] * 4)
    assert w.sum() == pytest.approx(12)
    np.testing.assert_allclose(training_sample_weights(labels, idx, "balanced", 3), [0.75] * 8 + [1.5] * 4)
    assert training_sample_weights(labels, idx, "none", 3) is None
    # Only the selected rows count: drop file 1 and class 0 is file 0 alone.
    sub = np.array([0, 1, 2, 8, 9])
    np.testing.assert_allclose(training_sample_weights(labels, sub, "file", 3, file), [5 / 6] * 3 + [1.25] * 2)
    with pytest.raises(ValueError, match="file"):
        training_sample_weights(labels, idx, "file", 3, None)


def test_training_rows_capped_per_flow():
    flow = np.repeat([7, 3, 9, 5], [30, 2, 12, 6])  # flow ids in no particular order
    labels = np.zeros(flow.size, np.int64)
    split = np.zeros(flow.size, np.int8)
    split[-1] = 1  # one validation row of flow 5 is never selected
    idx = select_training_rows(labels, split, seed=1, flow=flow, max_per_flow=5)
    assert np.all(split[idx] == 0) and np.all(np.diff(idx) > 0)
    kept = dict(zip(*np.unique(flow[idx], return_counts=True)))
    assert kept == {7: 5, 3: 2, 9: 5, 5: 5}
    other = select_training_rows(labels, split, seed=2, flow=flow, max_per_flow=5)
    assert not np.array_equal(idx, other)  # a seeded sample, not the first rows of each flow
    with pytest.raises(ValueError):
        select_training_rows(labels, split, seed=0, max_per_flow=5)


def test_header_jitter_changes_only_capture_fields_in_the_pipeline(tmp_path):
    rows, y, split, flow = synthetic_rows(16, seed=5)
    rows[::2, 0], rows[::2, 9] = 0x45, 6  # every other row reads as IPv4 + TCP
    rows[1::4, 0], rows[1::4, 6] = 0x60, 17  # some as IPv6 + UDP; the rest keep random version bytes
    data = load_dataset(write_dataset(tmp_path / "ds", rows, y, np.zeros_like(split), flow, {"classes": CLASSES}))
    idx = data.indices("train")
    source = np.asarray(data.rows[idx])
    ds = make_tf_dataset(data.rows, data.labels, idx, len(CLASSES), batch=32, shuffle_seed=0, jitter_seed=5)
    may_change = CAPTURE_FIELDS.any(axis=0)
    changed_any = False
    for x, y in ds:
        for row, onehot in zip(np.round(x.numpy() * 255).astype(np.uint8), y.numpy()):
            match = np.flatnonzero(np.all(source[:, 40:] == row[40:], axis=1))  # bodies are random: unique
            assert match.size == 1 and data.labels[idx[match[0]]] == onehot.argmax()
            diff = np.flatnonzero(source[match[0]] != row)
            assert np.all(may_change[diff])
            changed_any |= diff.size > 0
    assert changed_any


def test_header_jitter_is_recorded_and_refused_for_strict_rows(dataset_dir, tmp_path):
    out = tmp_path / "jit.keras"
    train(
        "nin1",
        dataset_dir,
        out,
        TrainSettings(epochs=1, batch=32, seed=1, width=WIDTH, augment="header-jitter"),
        progress=False,
    )
    assert ckpt.load_metadata(out)["training"]["augment"] == "header-jitter"
    assert checkpoint_provenance(ckpt.load_metadata(out))["augment"] == "header-jitter"
    rows, y, split, flow = synthetic_rows(10, seed=4)
    strict = write_dataset(tmp_path / "strict", rows, y, split, flow, {"classes": CLASSES, "mask": "strict"})
    with pytest.raises(ValueError, match="paper mask"):
        train(
            "nin1",
            strict,
            tmp_path / "s.keras",
            TrainSettings(epochs=1, width=WIDTH, augment="header-jitter"),
            progress=False,
        )
    result = CliRunner().invoke(
        app, ["train", "nin1", "--data", str(dataset_dir), "--out", str(tmp_path / "x.keras"), "--augment", "noise"]
    )
    # the command line lists the choices (a Literal option); the library's own check is TrainSettings' above
    assert result.exit_code == 2 and "'noise' is not one of 'none', 'header-jitter'" in " ".join(result.output.split())
