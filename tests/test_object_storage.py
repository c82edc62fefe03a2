"""Captures in and outputs to object storage (S3) give exactly the rows of a local run.

The store is moto's standalone S3 server (a real HTTP endpoint speaking the S3 protocol), started here on
127.0.0.1; pyarrow reaches it through AWS_ENDPOINT_URL like any S3-compatible endpoint. The tests skip, saying
why, when moto is not installed or its server cannot start.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import write_pcap, write_pcapng
from test_score import make_inputs
from test_shards import records

from pktnin.engine.runners import open_runner
from pktnin.errors import UsageError
from pktnin.kernels import capture
from pktnin.kernels.capture import CaptureReader
from pktnin.packets import find_captures, find_inputs
from pktnin.scoring import ScoreOptions, score_files
from pktnin.scoring.run import run_units
from pktnin.scoring.unit_run import LocalExecutor
from pktnin.scoring.units import make_units
from pktnin.storage import open_input

CLASSES = ["Web", "VoIP", "Chat", "Video"]
SPLIT = 25000  # bytes: the big captures become several byte-range units each
STEP = 7
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def s3():
    """(endpoint URL, a pyarrow S3FileSystem on it): moto's S3 server for the session, the AWS_* variables set."""
    from s3_server import s3_server

    stack = ExitStack()
    try:
        endpoint = stack.enter_context(s3_server())
    except ImportError as exc:
        pytest.skip(f"moto is not installed ({exc}): pip install 'pktnin[test]'")
    except OSError as exc:
        pytest.skip(str(exc))
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    with stack:
        try:
            yield endpoint, pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def bucket(s3) -> str:
    """A fresh bucket per test."""
    name = f"pktnin-{secrets.token_hex(4)}"
    s3[1].create_dir(name)
    return name


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", CLASSES, seed=5)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Good, text, empty and truncated captures plus a big pcap and a big two-section pcapng."""
    root = make_inputs(tmp_path_factory.mktemp("caps") / "in", n_good=2, packets=60)
    pk = mixed_traffic(7, 400, flows=4)
    write_pcap(root / "big.pcap", pk)
    epb = [("epb", 0, ts, d) for ts, d in pk]
    write_pcapng(
        root / "big.pcapng",
        [
            {"interfaces": [(1, 9)], "records": epb[:150]},
            {"big_endian": True, "interfaces": [(1, 6)], "records": epb[150:]},
        ],
    )
    return root


def _opts(out, model: Path, flows=None, **kw) -> ScoreOptions:
    return ScoreOptions(out=out, flows_out=flows, probs=True, batch=16, model_id=str(model), **kw)


@pytest.fixture(scope="module")
def local(root, model, tmp_path_factory):
    """The local run: (packet table, flow table, result)."""
    out = tmp_path_factory.mktemp("local") / "p.parquet"
    flows = out.with_name("flows.parquet")
    result = score_files(find_captures([root]), open_runner(model, "onnxruntime"), _opts(out, model, flows))
    return pq.read_table(out), pq.read_table(flows), result


def _upload(s3, root: Path, bucket: str) -> str:
    pafs.copy_files(str(root), f"{bucket}/in", destination_filesystem=s3[1])
    return f"s3://{bucket}/in/"


def _read(s3, uri: str):
    return pq.read_table(uri.removeprefix("s3://"), filesystem=s3[1])


def _objects(s3, prefix: str) -> list[str]:
    """Every object and "folder" marker under the prefix."""
    sel = pafs.FileSelector(prefix.removeprefix("s3://"), recursive=True, allow_not_found=True)
    return sorted(i.path for i in s3[1].get_file_info(sel))


def _same(got, want, root: Path, uri: str | None, metadata: bool = True) -> None:
    """Equal tables, the `file` column compared by name below the input folder or prefix; `metadata`: what
    produced them too (the command line records the model's hash and engine, the library runs here do not)."""

    def names(table, base: str):
        return [f.removeprefix(base) for f in table.column("file").to_pylist()]

    assert names(got, uri or str(root) + "/") == names(want, str(root) + "/")
    drop = ["file"]
    assert got.drop_columns(drop).equals(want.drop_columns(drop))
    assert not metadata or got.schema.metadata == want.schema.metadata


