"""What a user of `pktnin score` sees when things are odd: many non-captures in a folder, nothing scored, an
output name that does not say its format, an output folder that does not exist."""

from __future__ import annotations

import dataclasses
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


# -- the progress bar ------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def bar_line(monkeypatch, state_calls, total_files=2, total_bytes=4 << 20, width=80):
    """Run `state_calls(bar, clock)` on a bar drawn on an 80-column terminal; the bar's line as last drawn."""
    import io

    from rich.console import Console

    from pktnin.cli import console as console_mod

    screen = io.StringIO()
    term = Console(file=screen, width=width, force_terminal=False, color_system=None)
    monkeypatch.setattr(console_mod, "console", term)
    clock = FakeClock()
    with console_mod.file_progress(total_files, "score", total_bytes=total_bytes, clock=clock) as bar:
        state_calls(bar, clock)
        with term.capture() as captured:
            term.print(bar._progress.make_tasks_table(bar._progress.tasks))
    return captured.get().rstrip("\n"), bar


def test_bar_counts_scored_work_not_work_read_ahead(monkeypatch):
    mib = 1 << 20

    def calls(bar, clock):
        clock.now += 12  # kernels and model load: nothing scored yet
        bar.add_bytes(2 * mib, 1000)  # read ahead, waiting for the model
        bar.add_bytes(1 * mib, 500)
        assert bar.fraction() == 0 and bar.status().endswith("starting")
        clock.now += 1
        bar.add_packets(1000)  # the first chunk is scored: its bytes are done, not the second's
        assert bar.done_bytes == 2 * mib and bar.packets == 1000
        clock.now += 2
        bar.add_packets(250)
        assert bar.done_bytes == 2 * mib  # half of the second chunk: not done yet
        # 1,250 packets in the 2 s since the first work was done; 50% done in those 2 s: 2 s left
        assert bar.rate() == (625.0, 0.25) and bar.eta() == pytest.approx(2.0)

    line, bar = bar_line(monkeypatch, calls)
    assert "\n" not in line and len(line) <= 80
    assert "50%" in line and "2.0/4.0 MiB" in line and "0/2 files" in line and "1,250 pkts" in line
    assert "625/s" in line and "eta 0:00:02" in line


def test_bar_is_one_line_at_80_columns_with_large_counts(monkeypatch):
    gib = 1 << 30

    def calls(bar, clock):
        bar.add_bytes(700 * gib, 123_456_789)
        bar.add_packets(1)
        clock.now += 3600
        bar.add_packets(123_456_788)
        bar.file_done(12_345)

    line, bar = bar_line(monkeypatch, calls, total_files=99_999, total_bytes=1000 * gib)
    assert "\n" not in line and len(line) <= 80, line
    assert "70%" in line and "123M pkts" in line and "34.3k/s" in line and "12345/99999 files" in line
    assert "eta 0:25:43" in line  # 30% left at 70% an hour


def test_bar_without_sizes_counts_files_and_reaches_the_end(monkeypatch):
    def calls(bar, clock):
        bar.add_bytes(100, None)  # a stream: size unknown
        clock.now += 5
        bar.add_packets(10)
        bar.file_done()
        bar.file_done()

    line, bar = bar_line(monkeypatch, calls, total_bytes=0)
    assert "100%" in line and "2/2 files" in line and "10 pkts" in line and len(line) <= 80


def test_bar_counts_units_of_work_once_the_run_tells_them(monkeypatch):
    def calls(bar, clock):
        bar.set_units(12, 3)  # 3 finished by an earlier run
        bar.add_bytes(1 << 20, 1000)
        bar.add_packets(500)
        clock.now += 4
        bar.add_packets(500)
        bar.unit_done()
        bar.unit_done()
        bar.file_done()

    line, bar = bar_line(monkeypatch, calls)
    assert "5/12 units" in line and "files" not in line and "1,000 pkts" in line and "250/s" in line
    assert "\n" not in line and len(line) <= 80

    def many(bar, clock):  # a large run still fits one 80-column line
        bar.set_units(123_456, 99_999)
        bar.add_bytes(700 << 30, 123_456_789)
        clock.now += 3600
        bar.add_packets(123_456_789)

    line, bar = bar_line(monkeypatch, many, total_files=99_999, total_bytes=1000 << 30)
    assert "99999/123456 units" in line and "123M pkts" in line and "\n" not in line and len(line) <= 80, line


