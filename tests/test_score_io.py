"""`pktnin score` inputs and outputs: stdin, pipes, FIFOs and compressed captures; the per-file report and exit
codes; refusing to discard earlier work or overwrite outputs; output metadata; the Python API."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import write_pcap, write_pcapng
from typer.testing import CliRunner

import pktnin
from pktnin.cli import app
from pktnin.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from pktnin.kernels.capture import CaptureReader

CLASSES = ["Web", "VoIP", "Chat"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", CLASSES, seed=5)


@pytest.fixture(scope="module")
def caps(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("caps")
    pcap = write_pcap(root / "a.pcap", mixed_traffic(1, 150), nanosecond=True)
    records = [("epb", 0, ts, data) for ts, data in mixed_traffic(2, 90)]
    pcapng = write_pcapng(root / "b.pcapng", [{"interfaces": [(1, 9)], "records": records}])
    return {"root": root, "pcap": pcap, "pcapng": pcapng}


def run_cli(*args, input=None):
    result = CliRunner().invoke(app, ["score", *map(str, args), "--no-progress"], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def run_subprocess(args, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pktnin", "score", *map(str, args), "--no-progress"], env=env,
                          capture_output=True, timeout=300, **kw)  # fmt: skip


def rows_of(path: Path) -> list[tuple]:
    t = pq.read_table(path)
    return list(zip(t["frame"].to_pylist(), t["timestamp"].cast(pa.int64()).to_pylist(), t["label"].to_pylist(),
                    t["flow_id"].to_pylist()))  # fmt: skip


def records(reader: CaptureReader) -> list[tuple]:
    out = []
    for b in reader:
        out += [(int(f), int(t), bytes(b.buf[o : o + c])) for f, t, o, c in zip(b.frame, b.ts_ns, b.pkt_off, b.caplen)]
    return out


# -- streams and compressed captures: the reader --------------------------------------------------------------
@pytest.mark.parametrize("name", ["pcap", "pcapng"])
def test_stream_reader_gives_the_mapped_readers_records(tmp_path, caps, name):
    src = caps[name]
    expected = records(CaptureReader(src))
    gz = tmp_path / (src.name + ".gz")
    gz.write_bytes(gzip.compress(src.read_bytes()))
    reader = CaptureReader(gz, window_bytes=333)  # small windows: records straddle many window ends
    assert reader.compression == "gzip" and records(reader) == expected and reader.fatal is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"sleep 0.2; cat '{src}' > '{fifo}'"])
    assert records(CaptureReader(fifo, window_bytes=333)) == expected
    writer.wait()
    # A cut .gz keeps the records before the cut and says why it stopped.
    data = gz.read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: len(data) - 40])
    reader = CaptureReader(cut)
    got = records(reader)
    assert got == expected[: len(got)] and reader.fatal is not None and "gzip" in str(reader.fatal)


def test_zstd_is_read_or_named(tmp_path, caps):
    path = tmp_path / "a.pcap.zst"
    try:
        import zstandard
    except ImportError:
        path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 40)
        with pytest.raises(Exception, match="zstd-compressed"):
            CaptureReader(path)
        return
    path.write_bytes(zstandard.ZstdCompressor().compress(caps["pcap"].read_bytes()))
    assert records(CaptureReader(path)) == records(CaptureReader(caps["pcap"]))


# -- streams through the command ------------------------------------------------------------------------------
def test_stdin_fifo_and_gz_score_the_same_rows_as_the_file(tmp_path, caps, model):
    src = caps["pcap"]
    assert run_cli(src, "--model", model, "--out", tmp_path / "file.parquet").exit_code == EXIT_OK
    expected = rows_of(tmp_path / "file.parquet")
    assert len(expected) > 50

    # stdin as "-", a real pipe
    with open(src, "rb") as fh:
        done = run_subprocess(["-", "--model", model, "--out", tmp_path / "stdin.parquet"], stdin=fh)
    assert done.returncode == EXIT_OK, done.stderr.decode()
    assert rows_of(tmp_path / "stdin.parquet") == expected
    assert pq.read_table(tmp_path / "stdin.parquet")["file"][0].as_py() == "-"

    # /dev/stdin and process substitution, as a shell writes them
    script = (f"cat '{src}' | {sys.executable} -m pktnin score /dev/stdin --model '{model}' "
              f"--out '{tmp_path}/devstdin.parquet' --no-progress && "
              f"{sys.executable} -m pktnin score <(cat '{src}') --model '{model}' "
              f"--out '{tmp_path}/subst.parquet' --no-progress")  # fmt: skip
    done = subprocess.run(["bash", "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr.decode()
    assert rows_of(tmp_path / "devstdin.parquet") == expected == rows_of(tmp_path / "subst.parquet")

    # a named pipe whose writer comes later
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"sleep 1; cat '{src}' > '{fifo}'"])
    assert run_cli(fifo, "--model", model, "--out", tmp_path / "fifo.parquet").exit_code == EXIT_OK
    writer.wait()
    assert rows_of(tmp_path / "fifo.parquet") == expected

    # stdin replaced by the test runner (no file descriptor), and a gzip-compressed capture
    assert run_cli("-", "--model", model, "--out", tmp_path / "s2.parquet", input=src.read_bytes()).exit_code == 0
    assert rows_of(tmp_path / "s2.parquet") == expected
    gz = tmp_path / "a.pcap.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert run_cli(gz, "--model", model, "--out", tmp_path / "gz.parquet").exit_code == EXIT_OK
    assert rows_of(tmp_path / "gz.parquet") == expected


def test_ctrl_c_stops_a_run_waiting_on_a_fifo_that_is_never_written(tmp_path, model):
    fifo = tmp_path / "never.fifo"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # A shell starts a background job with SIGINT ignored and a child inherits that (then Ctrl-C rightly does
    # nothing): the command runs with Python's own SIGINT handler, as from a terminal.
    as_from_a_terminal = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'pktnin'; runpy.run_module('pktnin', run_name='__main__', alter_sys=True)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", as_from_a_terminal, "score", str(fifo), "--model", str(model), "--out",
         str(tmp_path / "p.parquet"), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    started = time.monotonic()
    while not (tmp_path / "p.parquet.parts").exists():  # made when the run starts: the reader waits on the FIFO
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() - started < 240, "the run did not start"
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("Ctrl-C did not stop a run waiting on a FIFO")
    assert proc.returncode == 130, err.decode()
    assert "interrupted" in err.decode()


# -- exit codes and the per-file report -----------------------------------------------------------------------
def test_report_exit_codes_and_not_captures(tmp_path, caps, model):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    write_pcap(root / ".git" / "hidden.pcap", mixed_traffic(7, 20))  # a hidden folder is not entered
    long_name = "a-very-long-capture-file-name-that-does-not-fit-in-one-column-of-an-80-column-table.pcap"
    (root / "sub" / long_name).write_bytes(caps["pcap"].read_bytes()[:-30])  # cut short
    (root / "good.pcapng").write_bytes(caps["pcapng"].read_bytes())
    (root / "notes.txt").write_text("hello\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 30)
    (root / "broken.pcap").write_bytes(b"\x00" * 64)
    report = tmp_path / "report.json"
    result = run_cli(root, "--model", model, "--out", tmp_path / "p.parquet", "--report", report)
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert long_name in "".join(result.output.split())  # wrapped, never cut
    rows = {Path(r["file"]).name: r for r in json.loads(report.read_text())}
    assert set(rows) == {long_name, "good.pcapng", "notes.txt", ".DS_Store", "broken.pcap"}
    assert rows["good.pcapng"]["status"] == "ok" and rows["good.pcapng"]["rows"] > 0
    assert rows["good.pcapng"]["error"] is None
    cut = rows[long_name]
    assert cut["status"] == "partial" and cut["error_offset"] > 0 and "truncated" in cut["error"]
    assert cut["records"] > 0 and cut["rows"] <= cut["records"] and isinstance(cut["skips"], dict)
    assert rows["broken.pcap"]["status"] == "failed" and rows["broken.pcap"]["error_offset"] == 0
    assert rows["notes.txt"]["status"] == rows[".DS_Store"]["status"] == "not a capture"
    t = pq.read_table(tmp_path / "p.parquet")
    assert sum(r["rows"] for r in rows.values()) == t.num_rows

    again = run_cli(root, "--model", model, "--out", tmp_path / "p2.parquet", "--report", report)
    assert again.exit_code == EXIT_USAGE and "--report" in again.output  # the report is not replaced either

    csv_report = tmp_path / "report.csv"
    result = run_cli(root / "good.pcapng", "--model", model, "--out", tmp_path / "q.parquet", "--report", csv_report)
    assert result.exit_code == EXIT_OK, result.output
    (row,) = list(csv.DictReader(csv_report.open()))
    assert row["status"] == "ok" and int(row["rows"]) == rows["good.pcapng"]["rows"]
    assert json.loads(row["skips"]) == rows["good.pcapng"]["skips"]

    # A hidden folder named on the command line is read.
    result = run_cli(root / ".git", "--model", model, "--out", tmp_path / "h.parquet")
    assert result.exit_code == EXIT_OK and pq.read_table(tmp_path / "h.parquet").num_rows > 0


# -- outputs checked first; earlier work never dropped silently ----------------------------------------------
def test_outputs_are_checked_before_work_starts(tmp_path, caps, model):
    src = caps["pcap"]
    folder = tmp_path / "dir"
    folder.mkdir()
    result = run_cli(src, "--model", model, "--out", folder)
    assert result.exit_code == EXIT_USAGE and "is a folder" in result.output
    result = run_cli(src, "--model", model, "--out", tmp_path / "x.parquet", "--format", "csv")
    assert result.exit_code == EXIT_USAGE and "ends in .parquet" in result.output
    assert run_cli(src, "--model", model, "--out", tmp_path / "x.csv").exit_code == EXIT_OK  # csv from the suffix
    assert (tmp_path / "x.csv").read_text().startswith('"file","frame"')
    before = (tmp_path / "x.csv").stat().st_mtime_ns
    result = run_cli(src, "--model", model, "--out", tmp_path / "x.csv")
    assert result.exit_code == EXIT_USAGE and "--force" in result.output
    assert (tmp_path / "x.csv").stat().st_mtime_ns == before
    assert run_cli(src, "--model", model, "--out", tmp_path / "x.csv", "--force").exit_code == EXIT_OK
    result = run_cli(src, "--model", model, "--out", tmp_path / "y.parquet", "--report", tmp_path / "r.txt")
    assert result.exit_code == EXIT_USAGE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "x.csv"]  # nothing else written


def test_earlier_progress_is_not_discarded_without_force(tmp_path, caps, model):
    from pktnin.scoring.manifest import MANIFEST_VERSION, manifest_path

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.pcap", "b.pcapng"):
        (inputs / name).write_bytes(caps[name.split(".")[1]].read_bytes())
    out = tmp_path / "p.parquet"
    # An earlier run that finished one file of two and was killed: its manifest and part are left.
    assert run_cli(inputs / "a.pcap", "--model", model, "--out", out).exit_code == EXIT_OK
    unit = {"files": [{"report": {"path": str((inputs / "a.pcap").resolve())}}]}
    manifest = {"version": MANIFEST_VERSION, "settings": {}, "files": {"0" * 24: unit}}
    manifest_path(out).write_text(json.dumps(manifest))
    out.unlink()

    result = run_cli(inputs, "--model", model, "--out", out)
    assert result.exit_code == EXIT_USAGE, result.output
    text = " ".join(result.output.split())
    assert "1 finished files of an earlier run" in text and "--resume" in text and "--force" in text
    assert manifest_path(out).exists() and not out.exists()

    result = run_cli(inputs, "--model", model, "--out", out, "--resume", "--probs")
    assert result.exit_code == EXIT_USAGE, result.output
    text = " ".join(result.output.split())
    assert "other settings" in text and "probs: null -> true" in text and "model: null ->" in text
    assert manifest_path(out).exists()

    result = run_cli(inputs, "--model", model, "--out", out, "--resume", "--probs", "--force")
    assert result.exit_code == EXIT_OK, result.output
    assert not manifest_path(out).exists() and pq.read_table(out).num_rows > 0


def test_a_real_resume_with_the_same_settings_is_accepted(tmp_path, caps, model):
    from pktnin.api import ScoreJob

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.pcap", "b.pcapng"):
        (inputs / name).write_bytes(caps[name.split(".")[1]].read_bytes())
    out = tmp_path / "p.parquet"
    job = ScoreJob.prepare([inputs], out, model)  # both files in one unit of work

    def killed(reports):
        raise KeyboardInterrupt

    from pktnin.scoring import score_files

    with pytest.raises(KeyboardInterrupt):
        score_files(job.files, job.runner, job.opts, on_saved=killed)
    job.runner.close()
    assert run_cli(inputs, "--model", model, "--out", out).exit_code == EXIT_USAGE  # would drop the finished file
    result = run_cli(inputs, "--model", model, "--out", out, "--resume")
    assert result.exit_code == EXIT_OK, result.output
    assert "2 taken from the earlier run" in result.output
    assert run_cli(inputs, "--model", model, "--out", tmp_path / "fresh.parquet").exit_code == EXIT_OK
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "fresh.parquet"))


def test_all_failed_writes_nothing(tmp_path, model):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x1f\x8b" + b"\x00" * 20)  # gzip magic, but no gzip stream
    result = run_cli(bad, "--model", model, "--out", tmp_path / "p.parquet", "--report", tmp_path / "r.json")
    assert result.exit_code == EXIT_FAILED, result.output
    assert "gzip-compressed" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pcap", "r.json"]


# -- output schema and metadata ------------------------------------------------------------------------------
def test_parquet_metadata_names_what_produced_the_rows(tmp_path, caps, model):
    from pktnin import __version__
    from pktnin.engine.cache import file_sha256
    from pktnin.layout import LAYOUT_VERSION

    out, flows = tmp_path / "p.parquet", tmp_path / "f.parquet"
    assert run_cli(caps["pcap"], "--model", model, "--out", out, "--flows", flows, "--mask", "strict").exit_code == 0
    for path in (out, flows):
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(path).metadata.items() if k.startswith(b"pktnin.")}
        assert meta["pktnin.model"] == model.name and meta["pktnin.model_sha256"] == file_sha256(model)
        assert meta["pktnin.mask"] == "strict" and meta["pktnin.layout_version"] == str(LAYOUT_VERSION)
        assert meta["pktnin.version"] == __version__ and "0-based" in meta["pktnin.frame"]
        assert "scored packets only" in meta["pktnin.flow_packets"]
    packets, flow_rows = pq.read_table(out), pq.read_table(flows)
    # Every packet row's (file, flow_id) is a flow row, and flow counts are the scored packets of the flow.
    keys = packets.group_by(["file", "flow_id"]).aggregate([("frame", "count")])
    joined = flow_rows.join(keys, ["file", "flow_id"])
    assert joined.num_rows == flow_rows.num_rows == keys.num_rows
    assert joined["packets"].to_pylist() == joined["frame_count"].to_pylist()


# -- the Python API ------------------------------------------------------------------------------------------
def test_python_api_returns_the_rows_the_cli_writes(tmp_path, caps, model):
    out = tmp_path / "p.parquet"
    assert run_cli(caps["root"], "--model", model, "--out", out, "--probs").exit_code == EXIT_OK
    cli = pq.read_table(out)
    table = pktnin.score([caps["root"]], model, probs=True)
    assert isinstance(table, pa.Table) and table.num_rows == cli.num_rows > 0
    assert table.equals(cli.cast(table.schema))
    reports = []
    batches = list(pktnin.iter_scores([caps["root"]], model, probs=True, reports=reports))
    assert all(isinstance(b, pa.RecordBatch) for b in batches) and len(batches) >= 2
    assert pa.Table.from_batches(batches).equals(table)
    assert [r.status for r in reports] == ["ok", "ok"]
    assert table.schema.metadata[b"pktnin.model"] == model.name.encode()
    assert table.to_pandas()["label"].isin(CLASSES).all()
    # Stopping the iteration early stops the run's threads.
    before = threading.active_count()
    it = pktnin.iter_scores([caps["root"]], model)
    assert next(it).num_rows > 0
    it.close()
    assert threading.active_count() == before

    result = pktnin.score_to_files([caps["pcap"]], tmp_path / "q.csv", model)
    assert result.outputs == [tmp_path / "q.csv"] and result.rows_written > 0

    rows = pktnin.preprocess([caps["root"]], tmp_path / "r.npz")
    saved = np.load(tmp_path / "r.npz")
    assert rows["x"].shape == saved["x"].shape and rows["x"].shape[0] == cli.num_rows
    np.testing.assert_array_equal(rows["frame"], cli["frame"].to_numpy())
    np.testing.assert_array_equal(rows["flow_key"], cli["flow_id"].to_numpy())


# -- progress --------------------------------------------------------------------------------------------------
def test_progress_moves_by_bytes_within_a_file(tmp_path, model):
    from pktnin.api import ScoreJob
    from pktnin.cli.console import FileProgress

    big = write_pcap(tmp_path / "big.pcap", mixed_traffic(4, 3000), nanosecond=True)
    seen = []

    class Progress(FileProgress):
        def file_done(self, n=1):
            seen.append(("done", n, self.done_bytes))
            super().file_done(n)

        def add_bytes(self, n, packets=None):
            seen.append(("bytes", n, packets))
            super().add_bytes(n, packets)

    from pktnin.scoring import cpu_stages

    job = ScoreJob.prepare([big], tmp_path / "p.parquet", model)
    old = cpu_stages.READ_CHUNK
    cpu_stages.READ_CHUNK = 500  # several chunks in one file
    progress = Progress(1, big.stat().st_size)
    try:
        result = job.run(progress=progress)
    finally:
        cpu_stages.READ_CHUNK = old
    steps = [n for kind, n, _ in seen if kind == "bytes"]
    assert len(steps) >= 3 and sum(steps) == big.stat().st_size
    assert sum(p for kind, _, p in seen if kind == "bytes") == result.packets == progress.packets
    assert [x[:2] for x in seen].index(("done", 1)) > 1  # bytes moved before the file was finished
    assert progress.done_bytes == big.stat().st_size and progress.fraction() == 1.0