def _same_reports(result, local) -> None:
    for got, want in zip(result.reports, local.reports, strict=True):
        assert (got.records, got.kept, got.corrupt_records, got.skip_counts, got.failed, got.not_capture) == (
            want.records,
            want.kept,
            want.corrupt_records,
            want.skip_counts,
            want.failed,
            want.not_capture,
        )
        assert got.errors == want.errors  # the same error and offset, named by the file's name


def test_s3_in_local_out(s3, bucket, root, model, local, tmp_path):
    uri = _upload(s3, root, bucket)
    files = find_inputs([uri])
    assert files == [uri + p.name for p in find_captures([root])]  # listed as a local folder is, in its order
    out = tmp_path / "p.parquet"
    result = score_files(files, open_runner(model, "onnxruntime"), _opts(out, model, tmp_path / "flows.parquet"))
    _same(pq.read_table(out), local[0], root, uri)
    _same(pq.read_table(tmp_path / "flows.parquet"), local[1], root, uri)
    _same_reports(result, local[2])


@pytest.mark.parametrize("read_bytes", [100, 5000, 8 << 20])
def test_reader_over_an_object_sees_the_files_records(s3, bucket, root, monkeypatch, read_bytes):
    """Small windows and small ranged reads: records straddle both, and are read again whole."""
    monkeypatch.setattr(capture, "OBJECT_READ", read_bytes)
    uri = _upload(s3, root, bucket)
    for name in ("big.pcap", "big.pcapng", "cut.pcap"):
        local, remote = (CaptureReader(p, max_records=5, window_bytes=4096) for p in (root / name, uri + name))
        assert records(remote) == records(local) and remote.frames == local.frames
        assert [e.issue for e in remote.errors] == [e.issue for e in local.errors]


class Counting:
    """An object's file whose readinto counts the bytes read."""

    def __init__(self, fh) -> None:
        self.fh, self.read = fh, 0

    def readinto(self, buf) -> int:
        n = self.fh.readinto(buf)
        self.read += n
        return n

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_a_byte_range_reads_its_range_only(s3, bucket, root, monkeypatch):
    """A unit that is a byte range of an object reads about that range (one read past it at most), by ranges."""
    monkeypatch.setattr(capture, "OBJECT_READ", 4096)
    uri = _upload(s3, root, bucket)
    opened: list[Counting] = []

    def counting(path):
        opened.append(Counting(open_input(path)))
        return opened[-1]

    monkeypatch.setattr(capture, "open_input", counting)
    units = make_units([uri + "big.pcap"], {}, 8000, step_records=STEP)
    assert len(units) >= 3
    opened.clear()
    (piece,) = units[1].pieces
    reader = CaptureReader(piece.path, window_bytes=2048, **piece.reader_kwargs())
    assert records(reader)
    span = piece.stop - piece.start
    assert span <= sum(f.read for f in opened) <= span + 4096  # the range, at most one read past it


def test_python_api_scores_a_prefix(s3, bucket, root, model):
    import pktnin

    uri = _upload(s3, root, bucket)
    kw = {"model": model, "backend": "onnxruntime", "precision": "fp32", "engine_workers": 1, "batch": 16}
    remote, local = pktnin.score([uri], **kw), pktnin.score([root], **kw)
    assert remote.num_rows == local.num_rows > 0
    _same(remote, local, root, uri, metadata=False)  # the engine's label may carry timings


def test_one_object_and_a_local_file_together(s3, bucket, root, model, local, tmp_path):
    uri = _upload(s3, root, bucket)
    files = find_inputs([uri + "good0.pcap", root / "good1.pcapng"])
    assert files == [uri + "good0.pcap", root / "good1.pcapng"]
    out = tmp_path / "p.parquet"
    score_files(files, open_runner(model, "onnxruntime"), _opts(out, model))
    got = pq.read_table(out)
    names = [f.rsplit("/", 1)[1] for f in local[0].column("file").to_pylist()]
    chosen = [n in ("good0.pcap", "good1.pcapng") for n in names]
    want = local[0].filter(pa.array(chosen))
    spelled = [uri + n if n == "good0.pcap" else str(root / n) for n, c in zip(names, chosen) if c]
    assert got.column("file").to_pylist() == spelled
    assert got.drop_columns(["file"]).equals(want.drop_columns(["file"]))


