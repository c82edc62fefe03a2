"""Units of work: big files cut into byte ranges, small ones grouped; the driver, the unit worker and the Ray
executor give exactly the outputs of a local run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import write_pcap, write_pcapng
from test_score import make_inputs

from pktnin.engine.runners import open_runner
from pktnin.packets import find_captures
from pktnin.scoring import ScoreOptions, score_files
from pktnin.scoring.run import run_units
from pktnin.scoring.unit_run import LocalExecutor, score_unit, summary_path
from pktnin.scoring.units import make_units

CLASSES = ["Web", "VoIP", "Chat", "Video"]
TESTS = Path(__file__).resolve().parent
SPLIT = 25000  # bytes: the big captures below become several units each, the small ones are grouped
STEP = 7  # records per index step: cuts at odd places


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", CLASSES, seed=5)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """The score tests' inputs (good, text, empty, truncated) plus a big pcap and a big two-section pcapng."""
    root = make_inputs(tmp_path_factory.mktemp("caps") / "in", n_good=2, packets=60)
    pk = mixed_traffic(7, 400, flows=4)
    # Zero-length records and packets of an undefined interface in several shards: skipped and counted (the
    # latter reported once per kind with the first offset), as for the whole file.
    write_pcap(root / "big.pcap", [p if i % 90 != 45 else (p[0], b"") for i, p in enumerate(pk)])
    epb = [("epb", 0 if i % 110 != 60 else 7, ts, d) for i, (ts, d) in enumerate(pk)]
    write_pcapng(
        root / "big.pcapng",
        [
            {"interfaces": [(1, 9)], "records": epb[:150]},
            {"big_endian": True, "interfaces": [(1, 6)], "records": epb[150:]},
        ],
    )
    return find_captures([root])


def _opts(out: Path, model: Path, **kw) -> ScoreOptions:
    return ScoreOptions(
        out=out, flows_out=out.with_name("flows.parquet"), probs=True, batch=16, model_id=str(model), **kw
    )


