"""Outputs the user names (--out, --flows, --report, --summary): refused before any work when a link, anything but
a regular file of the user's, or an existing file without --force is there; never written through a link."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import write_pcap
from typer.testing import CliRunner

from pktnin import outdir
from pktnin.cli import app
from pktnin.outdir import UnsafeOutputError

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0
OTHER_UID = 4242


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", ["a", "b"], seed=3)


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    return write_pcap(tmp_path_factory.mktemp("caps") / "c.pcap", mixed_traffic(1, 60))


def _score(tmp_path, capture, model, **named):
    args = ["score", str(capture), "--model", str(model), "--no-progress"]
    named.setdefault("out", tmp_path / "p.parquet")
    for option, path in named.items():
        if option != "force":
            args += [f"--{option}", str(path)]
    if named.get("force"):
        args.append("--force")
    return CliRunner().invoke(app, args)


def _no_work_done(tmp_path: Path) -> None:
    """Nothing was read or written: no lock, manifest or parts beside the output, no output."""
    names = os.listdir(tmp_path)
    assert not [n for n in names if n.startswith(("p.parquet", ".p.parquet"))], names


@pytest.mark.parametrize("option,name", [("out", "p.parquet"), ("flows", "f.parquet"), ("report", "r.json"),
                                         ("summary", "s.json")])  # fmt: skip
@pytest.mark.parametrize("planted", ["dangling link", "link to a file", "fifo", "other user"])
@pytest.mark.parametrize("force", [False, True])
def test_planted_output_names_refuse_the_run_before_any_work(tmp_path, capture, model, option, name, planted, force):
    path = tmp_path / name
    victim = tmp_path / "victim.txt"
    if planted == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    elif planted == "link to a file":
        victim.write_text("kept")
        path.symlink_to(victim)
    elif planted == "fifo":
        os.mkfifo(path)
    else:
        if not IS_ROOT:
            pytest.skip("chown to another user needs root")
        path.write_text("theirs")
        os.chown(path, OTHER_UID, OTHER_UID)
    result = _score(tmp_path, capture, model, **{option: path}, force=force)
    assert result.exit_code == 2, result.output
    assert f"--{option} {path}" in result.output
    if option != "out":
        _no_work_done(tmp_path)
    assert os.path.lexists(path) and (planted != "link to a file" or victim.read_text() == "kept")


@pytest.mark.parametrize("option,name", [("flows", "f.parquet"), ("report", "r.json"), ("summary", "s.json")])
def test_existing_side_outputs_need_force(tmp_path, capture, model, option, name):
    path = tmp_path / name
    path.write_text("earlier")
    result = _score(tmp_path, capture, model, **{option: path})
    assert result.exit_code == 2 and "--force" in result.output, result.output
    _no_work_done(tmp_path)
    assert path.read_text() == "earlier"
    result = _score(tmp_path, capture, model, **{option: path}, force=True)
    assert result.exit_code == 0, result.output
    assert path.read_bytes() != b"earlier"


def test_a_link_planted_after_the_checks_is_not_written_through(tmp_path):
    """The final rename refuses a name that turned into a link (or someone else's file) since the checks."""
    target, victim, tmp = tmp_path / "s.json", tmp_path / "victim", tmp_path / ".s.json.x.tmp"
    victim.write_text("kept")
    tmp.write_text("ours")
    target.symlink_to(victim)
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        outdir.replace_own(tmp, target)
    assert target.is_symlink() and victim.read_text() == "kept"
    target.unlink()
    outdir.replace_own(tmp, target)
    assert target.read_text() == "ours" and not target.is_symlink()


# -- SIGTERM and SIGHUP ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_a_run_like_ctrl_c(tmp_path, capture, model, signum, code):
    """A batch scheduler's stop: the run ends as on Ctrl-C (manifest kept, lock and temporary parts removed, how
    to resume printed), exit 128 + the signal's number."""
    fifo = tmp_path / "never.fifo"  # the run reads the capture, then waits on a FIFO nobody writes
    os.mkfifo(fifo)
    out = tmp_path / "p.parquet"
    args = ["score", capture, fifo, "--model", model, "--out", out, "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "pktnin", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    started = time.monotonic()
    while not (tmp_path / "p.parquet.parts").exists():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() - started < 240, "the run did not start"
        time.sleep(0.2)
    time.sleep(1.5)
    proc.send_signal(signum)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{signal.Signals(signum).name} did not stop the run")
    text = output.decode()
    assert proc.returncode == code, text
    assert f"interrupted by {signal.Signals(signum).name}" in text and "--resume" in text and "Traceback" not in text
    names = sorted(os.listdir(tmp_path))
    assert "p.parquet.lock" not in names and "p.parquet" not in names, names
    assert json.loads((tmp_path / "p.parquet.manifest.json").read_text())["version"] >= 1
    left = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert left == [], left


# -- resume with the inputs spelled otherwise --------------------------------------------------------------------
def test_resume_with_an_input_spelled_otherwise_is_refused(tmp_path, model, monkeypatch):
    from dataclasses import replace

    from pktnin.api import ScoreJob
    from pktnin.scoring import score_files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    inputs = [write_pcap(Path("rel") / f"c{k}.pcap", mixed_traffic(k, 40)) for k in range(2)]
    out = Path("p.parquet")

    def stop(_reports):  # the run fails after its first part is recorded: the manifest keeps that file
        raise RuntimeError("stopped")

    job = ScoreJob.prepare(inputs, out, str(model))  # the CLI's settings, one file per unit
    with pytest.raises(RuntimeError, match="stopped"):
        score_files(job.files, job.runner, replace(job.opts, unit_files=1), on_saved=stop)
    job.runner.close()
    absolute = [str(tmp_path / p) for p in inputs]
    base = ["score", "--model", str(model), "--out", str(out), "--no-progress", "--resume"]
    result = CliRunner().invoke(app, [*base, *absolute])
    assert result.exit_code == 2, result.output
    assert "'rel/c0.pcap'" in result.output and "--force" in result.output
    result = CliRunner().invoke(app, [*base, *map(str, inputs)])  # the same spelling continues
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    assert set(pq.read_table(out).column("file").to_pylist()) == {"rel/c0.pcap", "rel/c1.pcap"}


# -- the parts folder swapped under a run ------------------------------------------------------------------------
def _job(tmp_path, model, n_files=3, flows=False):
    from dataclasses import replace

    from pktnin.api import ScoreJob

    inputs = [write_pcap(tmp_path / f"c{k}.pcap", mixed_traffic(k, 40)) for k in range(n_files)]
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    os.chmod(shared, 0o777)  # world-writable, no sticky bit: anyone may rename entries
    out = shared / "p.parquet"
    job = ScoreJob.prepare(inputs, out, str(model), flows=shared / "f.parquet" if flows else None)
    return job.files, job.runner, replace(job.opts, unit_files=1), out


def _swap(parts: Path, forged: Path) -> Path:
    """What the other user does: rename the run's parts folder away and put a link to a folder of theirs, holding
    copies of the run's files (relabelled), in its place. Returns where the run's own folder went."""
    import shutil

    stolen = parts.with_name("stolen")
    os.rename(parts, stolen)
    shutil.copytree(stolen, forged)
    parts.symlink_to(forged)
    return stolen


def test_parts_folder_swapped_during_the_run_publishes_nothing(tmp_path, model):
    from pktnin.scoring import score_files

    files, runner, opts, out = _job(tmp_path, model)
    forged = tmp_path / "theirs"
    swapped = []

    def swap_after_first_unit(_reports):  # a fault injector at the run's own seam: after a unit is recorded
        if not swapped:
            swapped.append(_swap(opts.out.with_name("p.parquet.parts"), forged))

    with pytest.raises(UnsafeOutputError, match="was replaced while the run used it"):
        score_files(files, runner, opts, on_saved=swap_after_first_unit)
    assert swapped and not out.exists()  # nothing published
    assert not (out.parent / "p.parquet.lock").exists()
    assert sorted(os.listdir(forged)) == sorted(os.listdir(swapped[0]))  # their folder: nothing added or removed


@pytest.mark.parametrize("flows", [False, True])
def test_parts_folder_swapped_before_publishing_publishes_nothing(tmp_path, model, monkeypatch, flows):
    """The swap between the last check and the rename: every output is staged, none is published."""
    from pktnin.scoring import score_files

    files, runner, opts, out = _job(tmp_path, model, flows=flows)
    publish = outdir.Staging.publish

    def swap_then_publish(self):
        _swap(self.held.path, tmp_path / "theirs")
        publish(self)

    monkeypatch.setattr(outdir.Staging, "publish", swap_then_publish)
    with pytest.raises(UnsafeOutputError, match="was replaced while the run used it"):
        score_files(files, runner, opts)
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["p.parquet.manifest.json", "p.parquet.parts", "stolen"]  # no output, no lock
    assert not [n for n in os.listdir(out.parent / "stolen") if n.endswith(".tmp")]  # staged files discarded


def test_a_run_that_fails_while_writing_its_outputs_publishes_none(tmp_path, model, monkeypatch):
    from pktnin.scoring import run, score_files

    files, runner, opts, out = _job(tmp_path, model, flows=True)

    def broken(self, fschema):
        raise OSError(28, "No space left on device")
        yield  # a generator, as the real one

    monkeypatch.setattr(run._Run, "_flow_batches", broken)
    with pytest.raises(OSError, match="No space left"):
        score_files(files, runner, opts)
    assert not out.exists() and not (out.parent / "f.parquet").exists()  # the packets were staged, not published
    assert not [p for p in out.parent.rglob("*.tmp")]


# -- only what the run made is removed ---------------------------------------------------------------------------
def test_files_the_run_did_not_make_are_kept(tmp_path, model):
    from pktnin.scoring import score_files

    files, runner, opts, out = _job(tmp_path, model)
    mine = {
        "p.parquet.lock": "my notes",
        ".p.parquet.abcd1234.tmp": "mine",
        ".p.parquet.manifest.json.zzzz9999.tmp": "mine too",
    }
    for name, text in mine.items():
        (out.parent / name).write_text(text)
    score_files(files, runner, opts)
    assert out.exists()
    assert {n: (out.parent / n).read_text() for n in mine} == mine
    assert sorted(os.listdir(out.parent)) == sorted([*mine, "p.parquet"])


def test_a_killed_runs_lock_is_removed_by_the_next_run(tmp_path, model):
    from pktnin.scoring import score_files

    files, runner, opts, out = _job(tmp_path, model)
    (out.parent / "p.parquet.lock").write_bytes(outdir.LOCK_MARK)  # what a run killed with -9 leaves
    score_files(files, runner, opts)
    assert sorted(os.listdir(out.parent)) == ["p.parquet"]


def test_same_named_files_behind_a_linked_parent_are_kept(tmp_path, model):
    """--out through a link to a folder: the files there that the run did not make stay."""
    from dataclasses import replace

    from pktnin.scoring import score_files

    files, runner, opts, _ = _job(tmp_path, model)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    for name in ("p.parquet.lock", ".p.parquet.abcd1234.tmp"):
        (real / name).write_text("theirs")
    score_files(files, runner, replace(opts, out=tmp_path / "link" / "p.parquet"))
    assert sorted(os.listdir(real)) == [".p.parquet.abcd1234.tmp", "p.parquet", "p.parquet.lock"]
    assert (real / "p.parquet.lock").read_text() == "theirs"
