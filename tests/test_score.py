"""`pktnin score`: per-packet and per-flow outputs, bad input files, resume after a kill, error propagation."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from onnx_fixtures import reference_probs, tiny_model
from packetgen import mixed_traffic
from pcapgen import write_pcap, write_pcapng
from typer.testing import CliRunner

from pktnin.cli import app
from pktnin.cli.errors import EXIT_PARTIAL
from pktnin.packets import PacketBatch, find_captures, iter_packets
from pktnin.scoring import ScoreOptions, score_files
from pktnin.scoring import flows as flows_mod
from pktnin.scoring.flows import FlowAccumulator, flow_schema
from pktnin.scoring.outputs import OutputError
from pktnin.scoring.writers import format_addresses

CLASSES = ["Web", "VoIP", "Chat", "Video"]
TESTS = Path(__file__).resolve().parent


# -- inputs ------------------------------------------------------------------------------------------------
def make_inputs(root: Path, n_good: int = 3, packets: int = 120) -> Path:
    """Good captures (pcap and pcapng) plus a text file, an empty file and a truncated capture."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_good):
        pkts = mixed_traffic(k, packets)
        if k % 2:
            records = [("epb", 0, ts, data) for ts, data in pkts]
            write_pcapng(root / f"good{k}.pcapng", [{"interfaces": [(1, 9)], "records": records}])
        else:
            write_pcap(root / f"good{k}.pcap", pkts, nanosecond=True)
    (root / "notes.txt").write_text("not a capture\n" * 20)
    (root / "empty.pcap").write_bytes(b"")
    whole = write_pcap(root / "cut.pcap", mixed_traffic(9, 40), nanosecond=True).read_bytes()
    (root / "cut.pcap").write_bytes(whole[: len(whole) - 25])  # the last record is cut short
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", CLASSES, seed=3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("caps") / "in")


@pytest.fixture(scope="module")
def expected(inputs, model) -> dict:
    """The oracle: packets via packets.iter_packets, probabilities via ONNX Runtime on the model directly."""
    files = find_captures([inputs])
    rows, metas, names, reports = [], [], [], []
    for b in iter_packets(files, reports=reports):
        rows.append(b.rows)
        metas.append(b.meta)
        names += [str(b.path)] * len(b)
    probs = reference_probs(model, np.concatenate(rows))
    meta = {k: np.concatenate([m[k] for m in metas]) for k in metas[0]}
    return {"files": files, "names": names, "probs": probs, "meta": meta, "reports": reports}


def run_cli(*args) -> object:
    result = CliRunner().invoke(app, ["score", *map(str, args), "--no-progress"])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# -- the command -------------------------------------------------------------------------------------------
