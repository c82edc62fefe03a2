"""Exit codes of every command: 0 done, 1 the run failed or no input could be read, 2 usage, 3 some inputs
failed or were cut short (README table)."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx_fixtures import tiny_model
from typer.testing import CliRunner

from pktnin.cli import app
from pktnin.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from pktnin.synth import write_synthetic_capture

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    capture = write_synthetic_capture(root / "cap.pcap", packets=120, seed=3)
    junk = root / "junk"
    junk.mkdir()
    (junk / "notes.pcap").write_text("not a capture\n")
    return {
        "root": root,
        "capture": capture,
        "junk": junk,
        "model": tiny_model(root / "tiny.onnx", ["web", "voip"]),
        "missing": root / "missing",
    }


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


# The same mistake in every command that can make it gets the same exit code (and one "error:" line).
def usage_cases(f, out):
    return {
        "score: missing path": ("score", f["missing"], "--model", f["model"], "--out", out / "p.parquet"),
        "score: missing model": ("score", f["capture"], "--model", f["missing"] / "m.onnx", "--out", out / "p.parquet"),
        "score: unknown mask": ("score", f["capture"], "--model", f["model"], "--mask", "nope", "--out", out / "p.csv"),
        "score: unknown format": ("score", f["capture"], "--model", f["model"], "--format", "xlsx"),
        "score: batch 0": ("score", f["capture"], "--model", f["model"], "--batch", "0", "--out", out / "p.parquet"),
        "score: threads 0": ("score", f["capture"], "--model", f["model"], "--threads", "0", "--out", out / "q.csv"),
        "score: model not a model": ("score", f["capture"], "--model", f["capture"], "--out", out / "p.parquet"),
        "preprocess: missing path": ("preprocess", f["missing"], "--out", out / "r.npz"),
        "preprocess: unknown mask": ("preprocess", f["capture"], "--out", out / "r.npz", "--mask", "nope"),
        "bench prep: missing path": ("bench", "prep", f["missing"]),
        "bench prep: unknown mask": ("bench", "prep", f["capture"], "--mask", "nope"),
        "bench: missing model": ("bench", f["capture"], "--model", f["missing"] / "m.onnx", "--runs", "1"),
        "bench: unknown backend": ("bench", f["capture"], "--model", f["model"], "--backend", "cuda", "--runs", "1"),
        "export-onnx: missing checkpoint": ("export-onnx", f["missing"] / "m.keras", "--out", out / "m.onnx"),
        "export-onnx: bad opset": ("export-onnx", f["missing"] / "m.keras", "--out", out / "m.onnx", "--opset", "99"),
        "build-engine: bad precision": ("build-engine", f["model"], "--out", out / "m.plan", "--precision", "int4"),
        "build-engine: missing model": ("build-engine", f["missing"] / "m.onnx", "--out", out / "m.plan"),
        "evaluate: missing dataset": ("evaluate", f["model"], "--data", f["missing"]),
        "evaluate: unknown split": ("evaluate", f["model"], "--data", f["missing"], "--split", "dev"),
        "train: unknown preset": ("train", "nin9", "--data", f["missing"], "--out", out / "m.keras"),
        "train: unknown weighting": (
            "train",
            "nin1",
            "--data",
            f["missing"],
            "--out",
            out / "m.keras",
            "--class-weighting",
            "odd",
        ),
        "train: missing dataset": ("train", "nin1", "--data", f["missing"], "--out", out / "m.keras"),
        "fuse: missing checkpoint": (
            "fuse",
            f["missing"] / "a.keras",
            f["missing"] / "b.keras",
            "--data",
            f["missing"],
            "--out",
            out / "f.keras",
        ),
        "dataset build: unknown source kind": ("dataset", "build", f["root"], "--out", out / "ds", "--source", "x"),
    }


CASES = sorted(usage_cases({k: Path(k) for k in ("root", "capture", "junk", "model", "missing")}, Path("out")))


@pytest.mark.parametrize("case", CASES)
def test_usage_errors_exit_2(files, tmp_path, case):
    args = usage_cases(files, tmp_path)[case]
    result = invoke(*args)
    assert result.exit_code == EXIT_USAGE, result.output
    one_line_error(result)
    assert "Traceback" not in result.output
    assert not [p for p in tmp_path.iterdir()]  # nothing written


def test_missing_path_names_the_path_in_every_command(files, tmp_path):
    for args in (
        ("score", files["missing"], "--model", files["model"], "--out", tmp_path / "p.parquet"),
        ("preprocess", files["missing"], "--out", tmp_path / "r.npz"),
        ("bench", "prep", files["missing"]),
    ):
        result = invoke(*args)
        assert result.exit_code == EXIT_USAGE and "missing" in one_line_error(result), result.output


@pytest.mark.parametrize("command", ["score", "preprocess"])
def test_exit_1_when_nothing_read_3_when_some_inputs_failed_0_when_all_read(files, tmp_path, command):
    extra = ["--model", files["model"]] if command == "score" else []
    force = ["--force"]  # both refuse to replace an existing output
    out = tmp_path / ("p.parquet" if command == "score" else "r.npz")
    only_bad = invoke(command, files["junk"], *extra, "--out", out, "--no-progress")
    assert only_bad.exit_code == EXIT_FAILED, only_bad.output
    assert "no input file could be read" in one_line_error(only_bad)
    if command == "score":
        assert not out.exists()  # a run that read nothing writes nothing
    partial = invoke(command, files["junk"], files["capture"], *extra, "--out", out, "--no-progress", *force)
    assert partial.exit_code == EXIT_PARTIAL, partial.output  # junk/notes.pcap promises a capture: a failure
    assert "1 of 2 input files failed" in one_line_error(partial)
    assert "notes.pcap" in "".join(partial.output.split())  # the unreadable file is listed
    # A file found in a folder that is not a capture at all is listed apart, and is no failure.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("a note\n")
    (tmp_path / "in" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "in" / "cap.pcap").write_bytes(files["capture"].read_bytes())
    ok = invoke(command, tmp_path / "in", *extra, "--out", out, "--no-progress", *force)
    assert ok.exit_code == EXIT_OK, ok.output
    assert "not a capture, skipped (2)" in " ".join(ok.output.split())
    # Named on the command line, the same file must be a capture.
    named = invoke(command, tmp_path / "in" / "cap.pcap", tmp_path / "in" / "notes.txt", *extra, "--out", out,
                   "--no-progress", *force)  # fmt: skip
    assert named.exit_code == EXIT_PARTIAL, named.output


def test_a_deep_value_error_is_a_failed_run_not_a_usage_message(files, tmp_path, monkeypatch):
    import pktnin.api
    import pktnin.rowfile

    def broken(*args, **kwargs):
        raise ValueError("inner invariant broken")

    monkeypatch.setattr(pktnin.rowfile, "write_row_file", broken)
    result = invoke("preprocess", files["capture"], "--out", tmp_path / "r.npz", "--no-progress")
    assert result.exit_code == EXIT_FAILED, result.output
    assert one_line_error(result) == "error: ValueError: inner invariant broken"

    monkeypatch.setattr(pktnin.api, "score_files", broken)  # the name ScoreJob.run calls
    result = invoke("score", files["capture"], "--model", files["model"], "--out", tmp_path / "p.parquet",
                    "--no-progress")  # fmt: skip
    assert result.exit_code == EXIT_FAILED, result.output
    assert one_line_error(result) == "error: ValueError: inner invariant broken"
    assert "--resume" in result.output  # the hint that finished files are kept


def test_train_does_not_turn_a_deep_value_error_into_invalid_value(files, tmp_path, monkeypatch):
    import pktnin.trainer.train

    def broken(*args, **kwargs):
        raise ValueError("inner invariant broken")

    monkeypatch.setattr(pktnin.trainer.train, "train", broken)
    result = invoke("train", "nin1", "--data", files["root"], "--out", tmp_path / "m.keras", "--no-progress")
    assert result.exit_code == EXIT_FAILED, result.output
    assert one_line_error(result) == "error: ValueError: inner invariant broken"
    assert "Invalid value" not in result.output


def test_success_exits_0(files, tmp_path):
    result = invoke("score", files["capture"], "--model", files["model"], "--out", tmp_path / "p.csv", "--no-progress")
    assert result.exit_code == EXIT_OK, result.output
    result = invoke("preprocess", files["capture"], "--out", tmp_path / "r.npz", "--no-progress")
    assert result.exit_code == EXIT_OK, result.output


def test_a_file_missing_once_the_run_is_under_way_is_a_failed_run(files, tmp_path, monkeypatch):
    import pktnin.api

    def vanished(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "gone.pcap"))

    monkeypatch.setattr(pktnin.api, "score_files", vanished)
    result = invoke("score", files["capture"], "--model", files["model"], "--out", tmp_path / "p.parquet",
                    "--no-progress")  # fmt: skip
    assert result.exit_code == EXIT_FAILED, result.output
    assert "gone.pcap" in one_line_error(result)
