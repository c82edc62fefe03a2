"""Safety of `score`'s side files in a shared output directory: planted links and manifests, stray temporary files
after a kill, two runs on one output, content checks on resume, and `preprocess` to an unwritable directory."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import pcap_bytes, write_pcap
from typer.testing import CliRunner

from pktnin import outdir
from pktnin.cli import app
from pktnin.outdir import OutputBusyError, OutputNotWritableError, UnsafeOutputError
from pktnin.scoring import ScoreOptions, score_files
from pktnin.scoring import manifest as mf

CLASSES = ["Web", "VoIP", "Chat", "Video"]
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
IS_ROOT = os.geteuid() == 0
OTHER_UID = 4242  # "another user" when the tests run as root (chown needs it)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", CLASSES, seed=5)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("caps")
    return [write_pcap(root / f"c{k}.pcap", mixed_traffic(k, 50), nanosecond=True) for k in range(3)]


def _opts(out: Path, model: Path, **kw) -> ScoreOptions:
    return ScoreOptions(out=out, flows_out=None, batch=16, model_id=str(model), unit_files=1, **kw)


def _runner(model: Path):
    from pktnin.engine.runners import open_runner

    return open_runner(model, "onnxruntime")


def _shared_dir(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: anyone may create names in it
    return shared


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root (not following links) with its content or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
    return out


def _as_other_user(path: Path) -> None:
    """Make `path` look planted by someone else: another owner when we can chown, else writable by others."""
    if IS_ROOT:
        os.lchown(path, OTHER_UID, OTHER_UID)
    elif not path.is_symlink():
        os.chmod(path, 0o777 if path.is_dir() else 0o666)


# -- planted links and manifests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("resume", [False, True])
def test_planted_parts_symlink_is_not_followed(tmp_path, inputs, model, resume):
    shared = _shared_dir(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("thesis.tex", "data.csv", "abcd1234-000001.packets.parquet"):
        (victim / name).write_text(f"precious {name}\n")
    before = _tree(victim)
    out = shared / "out.parquet"
    (shared / "out.parquet.parts").symlink_to(victim)
    _as_other_user(shared / "out.parquet.parts")
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        score_files(inputs, _runner(model), _opts(out, model, resume=resume))
    assert _tree(victim) == before  # nothing outside the outputs touched
    assert sorted(os.listdir(shared)) == ["out.parquet.parts"]  # no output, no lock or temporary left
    # The command says so in one line and fails.
    res = CliRunner().invoke(
        app,
        ["score", *map(str, inputs), "--model", str(model), "--out", str(out), "--no-progress"]
        + (["--resume"] if resume else []),
    )
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "symbolic link" in text and "Traceback" not in text
    assert _tree(victim) == before


def test_planted_manifest_and_part_are_not_trusted(tmp_path, inputs, model):
    shared = _shared_dir(tmp_path)
    out = shared / "out.parquet"
    opts = _opts(out, model, resume=True)
    # Someone else plants a manifest that claims every input is done, with one forged row in a part.
    parts = shared / "out.parquet.parts"
    parts.mkdir()
    forged = pa.table({"file": [str(inputs[0])], "label": ["forged"]})
    pq.write_table(forged, parts / "00000000-000001.packets.parquet")
    entry = {
        "stamp": mf.file_stamp(inputs[0]),
        "part": "00000000-000001.packets.parquet",
        "flows_part": None,
        "packets": 1,
        "flows": 0,
        "label_counts": [1, 0, 0, 0],
        "report": {"index": 0, "path": str(inputs[0])},
    }
    settings = opts.settings(CLASSES)
    manifest = {
        "version": mf.MANIFEST_VERSION,
        "settings": settings,
        "files": {mf.file_key(p): dict(entry, stamp=mf.file_stamp(p)) for p in inputs},
    }
    (shared / "out.parquet.manifest.json").write_text(json.dumps(manifest))
    for p in (parts / "00000000-000001.packets.parquet", parts, shared / "out.parquet.manifest.json"):
        _as_other_user(p)
    before = _tree(shared)
    with pytest.raises(UnsafeOutputError):
        score_files(inputs, _runner(model), opts)
    assert not out.exists()  # no forged row accepted
    assert _tree(shared) == before  # and nothing of theirs removed


def test_part_names_outside_the_parts_folder_are_ignored(tmp_path, inputs, model):
    out = tmp_path / "out.parquet"
    res = score_files(inputs, _runner(model), _opts(out, model))
    m = mf.Manifest(mf.manifest_path(out), {}, {"a": {"part": "../../etc/passwd"}, "b": {"part": "ok.parquet"}})
    assert m.part_names() == {"ok.parquet"}
    assert res.rows_written == pq.read_table(out).num_rows > 0


def test_side_files_are_private(tmp_path, inputs, model, monkeypatch):
    out = tmp_path / "out.parquet"
    seen = {}

    def on_saved(_reports):
        seen["parts"] = stat.S_IMODE(os.lstat(mf.parts_dir(out)).st_mode)
        seen["manifest"] = stat.S_IMODE(os.lstat(mf.manifest_path(out)).st_mode)
        seen["lock"] = outdir.lock_path(out).exists()

    score_files(inputs, _runner(model), _opts(out, model), on_saved=on_saved)
    assert seen == {"parts": 0o700, "manifest": 0o600, "lock": True}
    assert sorted(os.listdir(tmp_path)) == ["out.parquet"]


def test_unknown_files_in_the_parts_folder_are_kept(tmp_path, inputs, model):
    out = tmp_path / "out.parquet"
    parts = mf.parts_dir(out)
    parts.mkdir(mode=0o700)
    (parts / "notes.txt").write_text("mine, not pktnin's\n")
    score_files(inputs, _runner(model), _opts(out, model))
    assert (parts / "notes.txt").read_text() == "mine, not pktnin's\n"  # not deleted; so the folder stays


# -- kills during a save, resume ---------------------------------------------------------------------------------
KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_outdir import _opts, _runner
from pktnin.scoring import score_files
from pktnin.scoring import run

run.SAVE_S = 0  # the manifest saved after each unit, not by the clock: the kill lands at the same save every time
real_rename = os.rename
calls = {{"n": 0}}

def rename(src, dst, *args, **kw):  # SIGKILL once the temporary file of the target is fully written
    if str(dst).endswith({suffix!r}):
        calls["n"] += 1
        if calls["n"] == {at}:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(src, dst, *args, **kw)

os.rename = rename
model = Path({model!r})
score_files([Path(p) for p in {inputs!r}], _runner(model), _opts(Path({out!r}), model))
"""