def test_parquet_packets_flows_and_bad_files(tmp_path, inputs, model, expected):
    out, flows_out = tmp_path / "p.parquet", tmp_path / "f.parquet"
    result = run_cli(inputs, "--model", model, "--out", out, "--flows", flows_out, "--probs")
    assert result.exit_code == EXIT_PARTIAL, result.output  # empty.pcap failed, cut.pcap was cut short
    t = pq.read_table(out)
    assert t.column_names[:14] == [
        "file", "frame", "timestamp", "src_addr", "src_port", "dst_addr", "dst_port", "proto", "vlan", "flow_id",
        "label", "prob", "decided_by", "decision_packets",
    ]  # fmt: skip
    assert t.column_names[14:] == [f"p_{c}" for c in CLASSES]
    assert t["decided_by"].unique().to_pylist() == ["packet"] and (t["decision_packets"].to_numpy() == 1).all()
    np.testing.assert_array_equal(t["flow_id"].to_numpy(), expected["meta"]["flow_key"])
    np.testing.assert_array_equal(t["vlan"].to_numpy(), expected["meta"]["vlan"])

    # Every kept packet exactly once, in input order, with the oracle's metadata.
    assert t.num_rows == len(expected["names"])
    assert t["file"].to_pylist() == expected["names"]
    np.testing.assert_array_equal(t["frame"].to_numpy(), expected["meta"]["frame"])
    np.testing.assert_array_equal(t["timestamp"].cast(pa.int64()).to_numpy(), expected["meta"]["ts_ns"])
    np.testing.assert_array_equal(t["src_port"].to_numpy(), expected["meta"]["src_port"])

    # Probabilities equal the model's; label and prob are the argmax and its probability.
    probs = np.stack([t[f"p_{c}"].to_numpy() for c in CLASSES], axis=1)
    np.testing.assert_allclose(probs, expected["probs"], rtol=1e-5, atol=1e-6)
    assert t["label"].to_pylist() == [CLASSES[i] for i in probs.argmax(axis=1)]
    np.testing.assert_array_equal(t["prob"].to_numpy(), probs.max(axis=1))
    assert len(set(t["label"].to_pylist())) > 1  # the tiny model does discriminate

    # Addresses as captured, IPv6 included.
    src = t["src_addr"].to_pylist()
    v = expected["meta"]["ip_version"]
    for i in [int(np.flatnonzero(v == 4)[0]), int(np.flatnonzero(v == 6)[0])]:
        n = 4 if v[i] == 4 else 16
        assert src[i] == str(ipaddress.ip_address(expected["meta"]["src_addr"][i][:n].tobytes()))

    # Bad files are reported and skipped; the truncated capture's complete records are scored; notes.txt is
    # listed apart as not a capture.
    text = " ".join(result.output.split())
    for name in ("notes.txt", "empty.pcap", "cut.pcap"):
        assert name in text
    assert "not a capture, skipped (1):" in text
    assert "Packets per label" in text and "packets/s" in text
    names = set(t["file"].to_pylist())
    assert str(inputs / "cut.pcap") in names
    assert not {str(inputs / "notes.txt"), str(inputs / "empty.pcap")} & names

    # Flows: counts sum to the packets, one row per (file, flow_key), label from the mean probabilities.
    f = pq.read_table(flows_out)
    assert f["packets"].to_numpy().sum() == t.num_rows
    keys = {(n, k) for n, k in zip(expected["names"], expected["meta"]["flow_key"].tolist())}
    assert f.num_rows == len(keys)
    fprobs = np.stack([f[f"p_{c}"].to_numpy() for c in CLASSES], axis=1)
    assert f["label"].to_pylist() == [CLASSES[i] for i in fprobs.argmax(axis=1)]
    np.testing.assert_allclose(f["confidence"].to_numpy(), fprobs.max(axis=1))
    # One flow checked against a direct computation: the mean of its packets' probabilities.
    name0, key0 = expected["names"][0], expected["meta"]["flow_key"][0]
    members = (np.array(expected["names"]) == name0) & (expected["meta"]["flow_key"] == key0)
    row = f.filter(
        pa.compute.and_(pa.compute.equal(f["file"], name0), pa.compute.equal(f["addr_a"], t["src_addr"][0]))
    ).to_pylist()
    row = [r for r in row if r["port_a"] == t["src_port"][0].as_py()][0]
    assert row["packets"] == members.sum() and row["flow_id"] == key0  # joins the packet rows' flow_id
    np.testing.assert_allclose([row[f"p_{c}"] for c in CLASSES], expected["probs"][members].mean(axis=0), rtol=1e-5)
    assert row["first_ts"] == t["timestamp"][0].as_py()
    # Parts and manifest are gone after a complete run.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet", "p.parquet"]