def test_local_in_s3_out(s3, bucket, root, model, local):
    out, flows = f"s3://{bucket}/run/p.parquet", f"s3://{bucket}/run/flows.parquet"
    result = score_files(find_captures([root]), open_runner(model, "onnxruntime"), _opts(out, model, flows))
    assert _read(s3, out).equals(local[0]) and _read(s3, flows).equals(local[1])
    assert result.outputs == [out, flows]
    assert _objects(s3, f"{bucket}/run") == [
        f"{bucket}/run/flows.parquet",
        f"{bucket}/run/p.parquet",
    ]  # no side objects
    with pytest.raises(UsageError, match="exists"):  # an existing object is replaced only with force
        score_files(find_captures([root]), open_runner(model, "onnxruntime"), _opts(out, model))


def test_objects_the_run_did_not_make_stay(s3, bucket, root, model, local):
    """In the parts prefix only objects of the run's own naming are removed; anything else stays."""
    fs, theirs = s3[1], [f"{bucket}/run/p.parquet.parts/notes.txt", f"{bucket}/run/p.parquet.parts/_units/x.json"]
    for key in theirs:
        with fs.open_output_stream(key) as fh:
            fh.write(b"someone else's")
    out = f"s3://{bucket}/run/p.parquet"
    score_files(find_captures([root]), open_runner(model, "onnxruntime"), _opts(out, model))
    assert _read(s3, out).equals(local[0])
    files = [p for p in _objects(s3, f"{bucket}/run") if fs.get_file_info(p).type == pafs.FileType.File]
    assert files == [f"{bucket}/run/p.parquet", *sorted(theirs)]


def test_s3_in_s3_out_by_byte_ranges(s3, bucket, root, model, local):
    uri = _upload(s3, root, bucket)
    out, flows = f"s3://{bucket}/run/p.parquet", f"s3://{bucket}/run/flows.parquet"
    opts = _opts(out, model, flows, unit_bytes=SPLIT)
    executor = LocalExecutor(open_runner(model, "onnxruntime"), opts)
    seen = []

    def recording(units, parts, progress=None):
        seen.extend(units)
        yield from executor(units, parts, progress)

    recording.live_progress = True  # type: ignore[attr-defined]
    result = run_units(find_inputs([uri]), opts, CLASSES, recording, step_records=STEP)  # type: ignore[arg-type]
    assert sum(1 for u in seen if u.pieces[0].path.endswith("big.pcap")) >= 3  # byte ranges of the object
    _same(_read(s3, out), local[0], root, uri)
    _same(_read(s3, flows), local[1], root, uri)
    _same_reports(result, local[2])
    assert _objects(s3, f"{bucket}/run") == [f"{bucket}/run/flows.parquet", f"{bucket}/run/p.parquet"]


