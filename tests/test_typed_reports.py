"""Typed reports: the reader's issues (kind, offset, count, description) reach the run's reports unchanged in
meaning, whether a file is scored whole or cut into units; a file that changes while it is read is that file's
error, and a resumed run never reuses a piece of it."""

from __future__ import annotations

import ast
import json
import os
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import pcap_bytes, pcap_record_offsets, write_pcapng

import pktnin
from pktnin.engine.runners import open_runner
from pktnin.kernels.capture import Issue
from pktnin.packets import FileReport, input_failures
from pktnin.scoring import ScoreOptions
from pktnin.scoring.manifest import report_from_dict, report_to_dict
from pktnin.scoring.run import run_units
from pktnin.scoring.unit_run import LocalExecutor
from pktnin.scoring.units import make_units

CLASSES = ["a", "b"]
STEP = 5  # records per index step: cuts at odd places


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", CLASSES, seed=3)


def _run(files, model, out: Path, executor_of=None, **kw):
    opts = ScoreOptions(out=out, probs=True, batch=16, model_id=str(model), **kw)
    executor = LocalExecutor(open_runner(model, "onnxruntime"), opts)
    if executor_of is not None:
        executor = executor_of(executor)
    return run_units(files, opts, CLASSES, executor, step_records=STEP)


def _short_epb(e: str = "<") -> bytes:
    """A packet block too short for its own fields (skipped, counted as corrupt)."""
    return struct.pack(e + "II", 6, 20) + b"\0" * 8 + struct.pack(e + "I", 20)