def test_csv_matches_parquet_without_probs(tmp_path, inputs, model):
    result = run_cli(inputs, "--model", model, "--out", tmp_path / "p.parquet", "--flows", tmp_path / "f.parquet")
    assert result.exit_code == EXIT_PARTIAL, result.output
    result = run_cli(inputs, "--model", model, "--out", tmp_path / "p.csv", "--flows", tmp_path / "f.csv")
    assert result.exit_code == EXIT_PARTIAL, result.output
    pt, ct = pq.read_table(tmp_path / "p.parquet"), pcsv.read_csv(tmp_path / "p.csv")
    assert pt.column_names == ct.column_names and not any(c.startswith("p_") for c in pt.column_names)
    for name in ("file", "frame", "src_addr", "dst_addr", "label"):
        assert pt[name].to_pylist() == ct[name].to_pylist()
    assert pt["timestamp"].cast(pa.int64()).to_pylist() == ct["timestamp"].cast(pa.int64()).to_pylist()
    np.testing.assert_allclose(pt["prob"].to_numpy(), ct["prob"].to_numpy(), rtol=1e-6)
    pf, cf = pq.read_table(tmp_path / "f.parquet"), pcsv.read_csv(tmp_path / "f.csv")
    assert pf["packets"].to_pylist() == cf["packets"].to_pylist()
    assert pf["label"].to_pylist() == cf["label"].to_pylist()


def test_argument_errors(tmp_path, inputs, model):
    assert run_cli(inputs, "--model", model, "--format", "xlsx").exit_code == 2
    assert run_cli(tmp_path / "missing", "--model", model).exit_code == 2
    same = tmp_path / "a.parquet"
    assert run_cli(inputs, "--model", model, "--out", same, "--flows", same).exit_code == 2
    assert run_cli(inputs, "--model", tmp_path / "nope.onnx").exit_code == 2


def test_only_bad_files_fails(tmp_path, model):
    (tmp_path / "x.txt").write_text("hello")
    result = run_cli(tmp_path / "x.txt", "--model", model, "--out", tmp_path / "p.parquet")
    assert result.exit_code == 1
    assert not (tmp_path / "p.parquet").exists()  # a run that read nothing writes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]  # no manifest or parts left either


# -- resume ------------------------------------------------------------------------------------------------
def _opts(out: Path, model: Path, **kw) -> ScoreOptions:
    return ScoreOptions(
        out=out, flows_out=out.with_name("flows.parquet"), probs=True, batch=16, model_id=str(model), unit_files=1, **kw
    )


def _runner(model: Path):
    from pktnin.engine.runners import open_runner

    return open_runner(model, "onnxruntime")


def test_resume_after_sigkill(tmp_path, model):
    """A subprocess scoring file by file is killed -9 part-way; --resume reuses what it finished."""
    inputs = make_inputs(tmp_path / "in", n_good=5, packets=60)
    files = find_captures([inputs])
    out = tmp_path / "run" / "p.parquet"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from test_score import _opts, _runner
        from pktnin.packets import find_captures, iter_packets
        from pktnin.scoring import score_files

        def stalling(files, **kw):  # the fourth file never finishes: the run is killed in the middle of it
            for b in iter_packets(files, **kw):
                yield b
                if stalling.calls == 3:
                    print("stalled", flush=True)
                    time.sleep(120)
            stalling.calls += 1
        stalling.calls = 0
        model = Path({str(model)!r})
        score_files(find_captures([{str(inputs)!r}]), _runner(model), _opts(Path({str(out)!r}), model), source=stalling)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "stalled", proc.stderr.read()
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # One unit per file (unit_files=1): cut.pcap, empty.pcap and good0.pcap are finished, good1 was being
    # scored when the run was killed. The manifest may lag (saved every few seconds): the summaries do not.
    summaries = [json.loads(p.read_text()) for p in (out.parent / "p.parquet.parts" / "_units").glob("*.summary.json")]
    finished = sorted(Path(f["report"]["path"]).name for s in summaries for f in s["files"])
    assert finished == ["cut.pcap", "empty.pcap", "good0.pcap"]
    assert not out.exists()

    resumed = score_files(files, _runner(model), _opts(out, model, resume=True))
    assert resumed.resumed == 3
    fresh_out = tmp_path / "fresh" / "p.parquet"
    fresh = score_files(files, _runner(model), _opts(fresh_out, model))
    assert fresh.resumed == 0
    assert pq.read_table(out).equals(pq.read_table(fresh_out))
    assert pq.read_table(out.with_name("flows.parquet")).equals(pq.read_table(fresh_out.with_name("flows.parquet")))
    assert sorted(p.name for p in out.parent.iterdir()) == ["flows.parquet", "p.parquet"]


