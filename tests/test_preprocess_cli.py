"""`pktnin preprocess` and `pktnin bench prep`, driven from outside through the CLI."""

from __future__ import annotations

import json

import numpy as np
import packetgen as pg
import pcapgen
from typer.testing import CliRunner

from pktnin.cli import app
from pktnin.layout import ROW_LEN

runner = CliRunner()


def _tls_like(i: int) -> bytes:
    return pg.ethernet(
        pg.ipv4(pg.tcp(sport=40000 + i, dport=443, payload=pg.payload_bytes(100 + i)), src="10.0.0.1", dst="10.0.0.2")
    )


def _make_tree(tmp_path):
    """Two good captures (pcap + pcapng, one in a sub-folder), a text file, an empty file, a truncated capture."""
    root = tmp_path / "caps"
    (root / "sub").mkdir(parents=True)
    pcapgen.write_pcap(
        root / "a.pcap",
        [_tls_like(i) for i in range(5)] + [pg.ethernet(pg.ipv4(pg.udp(dport=53, payload=b"q"), proto=17))],
    )
    pcapgen.write_pcapng(
        root / "sub" / "b.capture",  # named like nothing: detected by magic
        [
            {
                "big_endian": True,
                "interfaces": [(101, None)],
                "records": [("epb", 0, 1_000, pg.ipv4(pg.tcp(payload=b"x" * 7)))],
            }
        ],
    )
    (root / "notes.txt").write_text("not a capture\n")
    (root / "empty.pcap").write_bytes(b"")
    good = pcapgen.pcap_bytes([_tls_like(i) for i in range(3)])
    (root / "truncated.pcap").write_bytes(good[:-10])
    return root


def test_preprocess_writes_rows_metadata_and_reports_bad_files(tmp_path):
    root = _make_tree(tmp_path)
    out = tmp_path / "rows.npz"
    result = runner.invoke(app, ["preprocess", str(root), "--out", str(out), "--no-progress"])
    assert result.exit_code == 3, result.output  # empty.pcap failed and truncated.pcap was cut short
    data = np.load(out)
    files = [str(f) for f in data["files"]]
    assert len(files) == 5
    x = data["x"]
    assert x.dtype == np.uint8 and x.shape[1] == ROW_LEN
    # a.pcap: 5 TLS-like rows (DNS skipped); b.capture: 1; truncated.pcap: the 2 complete records before the cut.
    per_file = {f.rsplit("/", 1)[-1]: int((data["file_id"] == i).sum()) for i, f in enumerate(files)}
    assert per_file == {"a.pcap": 5, "b.capture": 1, "empty.pcap": 0, "notes.txt": 0, "truncated.pcap": 2}
    a = files.index(str(root / "a.pcap"))
    sel = data["file_id"] == a
    assert list(data["frame"][sel]) == [0, 1, 2, 3, 4]
    assert list(data["src_port"][sel]) == [40000, 40001, 40002, 40003, 40004]
    assert list(data["src_addr"][sel][0][:4]) == [10, 0, 0, 1]  # metadata keeps the address the row masks
    assert not x[np.flatnonzero(sel)[0], 12:20].any()
    # Payload of frame 2 (102 bytes counting 1, 2, ...) starts at byte 40 and is zero-padded after it.
    row = x[np.flatnonzero(sel)[2]]
    assert list(row[40:43]) == list(pg.payload_bytes(3))
    assert row[40 + 102 :].sum() == 0
    # The bad files are named, with offsets, and the DNS packet is counted as skipped.
    text = " ".join(result.output.split())
    assert "dns" in text and "notes.txt" in text and "empty.pcap" in text and "truncated.pcap" in text
    assert "offset" in text and "not a capture, skipped (1)" in text


def test_preprocess_keep_dns_and_strict_mask(tmp_path):
    root = _make_tree(tmp_path)
    out = tmp_path / "rows.npz"
    result = runner.invoke(
        app, ["preprocess", str(root / "a.pcap"), "--out", str(out), "--keep-dns", "--mask", "strict", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    data = np.load(out)
    assert data["x"].shape[0] == 6
    assert not data["x"][:, 20:24].any()  # strict zeroes the ports
    assert list(data["dst_port"]) == [443] * 5 + [53]


def test_preprocess_rejects_unknown_mask_and_missing_path(tmp_path):
    out = tmp_path / "rows.npz"
    result = runner.invoke(app, ["preprocess", str(tmp_path), "--out", str(out), "--mask", "nope"])
    assert result.exit_code != 0 and "nope" in result.output
    result = runner.invoke(app, ["preprocess", str(tmp_path / "missing"), "--out", str(out)])
    assert result.exit_code != 0 and "missing" in result.output
    assert not out.exists()


def test_bench_prep_json(tmp_path):
    root = _make_tree(tmp_path)
    result = runner.invoke(app, ["bench", "prep", str(root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) >= {"packets", "seconds", "packets_per_s"}
    assert report["packets"] == 6 + 1 + 2  # every record read, kept or skipped
    assert report["rows"] == 8
    assert report["seconds"] > 0 and report["packets_per_s"] == report["packets"] / report["seconds"]


def test_file_names_with_brackets_are_printed_as_text(tmp_path):
    root = tmp_path / "caps"
    root.mkdir()
    (root / "[bold]notes.txt").write_text("not a capture\n")
    pcapgen.write_pcap(root / "ok.pcap", [_tls_like(1)])
    result = runner.invoke(app, ["preprocess", str(root), "--out", str(tmp_path / "r.npz"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "[bold]notes.txt" in "".join(result.output.split())


def test_empty_and_full_npz_store_the_schema_dtypes(tmp_path):
    from pktnin.schema import PACKET_META

    root = _make_tree(tmp_path)
    (tmp_path / "none").mkdir()
    pcapgen.write_pcap(tmp_path / "none" / "empty.pcap", [])  # a readable capture without packets
    outputs = {}
    for name, src in (("full", root), ("empty", tmp_path / "none")):
        out = tmp_path / f"{name}.npz"
        result = runner.invoke(app, ["preprocess", str(src), "--out", str(out), "--no-progress"])
        assert result.exit_code == (3 if name == "full" else 0), result.output  # the tree holds bad captures
        outputs[name] = np.load(out)
    assert len(outputs["full"]["frame"]) > 0 and len(outputs["empty"]["frame"]) == 0
    for name, (dtype, shape) in PACKET_META.items():
        for data in outputs.values():
            assert data[name].dtype == dtype, name
            assert data[name].shape[1:] == shape, name
    for key in ("x", "file_id"):
        assert outputs["full"][key].dtype == outputs["empty"][key].dtype


def test_existing_output_is_kept_unless_force(tmp_path):
    root = _make_tree(tmp_path)
    out = tmp_path / "rows.npz"
    out.write_bytes(b"someone's earlier file")
    args = ["preprocess", str(root), "--out", str(out), "--no-progress"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert out.read_bytes() == b"someone's earlier file"  # untouched, and no work done
    folder = runner.invoke(app, ["preprocess", str(root), "--out", str(tmp_path), "--no-progress"])
    assert folder.exit_code == 2 and "is a folder" in folder.output
    replaced = runner.invoke(app, [*args, "--force"])
    assert replaced.exit_code in (0, 3), replaced.output  # the tree holds a non-capture file
    assert len(np.load(out)["x"]) > 0