class _Failing(LocalExecutor):
    """Fails after `after` units were finished (and recorded)."""

    def __init__(self, *args, after: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.after = after

    def __call__(self, units, parts, progress=None):
        for k, summary in enumerate(super().__call__(units, parts, progress)):
            if k == self.after:
                raise RuntimeError("the run fails here")
            yield summary


class _Recording(LocalExecutor):
    """Keeps the units it was given to score."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.scored: list = []

    def __call__(self, units, parts, progress=None):
        self.scored.extend(units)
        yield from super().__call__(units, parts, progress)


def _resume(files, opts: ScoreOptions, model: Path):
    """Run `opts` (a --resume run) locally: (its result, the units it scored)."""
    executor = _Recording(open_runner(model, "onnxruntime"), opts)
    return run_units(files, opts, CLASSES, executor, step_records=STEP), executor.scored


def test_failed_run_publishes_nothing_and_resume_continues(s3, bucket, root, model, local):
    uri = _upload(s3, root, bucket)
    out, flows = f"s3://{bucket}/run/p.parquet", f"s3://{bucket}/run/flows.parquet"
    files = find_inputs([uri])
    opts = _opts(out, model, flows, unit_bytes=SPLIT)
    with pytest.raises(RuntimeError, match="fails here"):
        run_units(files, opts, CLASSES, _Failing(open_runner(model, "onnxruntime"), opts, after=3), step_records=STEP)
    left = _objects(s3, f"{bucket}/run")
    assert f"{bucket}/run/p.parquet" not in left and f"{bucket}/run/flows.parquet" not in left
    assert f"{bucket}/run/p.parquet.manifest.json" in left

    opts = _opts(out, model, flows, unit_bytes=SPLIT, resume=True)
    result, scored = _resume(files, opts, model)
    summaries = [p for p in left if p.endswith(".summary.json")]
    assert len(summaries) == 4 and not {u.id for u in scored} & {p.rsplit("/", 1)[1][:24] for p in summaries}
    _same(_read(s3, out), local[0], root, uri)
    _same(_read(s3, flows), local[1], root, uri)
    _same_reports(result, local[2])
    assert _objects(s3, f"{bucket}/run") == [f"{bucket}/run/flows.parquet", f"{bucket}/run/p.parquet"]


def test_driver_killed_9_then_resume(s3, bucket, root, model, local):
    """A run writing to S3 is killed -9 after some units; nothing is published, --resume reuses them."""
    uri = _upload(s3, root, bucket)
    out, flows = f"s3://{bucket}/run/p.parquet", f"s3://{bucket}/run/flows.parquet"
    files = find_inputs([uri])
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from test_object_storage import _opts, CLASSES, SPLIT, STEP
        from pktnin.scoring.run import run_units
        from stalling_executor import StallingExecutor
        from pktnin.engine.runners import open_runner

        model = Path({str(model)!r})
        opts = _opts({out!r}, model, {flows!r}, unit_bytes=SPLIT)

        executor = StallingExecutor(open_runner(model, "onnxruntime"), opts, units=3)
        run_units({files!r}, opts, CLASSES, executor, step_records=STEP)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "stalled", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = _objects(s3, f"{bucket}/run")
    assert f"{bucket}/run/p.parquet" not in left and f"{bucket}/run/flows.parquet" not in left
    finished = [p.rsplit("/", 1)[1][:24] for p in left if p.endswith(".summary.json")]
    assert len(finished) == 3
    opts = _opts(out, model, flows, unit_bytes=SPLIT, resume=True)
    _, scored = _resume(files, opts, model)
    assert scored and not {u.id for u in scored} & set(finished)
    _same(_read(s3, out), local[0], root, uri)
    _same(_read(s3, flows), local[1], root, uri)
    assert _objects(s3, f"{bucket}/run") == [f"{bucket}/run/flows.parquet", f"{bucket}/run/p.parquet"]


def test_a_part_that_fails_midway_is_never_completed(s3, bucket, root, model):
    """A unit whose writer fails after some rows leaves no part object, not even a short one."""
    out = f"s3://{bucket}/run/p.parquet"
    opts = _opts(out, model)
    runner = open_runner(model, "onnxruntime")

    class Breaking:
        classes = runner.classes

        def __init__(self) -> None:
            self.calls = 0

        def infer(self, rows, probs):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("the engine fails here")
            return runner.infer(rows, probs)

    with pytest.raises(RuntimeError, match="fails here"):
        score_files(find_captures([root / "big.pcap"]), Breaking(), opts)  # type: ignore[arg-type]
    assert not [p for p in _objects(s3, f"{bucket}/run") if "packets.parquet" in p]


def test_cli_s3_to_s3_on_ray_equals_local(s3, bucket, root, model, local):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from typer.testing import CliRunner

    from pktnin.cli import app

    uri = _upload(s3, root, bucket)
    out, flows = f"s3://{bucket}/run/p.parquet", f"s3://{bucket}/run/flows.parquet"
    env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    pythonpath = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {**env, "AWS_ENDPOINT_URL": s3[0], "PYTHONPATH": pythonpath}},
    )
    try:
        args = ["score", uri, "--model", str(model), "--backend", "onnxruntime", "--out", out, "--flows", flows,
                "--report", f"s3://{bucket}/run/report.json", "--probs", "--batch", "16", "--no-progress", "--executor", "ray", "--actors", "2",
                "--split-bytes", "25k"]  # fmt: skip
        result = CliRunner().invoke(app, args)
    finally:
        ray.shutdown()
    assert result.exit_code == 3, result.output  # the inputs include broken files, as the local run's
    _same(_read(s3, out), local[0], root, uri, metadata=False)
    _same(_read(s3, flows), local[1], root, uri, metadata=False)
    with s3[1].open_input_stream(f"{bucket}/run/report.json") as fh:
        report = json.loads(fh.read())
    assert [(r["file"], r["records"], r["rows"]) for r in report] == [
        (str(r.path).replace(str(root) + "/", uri), r.records, r.kept) for r in local[2].reports
    ]
    assert _objects(s3, f"{bucket}/run") == [
        f"{bucket}/run/flows.parquet",
        f"{bucket}/run/p.parquet",
        f"{bucket}/run/report.json",
    ]