def test_resume_redoes_changed_files_and_settings(tmp_path, model):
    inputs = make_inputs(tmp_path / "in", n_good=3, packets=40)
    files = find_captures([inputs])
    out = tmp_path / "p.parquet"

    def fail_after_two(reports):
        fail_after_two.saved += len(reports)
        if fail_after_two.saved >= 3:
            raise RuntimeError("injected fault")

    fail_after_two.saved = 0
    with pytest.raises(RuntimeError, match="injected fault"):
        score_files(files, _runner(model), _opts(out, model), on_saved=fail_after_two)
    done = json.loads((tmp_path / "p.parquet.manifest.json").read_text())["files"]
    assert len(done) == 3
    # A finished file changes on disk: it is scored again (its unit held only it: unit_files=1).
    changed = Path(sorted(f["report"]["path"] for unit in done.values() for f in unit["files"])[0])
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    res = score_files(files, _runner(model), _opts(out, model, resume=True))
    assert res.resumed == 2
    assert res.rows_written == pq.read_table(out).num_rows
    t = pq.read_table(out)
    keys = list(zip(t["file"].to_pylist(), t["frame"].to_pylist()))
    assert len(keys) == len(set(keys))

    # Different settings (mask): refused unless forced, then nothing is reused.
    fail_after_two.saved = 0
    with pytest.raises(RuntimeError):
        score_files(files, _runner(model), _opts(out, model, force=True), on_saved=fail_after_two)
    with pytest.raises(OutputError, match='mask: "paper" -> "strict"'):
        score_files(files, _runner(model), _opts(out, model, resume=True, mask="strict"))
    res = score_files(files, _runner(model), _opts(out, model, resume=True, mask="strict", force=True))
    assert res.resumed == 0


# -- pipeline stages with a fake source and runner -----------------------------------------------------------
def _fake_batch(file_index: int, start: int, n: int) -> PacketBatch:
    rows = np.zeros((n, 1500), dtype=np.uint8)
    rows[:, 0] = np.arange(start, start + n) % 251
    meta = {
        "frame": np.arange(start, start + n, dtype=np.int64),
        "ts_ns": np.arange(start, start + n, dtype=np.int64) * 1000,
        "ip_version": np.full(n, 4, dtype=np.uint8),
        "proto": np.full(n, 6, dtype=np.uint8),
        "src_addr": np.tile(np.array([10, 0, 0, 1] + [0] * 12, dtype=np.uint8), (n, 1)),
        "dst_addr": np.tile(np.array([10, 0, 0, 2] + [0] * 12, dtype=np.uint8), (n, 1)),
        "src_port": np.full(n, 1000, dtype=np.uint16),
        "dst_port": np.full(n, 443, dtype=np.uint16),
        "vlan": np.zeros(n, dtype=np.uint16),
        "flow_key": (np.arange(start, start + n) % 3).astype(np.uint64),
    }
    return PacketBatch(file_index, Path(f"f{file_index}.pcap"), rows, meta)


def fake_source(sizes: dict[int, list[int]], fail_in: int | None = None):
    from pktnin.packets import FileReport

    def source(files, mask, keep_dns, reports, max_records, first_index, **_):
        path = Path(files[0])
        start = 0
        for n in sizes[first_index]:
            if first_index == fail_in:
                raise OSError(f"{path}: disk read error at byte offset 1234")
            yield _fake_batch(first_index, start, n)
            start += n
        reports.append(FileReport(index=first_index, path=path, records=start, kept=start))

    return source