@pytest.fixture(scope="module")
def local_tables(files, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "p.parquet"
    result = score_files(files, open_runner(model, "onnxruntime"), _opts(out, model))
    return pq.read_table(out), pq.read_table(out.with_name("flows.parquet")), result


def _same_as_local(out: Path, result, local_tables) -> None:
    packets, flows, local = local_tables
    assert pq.read_table(out).equals(packets)  # every column, every row, in order
    assert pq.read_table(out.with_name("flows.parquet")).equals(flows)
    for got, want in ((out, packets), (out.with_name("flows.parquet"), flows)):  # what produced the rows
        assert (
            pq.read_table(got).schema.metadata == want.schema.metadata
            and b"pktnin.model_sha256" in want.schema.metadata
        )
    assert result.label_counts.tolist() == local.label_counts.tolist()
    for got, want in zip(result.reports, local.reports):
        assert (got.records, got.kept, got.corrupt_records, got.skip_counts, got.failed, got.stopped_early) == (
            want.records,
            want.kept,
            want.corrupt_records,
            want.skip_counts,
            want.failed,
            want.stopped_early,
        )
        assert got.errors == want.errors
    assert sorted(p.name for p in out.parent.iterdir()) == ["flows.parquet", "p.parquet"]


def _split(out: Path, model: Path, **kw) -> ScoreOptions:
    return _opts(out, model, unit_bytes=SPLIT, **kw)


def test_units_split_the_big_files_and_group_the_small_ones(files):
    units = make_units(files, {}, SPLIT, step_records=STEP)
    per_file: dict[str, int] = {}
    for u in units:
        for p in u.pieces:
            per_file[Path(p.path).name] = per_file.get(Path(p.path).name, 0) + 1
    assert (
        per_file["big.pcap"] >= 3
        and per_file["big.pcapng"] >= 3
        and per_file["empty.pcap"] == per_file["notes.txt"] == 1
    )
    assert any(len(u.pieces) > 1 for u in units)  # small files share a unit
    assert all(len(u.pieces) == 1 for u in units if any(not p.whole for p in u.pieces))


def test_split_local_run_matches_score_files(files, model, local_tables, tmp_path):
    big = {r.path.name: r for r in local_tables[2].reports if r.path.name.startswith("big.")}
    assert big["big.pcap"].skip_counts["zero-length"] >= 3 and not big["big.pcap"].errors  # legal: no error
    assert big["big.pcapng"].corrupt_records >= 3 and "first of" in big["big.pcapng"].errors[0]
    out = tmp_path / "run" / "p.parquet"
    opts = _split(out, model)
    runner = open_runner(model, "onnxruntime")
    result = run_units(files, opts, CLASSES, LocalExecutor(runner, opts), step_records=STEP)
    _same_as_local(out, result, local_tables)


def test_a_unit_whose_part_exists_is_not_scored_again(files, model, tmp_path):
    parts = tmp_path / "parts"
    opts = _split(tmp_path / "p.parquet", model)
    runner = open_runner(model, "onnxruntime")
    unit = [u for u in make_units(files, {}, SPLIT, step_records=STEP) if Path(u.pieces[0].path).name == "big.pcap"][1]
    first = score_unit(unit, runner, opts, parts)
    assert not first["skipped"] and first["packets"] > 0 and summary_path(parts, unit.id).is_file()
    part = parts / first["part"]
    mtime = part.stat().st_mtime_ns
    again = score_unit(unit, runner, opts, parts)
    assert again["skipped"] and again["packets"] == first["packets"] and part.stat().st_mtime_ns == mtime
    part.unlink()  # a summary without its part is not trusted: the unit is scored again
    assert not score_unit(unit, runner, opts, parts)["skipped"]


def test_keep_parts_leaves_a_parquet_dataset(files, model, local_tables, tmp_path):
    out = tmp_path / "run" / "p.parquet"
    opts = _split(out, model)
    runner = open_runner(model, "onnxruntime")
    result = run_units(files, opts, CLASSES, LocalExecutor(runner, opts), step_records=STEP, keep_parts=True)
    assert not out.exists() and result.outputs[0] == out.with_name("p.parquet.parts")
    kept = pq.read_table(result.outputs[0])  # the unit summaries under _units/ are not part of the dataset
    order = {str(p): i for i, p in enumerate(files)}
    rows = sorted(
        zip(kept.column("file").to_pylist(), kept.column("frame").to_pylist()), key=lambda r: (order[r[0]], r[1])
    )
    local = local_tables[0]
    assert rows == list(zip(local.column("file").to_pylist(), local.column("frame").to_pylist()))
    assert pq.read_table(out.with_name("flows.parquet")).equals(local_tables[1])


def test_driver_killed_9_then_resume(files, model, local_tables, tmp_path):
    """A driver process is killed -9 after some units finished; --resume reuses them and the output is exact."""
    out = tmp_path / "run" / "p.parquet"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from test_distributed import _split, CLASSES, STEP
        from pktnin.scoring.run import run_units
        from stalling_executor import StallingExecutor
        from pktnin.engine.runners import open_runner

        model, out = Path({str(model)!r}), Path({str(out)!r})
        files = [Path(p) for p in {[str(f) for f in files]!r}]
        opts = _split(out, model)

        executor = StallingExecutor(open_runner(model, "onnxruntime"), opts, units=5)
        run_units(files, opts, CLASSES, executor, step_records=STEP)
    """)
    env = {**os.environ, "PKTNIN_CACHE_DIR": os.environ["PKTNIN_CACHE_DIR"]}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "stalled", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    finished = list((out.with_name("p.parquet.parts") / "_units").glob("*.summary.json"))
    assert len(finished) == 5
    opts = _split(out, model, resume=True)
    scored = []

    class Recording(LocalExecutor):
        def __call__(self, todo, parts, progress=None):
            scored.extend(todo)
            yield from super().__call__(todo, parts, progress)

    result = run_units(files, opts, CLASSES, Recording(open_runner(model, "onnxruntime"), opts), step_records=STEP)
    _same_as_local(out, result, local_tables)
    assert not {u.id for u in scored} & {p.name.split(".")[0] for p in finished}  # finished units not redone


def test_cli_checks_executor_options(files, model, tmp_path):
    from typer.testing import CliRunner

    from pktnin.cli import app
    from pktnin.distributed.run import parse_size

    assert parse_size("1G") == 1 << 30 and parse_size("512M") == 512 << 20 and parse_size("64k") == 65536
    assert parse_size("1GiB") == 1 << 30 and parse_size("1000") == 1000
    base = ["score", str(files[0]), "--model", str(model), "--out", str(tmp_path / "p.parquet"), "--no-progress"]
    bad = (
        ["--executor", "spark"],
        ["--engine", "spark"],
        ["--split-bytes", "lots"],
        ["--actors", "0"],
        ["--keep-parts"],
    )
    for extra in bad:
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 2, (extra, result.output)


def test_actor_cpu_requests_leave_room_for_ray_tasks():
    from pktnin.distributed.ray_engine import actor_cpus

    assert actor_cpus(2, 2, None) == (2, 0.5, 1)  # two actors on a 2-CPU node: half a CPU each, one free
    assert actor_cpus(2, 1, None) == (1, 1.0, 1)
    assert actor_cpus(33, 4, None) == (4, 8.0, 8)
    assert actor_cpus(8, 2, 2) == (2, 2.0, 2)


# -- Ray --------------------------------------------------------------------------------------------------
try:
    import ray
except ImportError:  # the ray extra is not installed
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def local_ray():
    from pktnin.distributed.ray_engine import ray_session

    pythonpath = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}
    )
    with ray_session():  # uses the running Ray and leaves it alone
        yield ray
    ray.shutdown()


def _ray_run(files, model, out, spec=None, actors=2, progress=None, **kw):
    from pktnin.distributed.ray_engine import RayExecutor, RunnerSpec

    opts = _split(out, model, **kw)
    spec = spec or RunnerSpec(str(model), "onnxruntime", 16)
    executor = RayExecutor(spec, opts, actors=actors, cpus_per_actor=0.5)
    return run_units(files, opts, CLASSES, executor, step_records=STEP, progress=progress)


@needs_ray
def test_ray_actor_dies_mid_unit_once(local_ray, files, model, local_tables, tmp_path):
    from ray_helpers import DyingSpec

    marker = tmp_path / "die-once"
    marker.write_text("")
    out = tmp_path / "run" / "p.parquet"
    result = _ray_run(files, model, out, spec=DyingSpec(str(model), "onnxruntime", 16, marker=str(marker)))
    assert not marker.exists()  # an actor did die
    _same_as_local(out, result, local_tables)


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=needs_ray)])
def test_a_file_cut_short_during_the_run_is_that_files_error(request, model, tmp_path, executor):
    """On both executors: the cut file is reported with what was read (stopped early), the others are scored,
    and the run finishes with its outputs."""
    from ray_helpers import CuttingSpec

    from pktnin.distributed.ray_engine import RayExecutor

    root = tmp_path / "in"
    root.mkdir()
    big = write_pcap(root / "a-big.pcap", mixed_traffic(9, 600, flows=4))
    small = write_pcap(root / "b-small.pcap", mixed_traffic(10, 80))
    marker = tmp_path / "cut-once"
    marker.write_text("")
    spec = CuttingSpec(str(model), "onnxruntime", 16, marker=str(marker), target=str(big))
    out = tmp_path / "run" / "p.parquet"
    opts = _split(out, model)
    if executor == "ray":
        request.getfixturevalue("local_ray")
        run = RayExecutor(spec, opts, actors=1, cpus_per_actor=0.5)
    else:
        run = LocalExecutor(spec(1), opts)
    result = run_units([big, small], opts, CLASSES, run, step_records=STEP)
    assert not marker.exists()  # the file was cut during the run
    cut, whole = result.reports
    assert cut.stopped_early and cut.fatal is not None and cut.fatal.kind in ("cut-short", "changed"), cut.issues
    assert 0 < cut.records < 600 and whole.status == "ok" and whole.records == 80
    assert pq.read_table(out).num_rows == result.packets > 0


class _KillAfter:
    """A progress object that stops the driver after `n` units came back (as a kill would)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def add_packets(self, _n: int) -> None:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt

    def file_done(self, n: int = 1) -> None:
        pass


@needs_ray
def test_ray_driver_killed_then_resume(local_ray, files, model, local_tables, tmp_path):
    out = tmp_path / "run" / "p.parquet"
    with pytest.raises(KeyboardInterrupt):
        _ray_run(files, model, out, actors=1, progress=_KillAfter(3))
    manifest = json.loads(out.with_name("p.parquet.manifest.json").read_text())
    assert not out.exists() and manifest["files"]
    done_before = {p.name.split(".")[0] for p in (out.with_name("p.parquet.parts") / "_units").glob("*.summary.json")}
    assert len(done_before) >= 3
    result = _ray_run(files, model, out, resume=True)
    _same_as_local(out, result, local_tables)
    assert result.packets < local_tables[2].packets  # the units finished before were not scored again


@needs_ray
def test_cli_executor_ray_matches_local(local_ray, files, model, local_tables, tmp_path):
    from typer.testing import CliRunner

    from pktnin.cli import app

    out = tmp_path / "run" / "p.parquet"
    out.parent.mkdir()  # the command line creates no folders
    args = [
        "score",
        *map(str, files),
        "--model",
        str(model),
        "--backend",
        "onnxruntime",
        "--out",
        str(out),
        "--flows",
        str(out.with_name("flows.parquet")),
        "--probs",
        "--batch",
        "16",
        "--no-progress",
        "--engine",  # the old name of --executor
        "ray",
        "--actors",
        "2",
        "--split-bytes",
        "25k",
    ]
    result = CliRunner().invoke(app, args)  # two actors, the big files in several units each
    assert result.exit_code == 3, result.output  # the inputs include broken files, as the local run's
    assert pq.read_table(out).equals(local_tables[0]) and pq.read_table(out.with_name("flows.parquet")).equals(
        local_tables[1]
    )
    assert f"{local_tables[2].packets:,} packets scored from {len(files)} files" in result.output


@needs_ray
def test_cli_ray_and_local_treat_odd_inputs_alike(local_ray, model, tmp_path):
    """Non-captures in a folder are listed apart on both executors (exit 0), a run that reads nothing writes
    nothing (exit 1), and a capture with nothing to score gives an output with no rows (exit 0)."""
    import packetgen as pg
    from typer.testing import CliRunner

    from pktnin.cli import app
    from pktnin.synth import write_synthetic_capture

    mixed, notes, nothing = tmp_path / "mixed", tmp_path / "notes", tmp_path / "nothing"
    for folder in (mixed, notes, nothing):
        folder.mkdir()
    write_synthetic_capture(mixed / "cap.pcap", packets=60, seed=1)
    for folder in (mixed, notes):
        (folder / "notes.txt").write_text("not a capture\n")
    arp = pg.ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes(20), ethertype=0x0806)
    write_pcap(nothing / "arp.pcap", [arp, arp])

    def run(folder: Path, executor: str):
        out = tmp_path / f"{folder.name}-{executor}.parquet"
        args = ["score", str(folder), "--model", str(model), "--backend", "onnxruntime", "--out", str(out),
                "--no-progress", "--executor", executor]  # fmt: skip
        result = CliRunner().invoke(app, args)
        listed = [line for line in result.output.splitlines() if line.startswith("not a capture")]
        rows = pq.read_table(out).num_rows if out.exists() else None
        return result.exit_code, listed, rows

    for folder, expected in ((mixed, (0, 1, True)), (notes, (1, 1, None)), (nothing, (0, 0, False))):
        local, ray_run = run(folder, "local"), run(folder, "ray")
        assert ray_run == local, folder.name
        code, listed, rows = local
        assert (code, len(listed), rows if rows is None else rows > 0) == expected, (folder.name, local)


def test_native_log_filter_drops_rays_native_lines_and_passes_the_rest(capfd):
    from pktnin.distributed.ray_engine import NativeLogFilter

    native = b"[2026-12-07 16:41:50,884 E 16683 16683] core_worker.cc:2465: Actor with class name: 'MapWorker'\n"
    with NativeLogFilter():
        os.write(2, b"\x1b[2Kscore 40%")  # a progress bar: no newline, passed at once
        os.write(2, native[:30])  # a native line in two writes
        os.write(2, native[30:] + b"warning: kept\n[3] a bracket\n")
        os.write(2, b"no newline at the end")
    err = capfd.readouterr().err
    assert err == "\x1b[2Kscore 40%warning: kept\n[3] a bracket\nno newline at the end"
