"""The command line as a new user meets it: models by name, `pktnin models`, bench's face, evaluate on a subset
of the model's classes, split warnings, --version/--quiet/--summary, help at 80 columns, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from onnx_fixtures import tiny_model
from typer.testing import CliRunner

from pktnin import __version__
from pktnin.cli import app
from pktnin.dataset.format import write_dataset
from pktnin.engine import bundled, catalog
from pktnin.synth import write_synthetic_capture

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"}, **kwargs)


@pytest.fixture
def capture(tmp_path):
    return write_synthetic_capture(tmp_path / "cap.pcap", packets=300, seed=1)


@pytest.fixture
def bundled_dir(tmp_path, monkeypatch):
    """A models folder holding one tiny model `tiny` (with provenance saying mask paper) in place of the bundled."""
    import onnx

    folder = tmp_path / "models"
    folder.mkdir()
    path = tiny_model(folder / "tiny.onnx", ["web", "voip", "vpn"])
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "pktnin.provenance", json.dumps({"data": {"mask": "paper", "n_rows": 123}, "fit": "train"})
    onnx.save(proto, str(path))
    monkeypatch.setattr(bundled, "MODELS_DIR", folder)
    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    return folder


# ------------------------------------------------------------------------------------------- models by name


def test_score_takes_a_bundled_model_by_name(tmp_path, capture):
    out = tmp_path / "p.parquet"
    result = invoke(["score", capture, "--model", "nin1_port", "--out", out, "--no-progress"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows > 0
    by_path = invoke(["score", capture, "--model", ROOT / "pktnin/models/nin1_port.onnx", "--out",
                      tmp_path / "q.parquet", "--no-progress"])  # fmt: skip
    assert by_path.exit_code == 0, by_path.output
    assert pq.read_table(tmp_path / "q.parquet").column("label").to_pylist() == table.column("label").to_pylist()


@pytest.mark.parametrize("command", ["score", "bench", "evaluate"])
def test_an_unknown_model_name_exits_2_naming_the_bundled_models(tmp_path, capture, command):
    args = {
        "score": ["score", capture, "--model", "nin3", "--out", tmp_path / "p.parquet"],
        "bench": ["bench", capture, "--model", "nin3", "--runs", "1"],
        "evaluate": ["evaluate", "nin3", "--data", tmp_path],
    }[command]
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert "nin3" in result.output and "nin1_port" in result.output and "nin_parallel_small_port" in result.output


@pytest.mark.parametrize("command", ["score", "bench", "evaluate"])
def test_a_missing_model_file_exits_2_in_every_command(tmp_path, capture, command):
    missing = tmp_path / "gone.onnx"
    args = {
        "score": ["score", capture, "--model", missing, "--out", tmp_path / "p.parquet"],
        "bench": ["bench", capture, "--model", missing, "--runs", "1"],
        "evaluate": ["evaluate", missing, "--data", _dataset(tmp_path, ["web", "voip"])],
    }[command]
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert "gone.onnx" in result.output


def test_mask_other_than_the_trained_one_warns(tmp_path, capture, bundled_dir):
    result = invoke(["score", capture, "--model", "tiny", "--mask", "strict", "--out", tmp_path / "p.parquet",
                     "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: --mask strict differs from the mask tiny.onnx was trained with (paper)" in result.output
    same = invoke(["score", capture, "--model", "tiny", "--out", tmp_path / "q.parquet", "--no-progress"])
    assert same.exit_code == 0 and "warning" not in same.output


def test_models_lists_the_bundled_models_with_their_provenance():
    result = invoke(["models", "--json"])
    assert result.exit_code == 0, result.output
    bundled = {m["name"]: m for m in json.loads(result.stdout)["bundled"]}
    assert set(bundled) == {"nin1_port", "nin_parallel_small_port", "nin_flow_port", "trees_first_flow8_rf_port_names"}
    for model in bundled.values():
        assert len(model["classes"]) == 18 and model["input_dtype"] == "uint8" and model["size_bytes"] > 1e6
        assert model["trained"]["mask"] == "paper" and model["trained"]["split"] == "by-file"
        if model["decide"] == "flow":  # flow models run in float32 only: no int8 form to agree
            assert model["flow_packets"] >= 1 and model["agreement"] == {}
            continue
        # each engine's agreement with float32 per check set, held-out sets included
        ort = model["agreement"]["engines"]["onnxruntime:int8"]
        assert {"test:corpus", "synthetic", "services"} <= set(ort) and model["agreement"]["rows"]["services"] > 0
    assert {name for name, m in bundled.items() if m["decide"] == "flow"} == {
        "nin_flow_port",
        "trees_first_flow8_rf_port_names",
    }
    assert (
        bundled["trees_first_flow8_rf_port_names"]["flow_packets"] == 8
        and bundled["nin_flow_port"]["flow_packets"] == 2
    )
    assert (
        bundled["trees_first_flow8_rf_port_names"]["server_names"] > 100
        and bundled["nin_flow_port"]["server_names"] is None
    )
    assert bundled["nin_parallel_small_port"]["alpha"] == pytest.approx(0.47)
    table = invoke(["models"])
    assert table.exit_code == 0 and "Bundled models" in table.output and "nin1_port" in table.output
    assert "agreement with fp32" in table.output and "onnxruntime:int8" in table.output
    assert "per flow, from its first 8 packets" in table.output and "registered domains known" in table.output


def test_bench_records_a_speed_that_models_shows(capture, bundled_dir, tmp_path):
    assert catalog.recorded_speed(bundled_dir / "tiny.onnx") is None
    plain = invoke(["bench", capture, "--model", "tiny", "--runs", "1", "--batch", "64", "--json"])
    assert plain.exit_code == 0, plain.output
    assert catalog.recorded_speed(bundled_dir / "tiny.onnx") is None  # bench records only with --record
    result = invoke(["bench", capture, "--model", "tiny", "--runs", "1", "--batch", "64", "--json", "--record"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    speed = catalog.recorded_speed(bundled_dir / "tiny.onnx")["onnxruntime"]
    assert speed["engine_packets_per_s"] == report["engine"]["packets_per_s"]
    listed = json.loads(invoke(["models", "--json"]).stdout)["bundled"]
    assert [m["name"] for m in listed] == ["tiny"] and listed[0]["speed"]["onnxruntime"] == speed
    assert listed[0]["trained"]["rows"] == 123
    elsewhere = tiny_model(tmp_path / "elsewhere.onnx", ["a", "b"])  # not bundled: nothing recorded
    assert invoke(["bench", capture, "--model", elsewhere, "--runs", "1", "--json", "--record"]).exit_code == 0
    assert catalog.recorded_speed(elsewhere) is None


# ------------------------------------------------------------------------------------------- bench


def test_bench_help_shows_every_option():
    result = invoke(["bench", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--model", "--json", "--runs", "--packets", "--batch", "--backend", "--mask", "--quiet",
                   "--summary", "bench prep"):  # fmt: skip
        assert option in result.output, option


def test_bench_shows_a_bar_per_stage_and_a_table(capture, tmp_path):
    model = tiny_model(tmp_path / "t.onnx", ["a", "b"])
    result = invoke(["bench", capture, "--model", model, "--runs", "2", "--no-record"])
    assert result.exit_code == 0, result.output
    for stage in ("read + prep", "engine alone", "end to end", "2/2 runs", "end to end / engine"):
        assert stage in result.output, stage


def test_bench_flags_an_end_to_end_faster_than_the_engine_as_noise(capture, tmp_path, monkeypatch):
    import pktnin.measure as measure

    real = measure.engine_throughput
    slow = iter([0.5, 2.0])  # the engine alone "measured" at a few packets/s: noise, two runs apart

    def engine_measured_in_a_bad_moment(runner, rows, batch, min_seconds=2.0):
        result = real(runner, rows, batch, min_seconds=0.01)
        return {**result, "packets_per_s": next(slow)}

    monkeypatch.setattr(measure, "engine_throughput", engine_measured_in_a_bad_moment)
    model = tiny_model(tmp_path / "t.onnx", ["a", "b"])
    result = invoke(["bench", capture, "--model", model, "--runs", "2", "--json", "--no-record"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ratio_is_noise"] is True and report["end_to_end_over_engine"] > 1
    assert "only noise can cause" in result.stderr and "engine runs 0..2" in result.stderr


def test_bench_quiet_prints_nothing_and_summary_has_the_json(capture, tmp_path):
    model = tiny_model(tmp_path / "t.onnx", ["a", "b"])
    summary = tmp_path / "bench.json"
    result = invoke(["bench", capture, "--model", model, "--runs", "1", "--quiet", "--summary", summary,
                     "--no-record"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning" in result.output or result.output == ""
    report = json.loads(summary.read_text())
    assert report["files"] == 1 and report["engine"]["packets_per_s"] > 0


# ------------------------------------------------------------------------------------------- evaluate


def _dataset(tmp_path: Path, classes: list[str], n_per_class: int = 40, mask: str = "paper") -> Path:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(classes)), n_per_class)
    rows = rng.integers(0, 256, (y.size, 1500), dtype=np.uint8)
    split = np.full(y.size, 2, np.int8)  # all test
    flow = np.arange(y.size) // 4
    meta = {"classes": classes, "mask": mask}
    return write_dataset(tmp_path / f"ds-{'-'.join(classes)}-{mask}", rows, y, split, flow, meta)


def test_evaluate_maps_a_subset_of_the_classes_by_name(tmp_path):
    model = tiny_model(tmp_path / "m.onnx", ["web", "voip", "vpn"])
    data = _dataset(tmp_path, ["vpn", "web"])  # a subset, in another order
    result = invoke(["evaluate", model, "--data", data, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["classes"] == ["web", "voip", "vpn"] and report["data_classes"] == ["vpn", "web"]
    per_class = {r["class"]: r for r in report["packet"]["per_class"]}
    assert per_class["vpn"]["support"] == 40 and per_class["web"]["support"] == 40
    assert per_class["voip"]["support"] == 0
    assert [a["class"] for a in report["absent_classes"]] == ["voip"]
    assert report["absent_classes"][0]["predicted"] == per_class["voip"]["predicted"]
    # macro over the two classes the data has, whatever was predicted as voip
    assert report["packet"]["macro_classes"] == 2
    assert report["packet"]["macro_f1"] == pytest.approx((per_class["vpn"]["f1"] + per_class["web"]["f1"]) / 2)
    assert "mean over the 2 classes with packets in this split" in report["macro_average"]
    assert "classes of the model not in the data: voip" in result.output


def test_evaluate_refuses_classes_the_model_does_not_know(tmp_path):
    model = tiny_model(tmp_path / "m.onnx", ["web", "voip"])
    result = invoke(["evaluate", model, "--data", _dataset(tmp_path, ["web", "chat"])])
    assert result.exit_code == 2, result.output
    assert "does not know: chat" in result.output


def test_evaluate_warns_when_the_dataset_mask_differs_from_the_model(tmp_path, bundled_dir):
    result = invoke(["evaluate", "tiny", "--data", _dataset(tmp_path, ["web", "vpn"], mask="strict")])
    assert result.exit_code == 0, result.output
    assert "built with --mask strict but tiny.onnx was trained on --mask paper" in result.output


# ------------------------------------------------------------------------------------------- dataset splits


def _class_dirs(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for i in range(4):
        write_synthetic_capture(root / "alpha" / f"a{i}.pcap", packets=120, seed=10 + i)
    write_synthetic_capture(root / "beta" / "only.pcap", packets=120, seed=20)  # one file: lands in one split
    return root


def test_dataset_build_by_file_warns_about_a_class_missing_from_val_or_test(tmp_path):
    result = invoke(["dataset", "build", _class_dirs(tmp_path), "--out", tmp_path / "d", "--split", "by-file",
                     "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: no ")]
    # beta's one file sits in one split, so it lacks val and test; alpha's four files cover test at least
    assert any(line.startswith("warning: no test packets for class(es) beta:") for line in warnings), result.output
    assert all("beta" in line for line in warnings) and len(warnings) == 2


def test_dataset_build_random_split_says_it_inflates_scores(tmp_path):
    result = invoke(["dataset", "build", _class_dirs(tmp_path), "--out", tmp_path / "d", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "random packet split" in result.output and "inflates" in result.output


# ------------------------------------------------------------------------------------------- conventions


def test_version():
    result = invoke(["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"pktnin {__version__}"


def test_score_quiet_and_summary(tmp_path, capture):
    summary = tmp_path / "run.json"
    out = tmp_path / "p.parquet"
    result = invoke(["score", capture, "--model", "nin1_port", "--out", out, "--quiet", "--summary", summary])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    report = json.loads(summary.read_text())
    assert report["rows"] == pq.read_table(out).num_rows == report["packets"] > 0
    assert sum(report["labels"].values()) == report["rows"] and report["out"] == str(out)
    assert report["skipped_packets"]["dns"] > 0 and report["files_with_errors"] == []


def test_summary_into_a_missing_folder_exits_2_before_any_work(tmp_path, capture):
    out = tmp_path / "p.parquet"
    result = invoke(["score", capture, "--out", out, "--summary", tmp_path / "no" / "run.json"])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not out.exists()


def test_preprocess_summary(tmp_path, capture):
    summary = tmp_path / "prep.json"
    result = invoke(["preprocess", capture, "--out", tmp_path / "r.npz", "-q", "--summary", summary])
    assert result.exit_code == 0 and result.output == ""
    report = json.loads(summary.read_text())
    assert report["records"] == 300 and 0 < report["rows"] < 300


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        path = (*prefix, name)
        if hasattr(command, "commands"):
            yield from _commands(command, path)
        elif command.hidden:  # bench's default command: its help is `pktnin bench --help`
            yield prefix, command
        else:
            yield path, command


def test_help_fits_80_columns_and_names_every_option():
    root = typer.main.get_command(app)
    commands = list(_commands(root))
    assert len(commands) >= 11
    for path, command in [((), root), *commands]:
        result = invoke([*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, path
        assert "<bool>" not in result.output, path
        # choices are listed (--mask <paper|strict>); no Python types where a name or the choices belong
        assert not re.search(r"<str>|<list\[|<path>\.\.\.|\{[A-Z]", result.output), (path, result.output)
        for param in command.params:
            for name in (*param.opts, *param.secondary_opts) if param.param_type_name == "option" else ():
                assert name in result.output, (path, name)


@pytest.mark.tf
def test_tensorflow_start_up_logs_stay_quiet_unless_verbose(tmp_path):
    pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 40)
    rows = rng.integers(0, 256, (80, 1500), dtype=np.uint8)
    split = np.tile(np.array([0, 0, 1, 2], np.int8), 20)
    data = write_dataset(tmp_path / "ds", rows, y, split, np.arange(80) // 4, {"classes": ["a", "b"]})
    command = [sys.executable, "-m", "pktnin", "train", "nin1", "--data", str(data), "--out",
               str(tmp_path / "m.keras"), "--epochs", "1", "--width", "0.05", "--batch", "32",
               "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    assert (tmp_path / "m.keras").is_file()
    noise = ("oneDNN", "absl::InitializeLog", "cpu_feature_guard", "cuda drivers")
    assert not [line for line in quiet.stderr.splitlines() if any(n in line for n in noise)], quiet.stderr
    # -v lets them through (export-onnx, on the checkpoint just trained): the lines above are the ones TF prints
    export = [
        sys.executable,
        "-m",
        "pktnin",
        "export-onnx",
        str(tmp_path / "m.keras"),
        "--out",
        str(tmp_path / "m.onnx"),
    ]
    verbose = subprocess.run([*export, "-v"], capture_output=True, text=True, env=env, timeout=600)
    assert verbose.returncode == 0, verbose.stderr
    assert any(n in verbose.stderr for n in noise), verbose.stderr


def test_the_choices_help_lists_are_the_librarys():
    """Each Literal the command line declares holds exactly the values the library accepts."""
    from typing import get_args

    from pktnin.cli import options
    from pktnin.dataset.detect import SOURCE_KINDS
    from pktnin.dataset.format import SPLIT_NAMES
    from pktnin.dataset.options import SPLIT_MODES
    from pktnin.distributed.run import EXECUTORS
    from pktnin.engine import model_file, precision, quantize, runners, trt_build
    from pktnin.layout import MASK_PROFILES
    from pktnin.scoring.options import DECIDE_MODES
    from pktnin.scoring.writers import FORMATS
    from pktnin.trainer.augment import AUGMENTATIONS

    expected = {
        options.Mask: tuple(MASK_PROFILES), options.Backend: runners.BACKENDS, options.CpuPrecision: precision.PRECISIONS,
        options.OutputFormat: FORMATS, options.Executor: EXECUTORS, options.Decide: DECIDE_MODES, options.Split: SPLIT_NAMES,
        options.SplitMode: SPLIT_MODES, options.SourceKind: SOURCE_KINDS, options.Augmentation: AUGMENTATIONS,
        options.InputDtype: model_file.INPUT_DTYPES, options.QuantizeTarget: quantize.TARGETS,
        options.TensorRTPrecision: trt_build.PRECISIONS,
    }  # fmt: skip
    for literal, values in expected.items():
        assert get_args(literal) == tuple(values), literal
    result = invoke(["score", "--help"])
    assert "--mask <paper|strict>" in result.output and "--format <parquet|csv>" in result.output
    bad = invoke(["score", "x.pcap", "--mask", "papr"])
    assert bad.exit_code == 2 and "'paper', 'strict'" in bad.output


@pytest.mark.tf
def test_the_training_choices_are_the_trainers():
    from typing import get_args

    from pktnin.cli import options

    train = pytest.importorskip("pktnin.trainer.train")
    assert get_args(options.ClassWeighting) == train.CLASS_WEIGHTING
    assert get_args(options.Fit) == tuple(train.FIT_SPLITS)
    assert get_args(options.TrainPrecision) == train.PRECISIONS
