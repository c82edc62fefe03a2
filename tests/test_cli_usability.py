"""What a user of `pktnin score` sees when things are odd: many non-captures in a folder, nothing scored, an
output name that does not say its format, an output folder that does not exist."""

from __future__ import annotations

from pathlib import Path

import packetgen as pg
import pcapgen
import pytest
from onnx_fixtures import tiny_model
from typer.testing import CliRunner

from pktnin.cli import app
from pktnin.cli.errors import EXIT_OK, EXIT_USAGE
from pktnin.synth import write_synthetic_capture


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", ["web", "voip"])


def test_many_non_captures_make_one_short_line_and_the_report_lists_them_all(tmp_path, model):
    folder = tmp_path / "in"
    folder.mkdir()
    write_synthetic_capture(folder / "cap.pcap", packets=50, seed=1)
    for i in range(40):
        (folder / f"note-{i:02}.txt").write_text("not a capture\n")
    report = tmp_path / "report.json"
    result = invoke("score", folder, "--model", model, "--out", tmp_path / "p.csv", "--report", report,
                    "--no-progress")  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("not a capture")]
    assert line.startswith("not a capture, skipped (40): ") and line.endswith("and 37 more (--report lists them)")
    assert line.count("note-") == 3 and len(line) < 3 * len(str(folder / "note-00.txt")) + 80
    assert report.read_text().count("not a capture") == 40


def test_nothing_scored_prints_no_empty_label_table(tmp_path, model):
    arp = pg.ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes(20), ethertype=0x0806)
    capture = pcapgen.write_pcap(tmp_path / "arp.pcap", [arp, arp])
    result = invoke("score", capture, "--model", model, "--out", tmp_path / "p.csv", "--no-progress")
    assert result.exit_code == EXIT_OK, result.output
    assert "Packets per label" not in result.output
    assert "0 packets scored" in result.output and "non-ip" in result.output


@pytest.mark.parametrize("name", ["out.txt", "preds.json"])
def test_an_output_suffix_that_names_no_format_is_refused_unless_format_is_given(tmp_path, model, name):
    capture = write_synthetic_capture(tmp_path / "cap.pcap", packets=30, seed=2)
    out = tmp_path / name
    refused = invoke("score", capture, "--model", model, "--out", out, "--no-progress")
    assert refused.exit_code == EXIT_USAGE and "neither .parquet nor .csv" in refused.output, refused.output
    assert not out.exists()
    given = invoke("score", capture, "--model", model, "--out", out, "--format", "csv", "--no-progress")
    assert given.exit_code == EXIT_OK, given.output
    assert out.read_text().startswith('"file","frame"')


@pytest.mark.parametrize("option", ["--out", "--flows", "--report"])
def test_an_output_folder_that_does_not_exist_is_refused_before_any_work(tmp_path, model, option):
    capture = write_synthetic_capture(tmp_path / "cap.pcap", packets=30, seed=2)
    target = tmp_path / "nodir" / "sub" / ("x.json" if option == "--report" else "x.parquet")
    args = {"--out": tmp_path / "p.parquet", option: target}
    result = invoke("score", capture, "--model", model, *[a for kv in args.items() for a in kv], "--no-progress")
    assert result.exit_code == EXIT_USAGE and "does not exist (create it first)" in result.output, result.output
    assert not (tmp_path / "nodir").exists() and not Path(tmp_path / "p.parquet").exists()