@pytest.mark.parametrize("suffix,at", [(".manifest.json", 2), (".manifest.json", 3), ("out.parquet", 1)])
def test_kill_during_a_save_then_resume_leaves_no_temporary_files(tmp_path, inputs, model, suffix, at):
    out = tmp_path / "run" / "out.parquet"
    script = KILL_SCRIPT.format(
        tests=str(TESTS), suffix=suffix, at=at, model=str(model), inputs=[str(p) for p in inputs], out=str(out)
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not [n for n in os.listdir(out.parent) if n.endswith(".tmp")]  # temporaries live in the parts folder
    stray = [n for n in os.listdir(mf.parts_dir(out)) if n.endswith(".tmp")]
    assert stray, "the kill should leave a temporary file behind in the run's private folder"
    resumed = score_files(inputs, _runner(model), _opts(out, model, resume=True))
    fresh = tmp_path / "fresh" / "out.parquet"
    score_files(inputs, _runner(model), _opts(fresh, model))
    assert pq.read_table(out).equals(pq.read_table(fresh))
    assert sorted(os.listdir(out.parent)) == ["out.parquet"]
    assert resumed.rows_written == pq.read_table(fresh).num_rows


def test_stray_temporaries_not_ours_are_left(tmp_path, inputs, model):
    out = tmp_path / "out.parquet"
    other = tmp_path / ".out.parquet.notoursX.tmp.d"  # a directory with a similar name: not a regular file
    other.mkdir()
    near = tmp_path / ".out.parquet.abc.tmp"  # not the exact pattern (8 characters)
    near.write_text("x")
    link = tmp_path / ".out.parquet.ABCDEFGH.tmp"  # the pattern, but a link: not removed, not followed
    target = tmp_path / "target.txt"
    target.write_text("kept")
    link.symlink_to(target)
    score_files(inputs, _runner(model), _opts(out, model))
    assert other.is_dir() and near.exists() and link.is_symlink() and target.read_text() == "kept"


# -- two runs on one output ----------------------------------------------------------------------------------------
def test_a_second_run_on_the_same_output_is_refused(tmp_path, inputs, model):
    out = tmp_path / "out.parquet"
    with outdir.output_lock([out]):
        with pytest.raises(OutputBusyError, match="another pktnin run is writing"):
            score_files(inputs, _runner(model), _opts(out, model))
        code = textwrap.dedent(f"""
            import sys
            from pktnin.cli import app
            sys.argv = ["pktnin", "score", *{[str(p) for p in inputs]!r}, "--model", {str(model)!r},
                        "--out", {str(out)!r}, "--no-progress"]
            app()
        """)
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="250"),
        )
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "another pktnin run is writing" in text and "Traceback" not in text
    assert not out.exists()
    score_files(inputs, _runner(model), _opts(out, model))  # free again
    assert sorted(os.listdir(tmp_path)) == ["out.parquet"]