def test_a_file_cut_into_units_reports_the_same_typed_issues_as_scored_whole(model, tmp_path):
    pk = mixed_traffic(4, 500, flows=3)
    records = []
    for i, (ts, data) in enumerate(pk):
        if i % 100 == 30:  # an undefined interface, another one in each stretch: only the first is named
            records.append(("epb", 5 + i // 100, ts, data))
        elif i % 100 == 70:
            records.append(("raw", _short_epb()))
        else:
            records.append(("epb", 0, ts, data))
    records.append(("raw", struct.pack("<II", 6, 4000) + b"\0" * 64))  # a block beyond the end: stops the file
    (tmp_path / "in").mkdir()
    path = write_pcapng(tmp_path / "in" / "odd.pcapng", [{"interfaces": [(1, 9)], "records": records}])
    assert len(make_units([path], {}, 20000, step_records=STEP)) >= 4
    whole = _run([path], model, tmp_path / "whole" / "p.parquet")
    split = _run([path], model, tmp_path / "split" / "p.parquet", unit_bytes=20000)

    (w,), (s,) = whole.reports, split.reports
    assert [i.kind for i in w.issues] == ["undefined-interface", "short-packet-block", "block-beyond-end"]
    undefined, short, fatal = w.issues
    assert (undefined.count, short.count, fatal.count) == (5, 5, 1) and fatal.fatal and not undefined.fatal
    assert "undefined interface 5" in undefined.description  # the first one's value
    assert w.error_offset == fatal.offset and w.status == "partial"
    assert s.issues == w.issues  # kinds, offsets, counts, descriptions
    assert (s.records, s.kept, s.corrupt_records, s.skip_counts, s.failed, s.stopped_early) == (
        w.records, w.kept, w.corrupt_records, w.skip_counts, w.failed, w.stopped_early
    )  # fmt: skip
    assert s.errors == w.errors and "first of 5 in this file, skipped" in s.errors[0]
    assert pq.read_table(tmp_path / "split" / "p.parquet").equals(pq.read_table(tmp_path / "whole" / "p.parquet"))


def test_reports_round_trip_through_the_saved_summaries():
    report = FileReport(index=2, path=Path("x/odd.pcapng"), format="pcapng", records=9, corrupt_records=1)
    report.issues = [Issue("undefined-interface", 120, "record references undefined interface 7", 3, fatal=False),
                     Issue("cut-short", 900, "file cut short at offset 900 while being read (...)")]  # fmt: skip
    report.stopped_early = True
    back = report_from_dict(json.loads(json.dumps(report_to_dict(report))))
    assert back == report and back.issues == report.issues and back.error_offset == 900
    unreadable = FileReport(index=0, path=Path("gone.pcap"), failed=True, issues=[Issue("unreadable", None, "gone")])
    assert report_from_dict(json.loads(json.dumps(report_to_dict(unreadable)))) == unreadable
    assert unreadable.errors == ["gone.pcap: gone"] and unreadable.error_offset is None


class _Meddling:
    """An executor that runs `inner` and calls `after[n]()` once the n-th unit's summary was taken."""

    live_progress = True

    def __init__(self, inner, after: dict) -> None:
        self.inner, self.after = inner, after

    def __call__(self, units, parts_dir, progress=None):
        for n, summary in enumerate(self.inner(units, parts_dir, progress)):
            yield summary
            if n in self.after:
                self.after[n]()


class _Killed(Exception):
    pass


def _capture_and_its_edit(root: Path) -> tuple[Path, bytes, bytes]:
    """A capture cut into several units, and the same capture with a payload byte of its later records changed
    (same size, same framing)."""
    pk = mixed_traffic(6, 400, flows=3, max_payload=200)
    data = pcap_bytes(pk)
    edited = bytearray(data)
    for off, (_, frame) in list(zip(pcap_record_offsets(pk), pk))[200:]:
        edited[off + 16 + len(frame) - 1] ^= 0x5A
    path = root / "big.pcap"
    root.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, data, bytes(edited)


def test_a_file_changed_during_the_run_is_that_files_error_and_is_never_reused(model, tmp_path):
    path, data, edited = _capture_and_its_edit(tmp_path / "in")
    other = tmp_path / "in" / "small.pcap"
    other.write_bytes(pcap_bytes(mixed_traffic(8, 50)))
    files = [path, other]
    stat = os.stat(path)

    def rewrite() -> None:
        path.write_bytes(edited)

    result = _run(files, model, tmp_path / "a" / "p.parquet", lambda ex: _Meddling(ex, {0: rewrite}), unit_bytes=8000)
    changed, small = result.reports
    assert [i.kind for i in changed.issues] == ["changed"] and changed.stopped_early and changed.status == "partial"
    assert changed.errors == ["big.pcap: changed while it was read; rerun to score it again"]
    assert changed.records == 400 and small.status == "ok" and input_failures(result.reports) == [changed]
    assert pq.read_table(tmp_path / "a" / "p.parquet").num_rows == result.packets

    # Killed after the first unit that read the changed file; the file then put back as it was (same bytes,
    # same mtime): the resumed run must score that unit again, not reuse what it read of the other version.
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    def kill() -> None:
        raise _Killed

    out = tmp_path / "b" / "p.parquet"
    with pytest.raises(_Killed):
        _run(files, model, out, lambda ex: _Meddling(ex, {0: rewrite, 1: kill}), unit_bytes=8000, resume=True)
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    resumed = _run(files, model, out, unit_bytes=8000, resume=True)
    fresh = _run(files, model, tmp_path / "c" / "p.parquet", unit_bytes=8000)
    assert [r.issues for r in resumed.reports] == [[], []] and input_failures(resumed.reports) == []
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "c" / "p.parquet"))
    assert resumed.label_counts.tolist() == fresh.label_counts.tolist()


def test_no_regular_expression_reads_an_error_message():
    """Reports are typed from the reader to the edge: no module parses a message's text back. Regular expressions
    are left for names (files, Ray's native log lines); a pattern or a subject that speaks of errors fails."""
    message_words = ("offset", "first of", "skipped", "cut short", "error", "in this file")
    subject_words = ("error", "reason", "message", "description", "exc", "str(")
    root = Path(pktnin.__file__).parent
    found = []
    for module in sorted(root.rglob("*.py")):
        tree = ast.parse(module.read_text(), str(module))
        compiled = {  # names bound to re.compile(...)
            t.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and _is_re_call(node.value, "compile")
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.ImportFrom) and node.module == "re"), f"{module}: use re.<call>"
            if not isinstance(node, ast.Call):
                continue
            direct = _is_re_call(node)
            through = (
                isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in compiled
            )
            if not (direct or through):
                continue
            args = [ast.unparse(a) for a in node.args]
            pattern = " ".join(args[:1]).lower() if direct else ""
            subjects = " ".join(args[1:] if direct else args).lower()
            where = f"{module.relative_to(root)}:{node.lineno}"
            found.append(where)
            assert not any(w in pattern for w in message_words), f"{where}: a pattern over message text"
            assert not any(w in subjects for w in subject_words), f"{where}: a regular expression over a message"
    assert found  # the scan sees the patterns that do exist (file names, log lines)


def _is_re_call(node: ast.AST, name: str | None = None) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "re"
        and (name is None or node.func.attr == name)
    )