def test_ray_driver_tells_the_bar_each_units_bytes(tmp_path, model):
    """An executor that reports per unit (Ray's) moves the bar by the unit's bytes: it ends at 100%."""
    from pktnin.cli.console import FileProgress
    from pktnin.engine.runners import open_runner
    from pktnin.scoring.options import ScoreOptions
    from pktnin.scoring.run import run_units
    from pktnin.scoring.unit_run import LocalExecutor

    files = [write_synthetic_capture(tmp_path / f"c{i}.pcap", packets=60, seed=i) for i in range(3)]
    runner = open_runner(model, "onnxruntime")
    opts = ScoreOptions(out=tmp_path / "p.parquet", prep_threads=1, unit_bytes=1, unit_files=1)

    class PerUnit(LocalExecutor):
        live_progress = False

        def __call__(self, units, parts_dir, progress=None):
            yield from super().__call__(units, parts_dir, None)  # as Ray: nothing told while a unit runs

    class StopAfterOne(FileProgress):  # the driver stopped after its first unit, as a kill would
        def unit_done(self):
            super().unit_done()
            raise KeyboardInterrupt

    size = sum(f.stat().st_size for f in files)
    with pytest.raises(KeyboardInterrupt):
        run_units(files, opts, list(runner.classes), PerUnit(runner, opts), progress=StopAfterOne(3, size))

    class Told(FileProgress):
        def set_units(self, total, done=0):
            self.told = (total, done)
            super().set_units(total, done)

    progress = Told(3, size)
    resume = dataclasses.replace(opts, resume=True)
    result = run_units(files, resume, list(runner.classes), PerUnit(runner, resume), progress=progress)
    assert progress.told == (3, 1)  # a unit a file; one finished before the resume
    assert progress.fraction() == 1.0 and progress.packets == result.packets > 0 and progress.files == 3
    assert progress.units == progress.total_units == result.units == 3 and "3/3 units" in progress.status()


# -- the summary's times ---------------------------------------------------------------------------------------
def test_summary_separates_wall_time_from_the_steady_rate(tmp_path, model):
    import json

    capture = write_synthetic_capture(tmp_path / "cap.pcap", packets=200, seed=4)
    summary = tmp_path / "s.json"
    result = invoke("score", capture, "--model", model, "--out", tmp_path / "p.parquet", "--summary", summary,
                    "--no-progress")  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    figures = json.loads(summary.read_text())
    timings = figures["timings"]
    assert {"model", "kernels", "scoring", "outputs", "wall"} <= set(timings)
    assert timings["scoring"] == pytest.approx(figures["seconds"], abs=1e-3)
    parts = sum(v for k, v in timings.items() if k != "wall")
    assert parts <= timings["wall"] + 1e-3 and timings["wall"] - parts < 1.0  # the rest is small and named
    text = " ".join(result.output.split())
    assert f"packets/s over {figures['seconds']:.2f} s of scoring" in text
    assert f"{timings['wall']:.2f} s in all: model load and engine choice" in text and "packet kernels" in text


def test_time_line_names_every_cost_and_the_rest():
    from pktnin.cli.score import time_line

    line = time_line({"model": 2.0, "kernels": 1.5, "scoring": 1.0, "outputs": 0.2, "wall": 4.9})
    assert line == (
        "4.90 s in all: model load and engine choice 2.00 s, packet kernels 1.50 s, scoring 1.00 s, "
        "outputs 0.20 s, other 0.20 s"
    )
    assert time_line({"ray_start": 30.0, "scoring": 5.0, "wall": 35.0}) == (
        "35.00 s in all: Ray start 30.00 s, scoring (actors' start included) 5.00 s"
    )