def test_two_concurrent_runs_one_refused_or_after_the_other(tmp_path, inputs, model):
    out = tmp_path / "out.parquet"
    code = textwrap.dedent(f"""
        import sys
        from pktnin.cli import app
        sys.argv = ["pktnin", "score", *{[str(p) for p in inputs]!r}, "--model", {str(model)!r},
                    "--out", {str(out)!r}, "--no-progress"]
        app()
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="250")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    texts = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    # Each either ran to the end, found the output busy (refused, exit 1), or found the other's finished output
    # and refused to replace it without --force: exit 2 when its checks before the run saw it, 1 when the check
    # under the lock did (a refusal once under way). Never a raw error on a rename.
    assert 0 in codes, texts
    assert all(
        c == 0
        or (c == 1 and "another pktnin run is writing" in t)
        or (c in (1, 2) and "exists: choose another name, or --force" in t)
        for c, t in zip(codes, texts)
    ), texts
    assert all("Traceback" not in t and "FileNotFoundError" not in t for t in texts), texts
    assert sorted(os.listdir(tmp_path)) == ["out.parquet"] and pq.read_table(out).num_rows > 0


# -- content check on resume -----------------------------------------------------------------------------------------
def test_resume_rescores_content_rewritten_with_size_and_mtime_restored(tmp_path, model):
    files = [write_pcap(tmp_path / f"c{k}.pcap", mixed_traffic(k, 40), nanosecond=True) for k in range(2)]
    out = tmp_path / "out.parquet"

    def stop(_reports):
        raise RuntimeError("stop after the first part")

    with pytest.raises(RuntimeError):
        score_files(files, _runner(model), _opts(out, model), on_saved=stop)
    # Same size, same mtime, different bytes (another capture's traffic).
    st = files[0].stat()
    other = pcap_bytes(mixed_traffic(7, 40), nanosecond=True)
    data = bytearray(files[0].read_bytes())
    data[24:] = other[24 : len(data)] + bytes(max(0, len(data) - len(other)))
    files[0].write_bytes(bytes(data))
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files[0].stat().st_size == st.st_size and files[0].stat().st_mtime_ns == st.st_mtime_ns
    res = score_files(files, _runner(model), _opts(out, model, resume=True))
    assert res.resumed == 0
    fresh = tmp_path / "fresh.parquet"
    score_files(files, _runner(model), _opts(fresh, model))
    assert pq.read_table(out).equals(pq.read_table(fresh))


def test_stamp_hashes_both_ends(tmp_path):
    path = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 * mf.CONTENT_SPAN, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))
    s0 = mf.file_stamp(path)
    for where in (0, len(data) - 1):
        data[where] ^= 0xFF
        path.write_bytes(bytes(data))
        assert mf.file_stamp(path)["content"] != s0["content"]
        data[where] ^= 0xFF
    data[mf.CONTENT_SPAN + 10] ^= 0xFF  # the middle is not hashed (the cheap check): size and mtime cover it
    path.write_bytes(bytes(data))
    assert mf.file_stamp(path)["content"] == s0["content"]


# -- preprocess to an unwritable place -------------------------------------------------------------------------------
def test_preprocess_full_disk_is_one_line_before_the_work(tmp_path, inputs, monkeypatch):
    import errno

    calls = []

    def no_space(fd, data):
        calls.append(len(data))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outdir.os, "write", no_space)
    res = CliRunner().invoke(app, ["preprocess", *map(str, inputs), "--out", str(tmp_path / "x.npz"), "--no-progress"])
    monkeypatch.undo()
    text = " ".join(res.output.split())  # the console wraps long lines
    assert res.exit_code == 1 and calls
    assert f"cannot write {tmp_path / 'x.npz'}: No space left on device" in text
    assert "Traceback" not in text and "rows from" not in text  # nothing was read
    assert os.listdir(tmp_path) == []


def test_preprocess_needs_room_for_the_rows(tmp_path, inputs, monkeypatch):
    real = os.statvfs

    class Small:
        f_bavail, f_frsize = 100, 4096  # 400 KB free: the probe fits, the rows do not

    seen = {"n": 0}

    def statvfs(path):
        seen["n"] += 1
        return Small() if Path(path) == tmp_path else real(path)

    monkeypatch.setattr(outdir.os, "statvfs", statvfs)
    (tmp_path / "in").mkdir()
    many = [write_pcap(tmp_path / "in" / f"m{k}.pcap", mixed_traffic(k, 200), nanosecond=True) for k in range(2)]
    res = CliRunner().invoke(app, ["preprocess", *map(str, many), "--out", str(tmp_path / "x.npz"), "--no-progress"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "needs" in text and "bytes free" not in text and "free" in text, text
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_preprocess_read_only_directory(tmp_path, inputs):
    """A real read-only directory (as root, the run drops to an unprivileged user so that it applies)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="pktnin-ro-"))
    try:
        os.chmod(base, 0o755)
        cap = base / "in.pcap"
        cap.write_bytes(inputs[0].read_bytes())
        os.chmod(cap, 0o644)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        os.chmod(ro, 0o555)
        cache = base / "cache"
        cache.mkdir(mode=0o777)
        os.chmod(cache, 0o777)
        preexec = None
        if IS_ROOT:
            python = Path(sys.executable).resolve()
            if not all(os.stat(p).st_mode & stat.S_IXOTH for p in [REPO, *REPO.parents, python, *python.parents]):
                pytest.skip("the checkout or Python is not usable by an unprivileged user")
            preexec = lambda: (os.setgid(65534), os.setuid(65534))  # noqa: E731
        env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(cache), NUMBA_CACHE_DIR=str(cache), COLUMNS="250")
        proc = subprocess.run(
            [sys.executable, "-m", "pktnin.cli", "preprocess", str(cap), "--out", str(ro / "x.npz"), "--no-progress"],
            cwd=base,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=preexec,
        )
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1, text[-3000:]
        assert f"cannot write {ro / 'x.npz'}: Permission denied" in text and "Traceback" not in text
        assert os.listdir(ro) == []
    finally:
        os.chmod(base / "ro", 0o755)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("err", ["EACCES", "EROFS"])
def test_preprocess_unwritable_directory_is_one_line_before_the_work(tmp_path, inputs, monkeypatch, err):
    import errno

    code = getattr(errno, err)

    def refuse(*args, **kw):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(outdir.tempfile, "mkstemp", refuse)  # what a read-only or forbidden directory answers
    res = CliRunner().invoke(app, ["preprocess", *map(str, inputs), "--out", str(tmp_path / "x.npz"), "--no-progress"])
    monkeypatch.undo()
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and f"cannot write {tmp_path / 'x.npz'}: {os.strerror(code)}" in text
    assert "Traceback" not in text and "rows from" not in text


def test_check_writable_names_the_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputNotWritableError, match="cannot write .*file/out.npz"):
        outdir.check_writable(tmp_path / "file" / "out.npz")