class CountingRunner:
    """Probabilities from the first byte of each row; records every call's size; can fail on call k."""

    classes = ["a", "b", "c"]

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_on = fail_on

    def infer(self, rows, out):
        self.calls.append(len(rows))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("engine failure")
        x = rows[:, 0].astype(np.float32)
        out[: len(rows)] = np.stack([x, 250 - x, np.full_like(x, 125)], axis=1) / 375
        return out[: len(rows)]


def _fake_files(tmp_path: Path, n: int) -> list[Path]:
    files = []
    for i in range(n):
        p = tmp_path / f"f{i}.pcap"
        p.write_bytes(b"x")
        files.append(p)
    return files


def test_engine_batches_across_file_boundaries(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = [Path(f"f{i}.pcap") for i in range(4)]
    for p in files:
        p.write_bytes(b"x")
    sizes = {0: [5, 30], 1: [], 2: [7], 3: [40, 1, 13]}
    runner = CountingRunner()
    res = score_files(files, runner, ScoreOptions(out=tmp_path / "p.parquet", batch=16), source=fake_source(sizes))
    total = sum(sum(v) for v in sizes.values())
    assert sum(runner.calls) == total and runner.calls[:-1] == [16] * (len(runner.calls) - 1)
    t = pq.read_table(tmp_path / "p.parquet")
    assert t["file"].to_pylist() == [f"f{i}.pcap" for i in range(4) for _ in range(sum(sizes[i]))]
    assert t["frame"].to_pylist() == [f for i in range(4) for f in range(sum(sizes[i]))]
    x = (np.array(t["frame"].to_pylist()) % 251).astype(np.float32)
    expected_probs = np.stack([x, 250 - x, np.full_like(x, 125)], 1)
    assert t["label"].to_pylist() == [["a", "b", "c"][i] for i in np.argmax(expected_probs, 1)]
    assert res.label_counts.sum() == total == res.rows_written


@pytest.mark.parametrize("where", ["engine", "reader"])
def test_stage_errors_stop_the_run(tmp_path, where):
    files = _fake_files(tmp_path, 6)
    sizes = {i: [50, 50] for i in range(6)}
    runner = CountingRunner(fail_on=3 if where == "engine" else None)
    source = fake_source(sizes, fail_in=4 if where == "reader" else None)
    before = threading.active_count()
    started = time.monotonic()
    with pytest.raises((RuntimeError, OSError), match="engine failure" if where == "engine" else "byte offset 1234"):
        score_files(files, runner, ScoreOptions(out=tmp_path / "p.parquet", batch=16, unit_files=1), source=source)
    assert time.monotonic() - started < 10
    assert threading.active_count() == before  # no stage left running
    assert not (tmp_path / "p.parquet").exists()
    assert (tmp_path / "p.parquet.manifest.json").exists()  # finished files stay for --resume
    assert not [p for p in (tmp_path / "p.parquet.parts").iterdir() if p.name.endswith(".tmp")]


def test_hook_stages_are_made_per_unit_and_see_only_their_unit(tmp_path):
    """ChainHooks: each factory is called once per unit; its stage sees that unit's messages, in order."""
    from pktnin.scoring.chain import ChainHooks
    from pktnin.scoring.messages import FileEnd, Scored

    files = _fake_files(tmp_path, 5)
    sizes = {0: [5, 30], 1: [], 2: [7], 3: [40, 1, 13], 4: [3]}
    made: list[tuple[str, str, list]] = []

    class Seen:
        """Keeps what it sees (per-unit state) and hands every message on; holds the last one until the end."""

        def __init__(self, where: str, unit) -> None:
            self.held = None
            self.seen: list = []
            made.append((where, unit.id, self.seen))
            self.files = {p.file_index for p in unit.pieces}

        def __call__(self, item):
            index = item.report.index if isinstance(item, FileEnd) else item.file_index
            assert index in self.files  # nothing of another unit
            self.seen.append(type(item).__name__)
            out, self.held = ([] if self.held is None else [self.held]), item
            return out

        def finish(self):
            return [] if self.held is None else [self.held]

    hooks = ChainHooks(after_prep=lambda u: Seen("prep", u), after_engine=lambda u: Seen("engine", u))
    opts = ScoreOptions(out=tmp_path / "p.parquet", batch=16, unit_files=2)
    res = score_files(files, CountingRunner(), opts, source=fake_source(sizes), hooks=hooks)
    assert [w for w, _, _ in made] == ["prep", "engine"] * 3  # three units of at most two files
    assert len({u for _, u, _ in made}) == 3
    prep_seen = [kinds for w, _, kinds in made if w == "prep"]
    assert prep_seen[0] == ["PacketBatch", "PacketBatch", "FileEnd", "FileEnd"]
    engine_seen = [kinds for w, _, kinds in made if w == "engine"]
    assert all(k in (Scored.__name__, "FileEnd") for kinds in engine_seen for k in kinds)
    assert [kinds.count("FileEnd") for kinds in engine_seen] == [2, 2, 1]
    assert res.rows_written == sum(sum(v) for v in sizes.values()) == pq.read_table(tmp_path / "p.parquet").num_rows


def test_stages_run_on_their_own(tmp_path):
    """The read and engine stages of the CPU path, wired by hand, without score_files or a writer."""
    import queue

    from pktnin.scoring.cpu_stages import engine_stage, read_stage
    from pktnin.scoring.messages import FileEnd, Scored
    from pktnin.scoring.options import ChainSettings
    from pktnin.scoring.units import Piece
    from pktnin.stages import DONE, Stages

    files = _fake_files(tmp_path, 2)
    sizes = {0: [5, 30], 1: [7]}
    stages = Stages()
    read_q, scored_q = queue.Queue(maxsize=2), queue.Queue(maxsize=2)
    runner = CountingRunner()
    pieces = [Piece(i, str(p)) for i, p in enumerate(files)]
    settings = ChainSettings(prep_threads=None)
    stages.thread("read", read_stage, stages, pieces, read_q, settings, source=fake_source(sizes))
    stages.thread("engine", engine_stage, stages, runner, 16, read_q, scored_q)
    got = []
    while (item := stages.get(scored_q)) is not DONE:
        got.append(item)
    stages.finish()
    stages.raise_error()
    ends = [i for i, item in enumerate(got) if isinstance(item, FileEnd)]
    assert [got[i].report.index for i in ends] == [0, 1] and ends[-1] == len(got) - 1
    scored = [item for item in got if isinstance(item, Scored)]
    assert [len(s.probs) for s in scored] == [5, 11, 16, 3, 7]  # pieces of 16-row engine batches, per file
    assert all(isinstance(item, Scored) for item in got[: ends[0]])
    assert runner.calls == [16, 16, 10]


def test_stage_error_reaches_the_caller_and_stops_the_others():
    import queue

    from pktnin.stages import Stages, Stopped

    stages = Stages()
    q: queue.Queue = queue.Queue(maxsize=1)

    def waiting():
        stages.get(q)  # nothing ever comes: only the stop flag ends this wait

    def failing():
        raise OSError("broken on purpose")

    stages.thread("waiting", waiting)
    stages.run(failing)
    stages.finish()
    assert not any(t.is_alive() for t in stages.threads)
    with pytest.raises(OSError, match="on purpose"):
        stages.raise_error()
    with pytest.raises(Stopped):
        stages.put(q, 1)


def test_runner_faces():
    from pktnin.engine.protocols import DeviceRunner, ModelRunner

    assert isinstance(CountingRunner(), ModelRunner)
    assert not isinstance(CountingRunner(), DeviceRunner)

    class NoInfer:
        classes = ["a"]

    assert not isinstance(NoInfer(), ModelRunner)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"fmt": "json"}, "unknown output format"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"prep_threads": 0}, "prep_threads must be at least 1"),
        ({"unit_bytes": 0}, "unit_bytes must be at least 1"),
        ({"unit_files": -1}, "unit_files must be at least 1"),
        ({"mask": "loose"}, "mask"),
        ({"flows_out": "p.parquet"}, "flows output must differ"),
    ],
)
def test_score_options_check_themselves(tmp_path, monkeypatch, kw, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        ScoreOptions(out=Path("p.parquet"), **kw)
    opts = ScoreOptions(out="p.parquet", flows_out="f.parquet", prep_threads=None)
    assert opts.out == Path("p.parquet") and opts.flows_out == Path("f.parquet")


# -- pieces --------------------------------------------------------------------------------------------------
def test_flow_accumulator_merges_incrementally(monkeypatch):
    monkeypatch.setattr(flows_mod, "MERGE_ROWS", 7)
    rng = np.random.default_rng(0)
    n = 500
    whole = _fake_batch(0, 0, n).meta
    whole["flow_key"] = rng.integers(0, 40, size=n).astype(np.uint64)
    whole["src_port"] = (1000 + rng.integers(0, 2, size=n)).astype(np.uint16)
    probs = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    acc = FlowAccumulator(3)
    for lo in range(0, n, 13):
        acc.add({k: v[lo : lo + 13] for k, v in whole.items()}, probs[lo : lo + 13])
    schema = flow_schema(["a", "b", "c"], True)
    t = acc.table("f", pa.array(["a", "b", "c"]), schema)
    keys = np.unique(whole["flow_key"])
    assert t.num_rows == len(keys)
    firsts = sorted(int(np.flatnonzero(whole["flow_key"] == k)[0]) for k in keys)
    for row, first in zip(t.to_pylist(), firsts):  # ordered by first packet; endpoint a sent it
        members = whole["flow_key"] == whole["flow_key"][first]
        assert row["packets"] == members.sum()
        assert row["port_a"] == whole["src_port"][first]
        assert row["first_ts"].timestamp() * 1e9 == pytest.approx(whole["ts_ns"][members].min(), abs=1000)
        np.testing.assert_allclose([row["p_a"], row["p_b"], row["p_c"]], probs[members].mean(axis=0), rtol=1e-5)


def test_format_addresses_v4_and_v6():
    texts = ["192.0.2.1", "2001:db8::1", "0.0.0.0", "::ffff:1.2.3.4", "255.255.255.255", "fe80::1:2"]
    addrs = np.zeros((len(texts), 16), dtype=np.uint8)
    versions = np.zeros(len(texts), dtype=np.uint8)
    for i, s in enumerate(texts):
        a = ipaddress.ip_address(s)
        addrs[i, : len(a.packed)] = np.frombuffer(a.packed, dtype=np.uint8)
        versions[i] = a.version
    assert format_addresses(addrs, versions).to_pylist() == [str(ipaddress.ip_address(s)) for s in texts]


def test_earlier_output_inside_the_input_folder_is_not_an_input(tmp_path, model):
    inputs = make_inputs(tmp_path / "in", n_good=2, packets=30)
    out = inputs / "p.parquet"
    first = run_cli(inputs, "--model", model, "--out", out, "--flows", inputs / "f.parquet")
    rows = pq.read_table(out)
    second = run_cli(inputs, "--model", model, "--out", out, "--flows", inputs / "f.parquet", "--force")
    assert first.exit_code == second.exit_code == EXIT_PARTIAL
    assert pq.read_table(out).equals(rows)
    assert second.output.count("failed") == first.output.count("failed") == 2  # empty.pcap; the exit line
    assert second.output.count("not a capture") == first.output.count("not a capture") == 1  # notes.txt
