"""Dataset format (write/load, atomicity), build options, and the build from each source (ISCX tree, class
folders, flow-label CSV)."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from packetgen import ethernet, ipv4, ipv6, tcp, udp
from pcapgen import write_pcap, write_pcapng
from typer.testing import CliRunner

from pktnin.cli import app
from pktnin.dataset.build import build_dataset
from pktnin.dataset.detect import detect_source
from pktnin.dataset.format import load_dataset, write_dataset
from pktnin.dataset.iscx import ISCX_TASK_A, ISCX_TASK_B, iscx_label
from pktnin.dataset.options import BuildOptions
from pktnin.dataset.sampling import Reservoir, random_split
from pktnin.layout import HEADER_LEN, LAYOUT_VERSION, ROW_LEN

# ---------------------------------------------------------------------------------------------------------------
# Generated captures. Every payload starts with a marker (tag, packet number), so a row tells where it came from:
# row[40] is the tag (file or flow number), row[41:43] the packet number.
# ---------------------------------------------------------------------------------------------------------------


def marked(tag: int, i: int, size: int = 24) -> bytes:
    return bytes([tag]) + i.to_bytes(2, "big") + bytes(range(3, size))


def row_tag(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows[:, HEADER_LEN])


def tcp_frame(tag, i, src="10.0.0.1", sport=40000, dst="10.0.0.2", dport=443, vlan=None, v6=False):
    seg = tcp(sport=sport, dport=dport, payload=marked(tag, i))
    ip = ipv6(seg, src=src, dst=dst) if v6 else ipv4(seg, src=src, dst=dst)
    return ethernet(ip, vlans=[(0x8100, vlan)] if vlan else [])


def udp_frame(tag, i, src="10.0.0.1", sport=40000, dst="10.0.0.3", dport=3478):
    return ethernet(ipv4(udp(sport=sport, dport=dport, payload=marked(tag, i)), proto=17, src=src, dst=dst))


def capture(path: Path, tag: int, n: int, pcapng: bool = False) -> Path:
    """n packets of one TCP flow, all carrying `tag`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [tcp_frame(tag, i, sport=40000 + tag) for i in range(n)]
    if pcapng:
        records = [("epb", 0, i * 1000, f) for i, f in enumerate(frames)]
        return write_pcapng(path, [{"interfaces": [(1, 9)], "records": records}])
    return write_pcap(path, frames)


# ---------------------------------------------------------------------------------------------------------------
# Format
# ---------------------------------------------------------------------------------------------------------------


def small_arrays(n=50, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (n, ROW_LEN), dtype=np.uint8)
    labels = rng.integers(0, 3, n)
    split = rng.integers(0, 3, n)
    flow = rng.integers(0, 10, n)
    return rows, labels, split, flow


def test_write_load_round_trip(tmp_path):
    rows, labels, split, flow = small_arrays()
    out = write_dataset(
        tmp_path / "d",
        rows,
        labels,
        split,
        flow,
        {"classes": ["a", "b", "c"], "task": "t"},
        file_index=np.arange(50) % 4,
    )
    d = load_dataset(out)
    assert isinstance(d.rows, np.memmap) and d.rows.dtype == np.uint8 and d.rows.shape == (50, ROW_LEN)
    assert np.array_equal(d.rows, rows)
    assert d.labels.dtype == np.int16 and np.array_equal(d.labels, labels)
    assert d.split.dtype == np.int8 and np.array_equal(d.split, split)
    assert d.flow.dtype == np.int64 and np.array_equal(d.flow, flow)
    assert np.array_equal(d.file, np.arange(50) % 4)
    assert d.classes == ["a", "b", "c"] and d.num_classes == 3 and len(d) == 50
    assert d.meta["layout_version"] == LAYOUT_VERSION and d.meta["task"] == "t" and d.meta["n_rows"] == 50
    for code, name in enumerate(("train", "val", "test")):
        assert np.array_equal(d.indices(name), np.flatnonzero(split == code))
        for c, cls in enumerate(d.classes):
            assert d.meta["counts"][name][cls] == int(np.sum((split == code) & (labels == c)))
    assert sum(d.meta["counts"]["total"].values()) == 50
    with pytest.raises(ValueError, match="unknown split"):
        d.indices("training")


def test_write_checks_shapes_and_labels(tmp_path):
    rows, labels, split, flow = small_arrays()
    with pytest.raises(ValueError, match="rows must have shape"):
        write_dataset(tmp_path / "d", rows[:, :100], labels, split, flow, {"classes": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="labels must lie"):
        write_dataset(tmp_path / "d", rows, labels, split, flow, {"classes": ["a", "b"]})
    with pytest.raises(ValueError, match="split must have shape"):
        write_dataset(tmp_path / "d", rows, labels, split[:-1], flow, {"classes": ["a", "b", "c"]})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_old_dataset_and_no_partial_dir(tmp_path, monkeypatch):
    rows, labels, split, flow = small_arrays()
    out = tmp_path / "d"
    write_dataset(out, rows, labels, split, flow, {"classes": ["a", "b", "c"], "task": "old"})

    real_save = np.save

    def failing_save(path, arr, *a, **k):
        if Path(path).name == "split.npy":  # fail midway, after rows and labels are written
            raise OSError("disk full")
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(out, rows[:10], labels[:10], split[:10], flow[:10], {"classes": ["a", "b", "c"], "task": "new"})
    with pytest.raises(OSError, match="disk full"):
        write_dataset(tmp_path / "fresh", rows, labels, split, flow, {"classes": ["a", "b", "c"]})
    monkeypatch.setattr(np, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary or half-written directory
    d = load_dataset(out)
    assert d.meta["task"] == "old" and len(d) == 50

    write_dataset(out, rows[:10], labels[:10], split[:10], flow[:10], {"classes": ["a", "b", "c"], "task": "new"})
    assert load_dataset(out).meta["task"] == "new" and len(load_dataset(out)) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_load_rejects_other_layout_version(tmp_path):
    rows, labels, split, flow = small_arrays()
    out = write_dataset(tmp_path / "d", rows, labels, split, flow, {"classes": ["a", "b", "c"]})
    meta = json.loads((out / "meta.json").read_text())
    meta["layout_version"] = LAYOUT_VERSION + 1
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="layout_version"):
        load_dataset(out)
    with pytest.raises(FileNotFoundError, match="not a dataset"):
        load_dataset(tmp_path)


def test_reservoir_is_uniform_and_seeded():
    # 40 packets in batches of 7, cap 10: every packet must be kept with probability 1/4.
    kept = np.zeros(40)
    trials = 400
    for t in range(trials):
        r = Reservoir(10, np.random.default_rng(t))
        for start in range(0, 40, 7):
            idx = np.arange(start, min(start + 7, 40))
            rows = np.zeros((len(idx), ROW_LEN), np.uint8)
            r.add(rows, idx, idx.astype(np.uint64), idx)
        seq = r.result()[3]
        assert len(seq) == 10 and len(set(seq.tolist())) == 10
        kept[seq] += 1
    assert np.all(np.abs(kept / trials - 0.25) < 0.09), kept / trials
    # no cap keeps everything
    r = Reservoir(None, np.random.default_rng(0))
    r.add(np.zeros((5, ROW_LEN), np.uint8), np.arange(5), np.arange(5, dtype=np.uint64), np.arange(5))
    assert len(r.result()[0]) == 5


def test_random_split_proportions():
    labels = np.repeat([0, 1, 2], [1000, 250, 7])
    split = random_split(labels, seed=3)
    for cls, n in ((0, 1000), (1, 250)):
        got = np.bincount(split[labels == cls], minlength=3)
        assert got.tolist() == [round(0.68 * n), round(0.16 * n), n - round(0.68 * n) - round(0.16 * n)]
    assert np.array_equal(split, random_split(labels, seed=3))
    assert not np.array_equal(split, random_split(labels, seed=4))


# ---------------------------------------------------------------------------------------------------------------
# ISCX tree
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, app, traffic, vpn",
    [
        ("vpn_skype_audio1.pcap", "Skype", "VoIP", True),
        ("facebook_chat_4a.pcap", "Facebook", "Chat", False),
        ("facebook_video1a.pcap", "Facebook", "VoIP", False),
        ("hangouts_audio2.pcapng", "Hangouts", "VoIP", False),
        ("hangout_chat_4b.pcap", "Hangouts", "Chat", False),
        ("youtube1.pcap", "YouTube", "Streaming", False),
        ("vpn_netflix_A.pcap", "Netflix", "Streaming", True),
        ("ftps_down_1a.pcap", "FTPS", "File Transfer", False),
        ("torrent01.pcap", "Torrent", "P2P", False),
        ("Torrent01.pcap", "Torrent", "P2P", False),
        ("vpn_bittorrent.pcap", "Torrent", "P2P", True),
        ("skype_file1.pcap", "Skype", "File Transfer", False),
        ("vpn_skype_files1a.pcap", "Skype", "File Transfer", True),
        ("email1a.pcap", "Email", "Email", False),
        ("aim_chat_3a.pcap", "AIM", "Chat", False),
        ("icq_chat_1a.pcap", "ICQ", "Chat", False),
        ("sftp_up_2a.pcap", "SFTP", "File Transfer", False),
        ("voipbuster1b.pcap", "Voipbuster", "VoIP", False),
        ("spotify1.pcap", "Spotify", "Streaming", False),
        ("vimeo1.pcap", "Vimeo", "Streaming", False),
        ("scpDown1.pcap", "SCP", None, False),
        ("gmailchat1.pcap", "Gmail", "Email", False),
        ("torFacebook.pcap", "Tor", None, False),
    ],
)
def test_iscx_label(name, app, traffic, vpn):
    label = iscx_label(name)
    assert (label.app, label.traffic, label.vpn) == (app, traffic, vpn)
    if traffic is not None:
        assert label.traffic_class == (f"VPN-{traffic}" if vpn else traffic)


def test_iscx_label_unknown():
    assert iscx_label("readme.txt") is None
    assert iscx_label("skype_something.pcap") is None  # activity not in the name
    assert iscx_label("capture1.pcap") is None


# file name -> (tag, packets)
ISCX_FILES = {
    "NonVPN/facebook_chat_4a.pcap": (1, 30),
    "VPN/vpn_facebook_chat1a.pcap": (2, 30),
    "NonVPN/aim_chat_3a.pcap": (3, 3),
    "VPN/vpn_aim_chat1a.pcapng": (4, 30),
    "NonVPN/skype_file1.pcap": (5, 20),
    "NonVPN/skype_audio1a.pcap": (6, 20),
    "VPN/vpn_skype_files1a.pcap": (7, 20),
    "NonVPN/gmailchat1.pcap": (8, 10),
    "NonVPN/scpDown1.pcap": (9, 10),
    "NonVPN/torFacebook.pcap": (10, 10),
    "NonVPN/email1a.pcap": (11, 6),
    "NonVPN/Torrent01.pcap": (12, 10),
}


@pytest.fixture(scope="module")
def iscx_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("iscx")
    for name, (tag, n) in ISCX_FILES.items():
        capture(root / name, tag, n, pcapng=name.endswith(".pcapng"))
    (root / "NonVPN" / "notes.txt").write_text("not a capture")
    return root


def tag_counts(d) -> dict[int, int]:
    tags, counts = np.unique(row_tag(d.rows), return_counts=True)
    return dict(zip(tags.tolist(), counts.tolist()))


def test_iscx_task_a_balances_vpn(iscx_tree, tmp_path):
    assert detect_source(iscx_tree) == "iscx"
    report = build_dataset(BuildOptions(iscx_tree, tmp_path / "a", kind="iscx", task="A", max_per_class=20, seed=1))
    d = load_dataset(tmp_path / "a")
    assert d.classes == list(ISCX_TASK_A) and len(d.classes) == 14
    tags = tag_counts(d)
    # Facebook: 10 non-VPN + 10 VPN; AIM: only 3 non-VPN, VPN not topped up beyond half the cap.
    assert tags[1] == 10 and tags[2] == 10 and tags[3] == 3 and tags[4] == 10
    # Skype: file and audio share the non-VPN half.
    assert tags[5] + tags[6] == 10 and tags[7] == 10
    assert 8 not in tags and 9 not in tags and 10 not in tags  # Gmail, SCP, Tor are not in task A
    assert tags[11] == 6 and tags[12] == 10
    labels = {t: d.classes[int(d.labels[row_tag(d.rows) == t][0])] for t in tags}
    assert labels == {
        1: "Facebook",
        2: "Facebook",
        3: "AIM",
        4: "AIM",
        5: "Skype",
        6: "Skype",
        7: "Skype",
        11: "Email",
        12: "Torrent",
    }
    skipped = dict(report.skipped_files)
    assert "matches no ISCX" in skipped[str(Path("NonVPN/notes.txt"))]
    assert "not part of task A" in skipped[str(Path("NonVPN/scpDown1.pcap"))]
    assert d.meta["task"] == "iscx-A" and d.meta["split_mode"] == "random"
    # the same seed gives the same sample; another seed another one
    build_dataset(BuildOptions(iscx_tree, tmp_path / "a2", kind="iscx", task="A", max_per_class=20, seed=1))
    build_dataset(BuildOptions(iscx_tree, tmp_path / "a3", kind="iscx", task="A", max_per_class=20, seed=2))
    assert np.array_equal(load_dataset(tmp_path / "a2").rows, d.rows)
    assert not np.array_equal(load_dataset(tmp_path / "a3").rows, d.rows)


def test_iscx_task_b_traffic_types_and_cap(iscx_tree, tmp_path):
    build_dataset(BuildOptions(iscx_tree, tmp_path / "b", kind="iscx", task="B", max_per_class=15))
    d = load_dataset(tmp_path / "b")
    assert d.classes == list(ISCX_TASK_B) and len(d.classes) == 12
    total = d.meta["counts"]["total"]
    assert total["Chat"] == 15  # facebook_chat 30 + aim_chat 3, capped
    assert total["VPN-Chat"] == 15
    assert total["File Transfer"] == 15 and total["VoIP"] == 15
    assert total["VPN-File Transfer"] == 15
    assert total["Email"] == 15  # gmail 10 + email 6 = 16, capped at 15
    assert total["P2P"] == 10 and total["Streaming"] == 0
    tags = tag_counts(d)
    assert 9 not in tags and 10 not in tags  # SCP and Tor have no traffic type
    # every packet's label agrees with its file
    expected = {
        1: "Chat",
        2: "VPN-Chat",
        3: "Chat",
        4: "VPN-Chat",
        5: "File Transfer",
        6: "VoIP",
        7: "VPN-File Transfer",
        8: "Email",
        11: "Email",
        12: "P2P",
    }
    for t, name in expected.items():
        assert {d.classes[i] for i in d.labels[row_tag(d.rows) == t]} == {name}


def test_iscx_default_caps_and_split(iscx_tree, tmp_path):
    build_dataset(BuildOptions(iscx_tree, tmp_path / "b", kind="iscx", task="traffic", seed=0))
    d = load_dataset(tmp_path / "b")
    assert d.meta["max_per_class"] == 12000
    assert d.meta["counts"]["total"]["Chat"] == 33  # everything fits under the cap
    counts = d.meta["counts"]
    assert counts["train"]["Chat"] == round(0.68 * 33) and counts["val"]["Chat"] == round(0.16 * 33)
    with pytest.raises(ValueError, match="unknown ISCX task"):
        build_dataset(BuildOptions(iscx_tree, tmp_path / "x", kind="iscx", task="C"))


# ---------------------------------------------------------------------------------------------------------------
# One folder per class
# ---------------------------------------------------------------------------------------------------------------


def test_class_dirs(tmp_path):
    root = tmp_path / "src"
    capture(root / "alpha" / "one.pcap", 1, 40)
    capture(root / "alpha" / "deeper" / "two.pcapng", 2, 30, pcapng=True)
    capture(root / "beta" / "three.pcap", 3, 50)
    capture(root / "beta" / "four.pcap", 4, 20)
    capture(root / "beta" / "five.pcap", 5, 25)
    capture(root / "stray.pcap", 6, 5)
    (root / "empty").mkdir()
    assert detect_source(root) == "class-dirs"
    report = build_dataset(BuildOptions(root, tmp_path / "d", kind="class-dirs", split="by-file", seed=0))
    d = load_dataset(tmp_path / "d")
    assert d.classes == ["alpha", "beta"]
    for t, cls in ((1, "alpha"), (2, "alpha"), (3, "beta"), (4, "beta"), (5, "beta")):
        sel = row_tag(d.rows) == t
        assert {d.classes[i] for i in d.labels[sel]} == {cls}
        assert len(set(d.split[sel].tolist())) == 1  # a file lies in one split
        assert sel.sum() == {1: 40, 2: 30, 3: 50, 4: 20, 5: 25}[t]
    assert np.all(d.file >= 0) and {d.meta["sources"][f] for f in d.file} == {
        "alpha/one.pcap",
        "alpha/deeper/two.pcapng",
        "beta/three.pcap",
        "beta/four.pcap",
        "beta/five.pcap",
    }
    skipped = dict(report.skipped_files)
    assert skipped["stray.pcap"] == "not inside a class directory" and "empty/" in skipped
    # flows are distinct per file
    assert len(np.unique(d.flow)) == 5

    build_dataset(BuildOptions(root, tmp_path / "capped", kind="class-dirs", max_per_class=7, seed=0))
    c = load_dataset(tmp_path / "capped")
    assert c.meta["counts"]["total"] == {"alpha": 7, "beta": 7}


# ---------------------------------------------------------------------------------------------------------------
# Flow-label CSV
# ---------------------------------------------------------------------------------------------------------------

CSV_FIELDS = ["file", "proto", "addr_a", "port_a", "addr_b", "port_b", "vlan", "category", "task_category", "task_app"]


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def csv_corpus(tmp_path_factory):
    """Three capture files and a labels.csv. Flow tags (payload byte 0) and the label each packet should get:
    1 Web (TCP, labeled with the endpoints reversed), 2 VoIP (UDP), 3 listed without label, 4 not listed,
    5/6 the same 5-tuple on vlan 10 / 20 labeled Web / Chat, 7 the 5-tuple of flow 1 in another file labeled Chat,
    8 IPv6 Chat, 9 a label outside classes.json, 10/11 two flows of the test file (Web, VoIP)."""
    root = tmp_path_factory.mktemp("csvsrc")
    pcaps = root / "pcaps"
    pcaps.mkdir()
    f1 = []
    for i in range(10):  # both directions
        f1.append(
            tcp_frame(1, i, "10.0.0.1", 40001, "10.0.0.2", 443)
            if i % 2 == 0
            else tcp_frame(1, i, "10.0.0.2", 443, "10.0.0.1", 40001)
        )
        f1.append(
            udp_frame(2, i, "10.0.0.1", 5000, "10.0.0.3", 3478)
            if i % 2 == 0
            else udp_frame(2, i, "10.0.0.3", 3478, "10.0.0.1", 5000)
        )
        f1.append(tcp_frame(3, i, "10.0.0.1", 40003, "10.0.0.9", 80))
        f1.append(tcp_frame(4, i, "10.0.0.1", 40004, "10.0.0.9", 80))
    write_pcap(pcaps / "one.pcap", f1)
    f2 = []
    for i in range(8):
        f2.append(tcp_frame(5, i, "10.1.0.1", 50000, "10.1.0.2", 8080, vlan=10))
        f2.append(tcp_frame(6, i, "10.1.0.2", 8080, "10.1.0.1", 50000, vlan=20))
        f2.append(tcp_frame(7, i, "10.0.0.1", 40001, "10.0.0.2", 443))
        f2.append(tcp_frame(8, i, "2001:db8::1", 40008, "2001:db8::2", 443, v6=True))
        f2.append(tcp_frame(9, i, "10.1.0.5", 40009, "10.1.0.6", 443))
    sub = pcaps / "sub"
    sub.mkdir()
    write_pcapng(
        sub / "two.pcapng", [{"interfaces": [(1, 6)], "records": [("epb", 0, i * 1000, f) for i, f in enumerate(f2)]}]
    )
    f3 = [tcp_frame(10, i, "10.2.0.1", 40010, "10.2.0.2", 443) for i in range(12)]
    f3 += [udp_frame(11, i, "10.2.0.1", 40011, "10.2.0.3", 3478) for i in range(12)]
    write_pcap(pcaps / "three.pcap", f3)

    def row(file, proto, a, pa, b, pb, cat, vlan=0, app=""):
        return dict(
            file=file,
            proto=proto,
            addr_a=a,
            port_a=pa,
            addr_b=b,
            port_b=pb,
            vlan=vlan,
            category=cat or "Other",
            task_category=cat,
            task_app=app,
        )

    rows = [
        row("one.pcap", "TCP", "10.0.0.2", 443, "10.0.0.1", 40001, "Web", app="TLS"),
        row("one.pcap", "UDP", "10.0.0.1", 5000, "10.0.0.3", 3478, "VoIP", app="RTP"),
        row("one.pcap", "TCP", "10.0.0.1", 40003, "10.0.0.9", 80, ""),
        row("one.pcap", "ICMP", "10.0.0.1", 0, "10.0.0.9", 0, "Web"),
        row("sub/two.pcapng", "TCP", "10.1.0.1", 50000, "10.1.0.2", 8080, "Web", vlan=10, app="HTTP"),
        row("sub/two.pcapng", "TCP", "10.1.0.2", 8080, "10.1.0.1", 50000, "Chat", vlan=20),
        row("sub/two.pcapng", "TCP", "10.0.0.1", 40001, "10.0.0.2", 443, "Chat"),
        row("sub/two.pcapng", "TCP", "2001:db8::2", 443, "2001:db8::1", 40008, "Chat"),
        row("sub/two.pcapng", "TCP", "10.1.0.5", 40009, "10.1.0.6", 443, "Gaming"),
        row("three.pcap", "TCP", "10.2.0.1", 40010, "10.2.0.2", 443, "Web", app="TLS"),
        row("three.pcap", "UDP", "10.2.0.3", 3478, "10.2.0.1", 40011, "VoIP"),
        row("missing.pcap", "TCP", "10.9.0.1", 1, "10.9.0.2", 2, "Web"),
    ]
    write_csv(root / "labels.csv", CSV_FIELDS, rows)
    write_csv(
        root / "file_splits.csv",
        ["file", "split"],
        [
            {"file": "one.pcap", "split": "train"},
            {"file": "sub/two.pcapng", "split": "val"},
            {"file": "three.pcap", "split": "test"},
            {"file": "missing.pcap", "split": "train"},
        ],
    )
    (root / "classes.json").write_text(json.dumps({"CAT": ["Web", "VoIP", "Chat", "Unused"], "APP": ["TLS", "RTP"]}))
    return root


CSV_EXPECTED = {1: "Web", 2: "VoIP", 5: "Web", 6: "Chat", 7: "Chat", 8: "Chat", 10: "Web", 11: "VoIP"}
CSV_SPLIT = {1: 0, 2: 0, 5: 1, 6: 1, 7: 1, 8: 1, 10: 2, 11: 2}


def test_csv_labels_flows_by_file(csv_corpus, tmp_path):
    assert detect_source(csv_corpus) == "csv" and detect_source(csv_corpus / "labels.csv") == "csv"
    report = build_dataset(BuildOptions(csv_corpus / "labels.csv", tmp_path / "d", kind="csv"))
    d = load_dataset(tmp_path / "d")
    assert d.classes == ["Web", "VoIP", "Chat", "Unused"]  # from classes.json, unused class kept
    tags = row_tag(d.rows)
    assert set(tags.tolist()) == set(CSV_EXPECTED)  # 3 (no label), 4 (not listed), 9 (not a class) left out
    for t, cls in CSV_EXPECTED.items():
        sel = tags == t
        assert {d.classes[i] for i in d.labels[sel]} == {cls}, t
        assert set(d.split[sel].tolist()) == {CSV_SPLIT[t]}, t
    assert np.sum(tags == 1) == 10 and np.sum(tags == 2) == 10  # both directions
    # flow ids: one per (file, flow); flow 1 and flow 7 share a 5-tuple but not a file
    flows = {t: set(d.flow[tags == t].tolist()) for t in CSV_EXPECTED}
    assert all(len(f) == 1 for f in flows.values())
    assert len({next(iter(f)) for f in flows.values()}) == len(CSV_EXPECTED)
    for f in np.unique(d.flow):
        assert len(set(d.split[d.flow == f].tolist())) == 1
    assert d.meta["split_mode"] == "by-file" and d.meta["label_column"] == "task_category"
    assert d.meta["file_splits"] == {"one.pcap": "train", "sub/two.pcapng": "val", "three.pcap": "test"}
    assert dict(report.skipped_files)["missing.pcap"] == "listed in the CSV but not found"
    assert report.unlabeled_packets == 10 + 10 + 8  # flows 3, 4 and 9
    assert d.meta["csv_rows_left_out"] == {"empty label": 1, "not TCP/UDP": 1, "label not in the class list": 1}


def test_csv_split_column_and_conflicts(csv_corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "pcaps").symlink_to(csv_corpus / "pcaps")
    with open(csv_corpus / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    splits = {"one.pcap": "train", "sub/two.pcapng": "test", "three.pcap": "val"}
    for r in rows:
        r["split"] = splits.get(r["file"], "")
    write_csv(src / "labels.csv", CSV_FIELDS + ["split"], rows)
    report = build_dataset(BuildOptions(src / "labels.csv", tmp_path / "d", kind="csv", label_column="task_app"))
    d = load_dataset(tmp_path / "d")
    assert d.classes == ["HTTP", "RTP", "TLS"]  # no classes.json here: sorted labels
    tags = row_tag(d.rows)
    assert {t: d.classes[int(d.labels[tags == t][0])] for t in set(tags.tolist())} == {
        1: "TLS",
        2: "RTP",
        5: "HTTP",
        10: "TLS",
    }
    assert set(d.split[tags == 5].tolist()) == {2} and set(d.split[tags == 10].tolist()) == {1}
    assert report.skipped_files == []  # missing.pcap has no task_app label, so it is not needed

    # a split file that disagrees with the split column is an error naming both
    write_csv(src / "file_splits.csv", ["file", "split"], [{"file": "three.pcap", "split": "train"}])
    with pytest.raises(ValueError, match="three.pcap"):
        build_dataset(BuildOptions(src / "labels.csv", tmp_path / "e", kind="csv"))
    no_labels = [dict(r, task_category="", split="") for r in rows]
    write_csv(src / "labels.csv", CSV_FIELDS + ["split"], no_labels)
    with pytest.raises(ValueError, match="holds no label"):
        build_dataset(BuildOptions(src / "labels.csv", tmp_path / "e", kind="csv"))
    write_csv(src / "labels.csv", ["file", "proto"], [{"file": "one.pcap", "proto": "TCP"}])
    with pytest.raises(ValueError, match="labels.csv: missing column"):
        build_dataset(BuildOptions(src / "labels.csv", tmp_path / "e", kind="csv"))


def test_csv_random_split(csv_corpus, tmp_path):
    build_dataset(BuildOptions(csv_corpus / "labels.csv", tmp_path / "d", kind="csv", split="random", seed=5))
    d = load_dataset(tmp_path / "d")
    n = {c: d.meta["counts"]["total"][c] for c in d.classes}
    assert n == {"Web": 10 + 8 + 12, "VoIP": 10 + 12, "Chat": 8 + 8 + 8, "Unused": 0}
    for c, total in n.items():
        assert d.meta["counts"]["train"][c] == round(0.68 * total)
        assert d.meta["counts"]["val"][c] == round(0.16 * total)
    assert d.meta["split_mode"] == "random"


def test_build_options_resolve_and_check(csv_corpus, iscx_tree, tmp_path):
    o = BuildOptions(csv_corpus, tmp_path / "d")
    assert (o.kind, o.source, o.split, o.pcaps) == ("csv", csv_corpus / "labels.csv", "by-file", csv_corpus / "pcaps")
    o = BuildOptions(iscx_tree, tmp_path / "d", task="traffic")
    assert (o.kind, o.task, o.split, o.pcaps) == ("iscx", "B", "random", None)
    assert BuildOptions(iscx_tree, tmp_path / "d").task == "B"
    for bad, match in (
        (dict(kind="sideways"), "unknown source kind"),
        (dict(split="sideways"), "unknown split mode"),
        (dict(max_per_class=0), "at least 1"),
        (dict(mask="loose"), "unknown mask profile"),
        (dict(task="A"), "ISCX source only"),
    ):
        with pytest.raises(ValueError, match=match):
            BuildOptions(csv_corpus, tmp_path / "d", **bad)
    with pytest.raises(ValueError, match="CSV source only"):
        BuildOptions(iscx_tree, tmp_path / "d", pcaps=csv_corpus / "pcaps")
    with pytest.raises(ValueError, match="unknown ISCX task"):
        BuildOptions(iscx_tree, tmp_path / "d", kind="iscx", task="C")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BuildOptions(tmp_path / "nowhere", tmp_path / "d")
    assert not (tmp_path / "d").exists()  # checking writes nothing


def test_cli_build(csv_corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "d"
    result = runner.invoke(app, ["dataset", "build", str(csv_corpus), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "VoIP" in result.output and "missing.pcap" in result.output
    assert load_dataset(out).meta["counts"]["total"]["Web"] == 30
    bad = runner.invoke(app, ["dataset", "build", str(csv_corpus), "--out", str(out), "--task", "A"])
    assert bad.exit_code != 0
    bad = runner.invoke(app, ["dataset", "build", str(csv_corpus), "--out", str(out), "--split", "sideways"])
    assert bad.exit_code != 0


# ---------------------------------------------------------------------------------------------------------------
# Several sources in one dataset
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_csv(tmp_path_factory):
    """A second labeled source with its captures in a folder elsewhere and no classes.json: flow 21 Web and flow
    22 VoIP in train.pcap (train), flow 23 Chat in held.pcap (test), flow 24 labeled 'Gaming' (no such class), and
    a flow whose address does not parse."""
    root = tmp_path_factory.mktemp("second")
    labels_dir, pcaps = root / "labels", root / "captures"
    labels_dir.mkdir()
    pcaps.mkdir()
    write_pcap(
        pcaps / "train.pcap",
        [tcp_frame(21, i, "10.5.0.1", 41021, "10.5.0.2", 443) for i in range(6)]
        + [udp_frame(22, i, "10.5.0.1", 41022, "10.5.0.3", 3478) for i in range(4)]
        + [tcp_frame(24, i, "10.5.0.1", 41024, "10.5.0.4", 7777) for i in range(3)],
    )
    write_pcap(pcaps / "held.pcap", [tcp_frame(23, i, "10.5.0.1", 41023, "10.5.0.2", 5222) for i in range(5)])

    def row(file, proto, a, pa, b, pb, cat):
        return dict(
            file=file,
            proto=proto,
            addr_a=a,
            port_a=pa,
            addr_b=b,
            port_b=pb,
            vlan=0,
            category=cat,
            task_category=cat,
            task_app="",
        )

    write_csv(
        labels_dir / "labels.csv",
        CSV_FIELDS,
        [
            row("train.pcap", "TCP", "10.5.0.1", 41021, "10.5.0.2", 443, "Web"),
            row("train.pcap", "UDP", "10.5.0.1", 41022, "10.5.0.3", 3478, "VoIP"),
            row("train.pcap", "TCP", "10.5.0.1", 41024, "10.5.0.4", 7777, "Gaming"),
            row("held.pcap", "TCP", "10.5.0.1", 41023, "10.5.0.2", 5222, "Chat"),
            row("held.pcap", "UDP", "2001:507::1:200:8600::2", 53, "2001:db8::1", 2396, "Web"),  # two '::'
        ],
    )
    write_csv(
        labels_dir / "file_splits.csv",
        ["file", "split"],
        [{"file": "train.pcap", "split": "train"}, {"file": "held.pcap", "split": "test"}],
    )
    return labels_dir / "labels.csv", pcaps


def test_two_sources_one_dataset(csv_corpus, second_csv, tmp_path):
    labels_csv, pcaps = second_csv
    single = build_dataset(BuildOptions(csv_corpus / "labels.csv", tmp_path / "one", kind="csv"))
    one = load_dataset(tmp_path / "one")
    report = build_dataset(
        BuildOptions(csv_corpus / "labels.csv", tmp_path / "two", more_sources=[(labels_csv, pcaps)])
    )
    d = load_dataset(tmp_path / "two")
    n1 = len(one)
    # the first source's rows come first, byte for byte, with its labels, splits and flows
    assert np.array_equal(d.rows[:n1], one.rows) and np.array_equal(d.labels[:n1], one.labels)
    assert np.array_equal(d.split[:n1], one.split) and np.array_equal(d.flow[:n1], one.flow)
    assert d.classes == one.classes  # the second source takes the first's class list
    assert d.source.tolist() == [0] * n1 + [1] * (len(d) - n1)
    tags = row_tag(d.rows)
    expected = {21: ("Web", 0), 22: ("VoIP", 0), 23: ("Chat", 2)}
    assert set(tags[n1:].tolist()) == set(expected)  # 24: 'Gaming' is not a class
    for t, (cls, split) in expected.items():
        sel = tags == t
        assert {d.classes[i] for i in d.labels[sel]} == {cls} and set(d.split[sel].tolist()) == {split}
    names = np.array(d.meta["sources"])[d.file]
    assert set(names[tags == 23].tolist()) == {"labels/held.pcap"}
    assert set(names[tags == 1].tolist()) == {f"{csv_corpus.name}/one.pcap"}  # the folder names the source
    # flows of different sources never share an id
    assert not set(d.flow[:n1].tolist()) & set(d.flow[n1:].tolist())
    first, second = d.meta["inputs"]
    assert (first["name"], second["name"]) == (csv_corpus.name, "labels")
    assert second["files"] == [3, 5] and d.meta["sources"][3:5] == ["labels/held.pcap", "labels/train.pcap"]
    assert first["counts"] == one.meta["counts"]
    assert second["counts"]["train"]["Web"] == 6 and second["counts"]["test"]["Chat"] == 5
    assert second["csv_rows_left_out"] == {"label not in the class list": 1, "unparsable address": 1}
    assert d.meta["counts"]["total"]["Web"] == one.meta["counts"]["total"]["Web"] + 6
    assert report.unlabeled_packets == single.unlabeled_packets + 3
    assert f"{csv_corpus.name}/missing.pcap" in dict(report.skipped_files)


def test_two_sources_random_split_and_caps(csv_corpus, second_csv, tmp_path):
    labels_csv, pcaps = second_csv
    build_dataset(
        BuildOptions(csv_corpus, tmp_path / "r", split="random", max_per_class=9, more_sources=[(labels_csv, pcaps)])
    )
    d = load_dataset(tmp_path / "r")
    assert d.meta["split_mode"] == "random"
    for part in d.meta["inputs"]:  # the cap holds per source
        assert all(n <= 9 for n in part["counts"]["total"].values())
    assert d.meta["inputs"][1]["counts"]["total"] == {"Web": 6, "VoIP": 4, "Chat": 5, "Unused": 0}


def test_two_sources_refuse_other_classes(csv_corpus, second_csv, tmp_path):
    classes_dirs = tmp_path / "dirs"
    capture(classes_dirs / "alpha" / "a.pcap", 1, 5)
    with pytest.raises(ValueError, match="differ"):
        build_dataset(BuildOptions(csv_corpus, tmp_path / "x", more_sources=[(classes_dirs, None)]))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BuildOptions(csv_corpus, tmp_path / "x", more_sources=[(tmp_path / "nowhere", None)])
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dirs"]  # no temporary directory left behind


def test_cli_build_two_sources(csv_corpus, second_csv, tmp_path):
    labels_csv, pcaps = second_csv
    runner = CliRunner()
    out = tmp_path / "d"
    result = runner.invoke(
        app, ["dataset", "build", str(csv_corpus), f"{labels_csv}:{pcaps}", "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "(labels," in result.output and f"({csv_corpus.name}," in result.output  # a counts table per source
    d = load_dataset(out)
    assert len(d.meta["inputs"]) == 2 and d.meta["counts"]["test"]["Chat"] == 5
    bad = runner.invoke(
        app, ["dataset", "build", str(csv_corpus), str(labels_csv), "--pcaps", str(pcaps), "--out", str(tmp_path / "e")]
    )
    assert bad.exit_code != 0 and "single source" in bad.output
    bad = runner.invoke(app, ["dataset", "build", str(csv_corpus), str(labels_csv), "--out", str(tmp_path / "e")])
    assert bad.exit_code != 0 and "not found" in bad.output


# ---------------------------------------------------------------------------------------------------------------
# The shared real corpus
# ---------------------------------------------------------------------------------------------------------------


def test_corpus_task_category(corpus, tmp_path):
    started = time.perf_counter()
    report = build_dataset(BuildOptions(corpus / "labels.csv", tmp_path / "d", kind="csv", max_per_class=300, seed=0))
    d = load_dataset(tmp_path / "d")
    assert len(d.classes) == 18
    train = d.meta["counts"]["train"]
    assert all(train[c] > 0 for c in d.classes), train
    assert all(n <= 300 for n in d.meta["counts"]["total"].values())
    with open(corpus / "file_splits.csv", newline="") as f:
        given = {r["file"]: r["split"] for r in csv.DictReader(f)}
    names = np.array(d.meta["sources"])[d.file]
    for code, split_name in enumerate(("train", "val", "test")):
        files = set(names[d.split == code].tolist())
        assert all(given[f] == split_name for f in files)
    for f in np.unique(d.file):
        assert len(set(d.split[d.file == f].tolist())) == 1  # no file in two splits
    assert report.seconds < 60 and time.perf_counter() - started < 60


def readme_counts(readme: Path) -> dict[str, dict[str, int]]:
    """{split: {class: packets}} from the per-category table of the extension corpus's README."""
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for line in readme.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and re.fullmatch(r"[\d,]+", cells[1]):
            for name, cell in zip(("train", "val", "test"), cells[1:4]):
                counts[name][cells[0]] = int(cell.replace(",", ""))
    return counts


def test_corpus_and_extension_one_dataset(corpus, corpus_ext, tmp_path):
    ext_labels, ext_pcaps = corpus_ext
    build_dataset(BuildOptions(corpus, tmp_path / "alone"))
    alone = load_dataset(tmp_path / "alone")
    build_dataset(BuildOptions(corpus, tmp_path / "both", more_sources=[(ext_labels, ext_pcaps)]))
    d = load_dataset(tmp_path / "both")
    first, second = d.meta["inputs"]
    assert first["counts"] == alone.meta["counts"] and len(alone) == 57_306
    expected = readme_counts(ext_labels.parent / "README.md")
    assert sum(sum(c.values()) for c in expected.values()) == len(d) - len(alone) == 262_167
    for name in ("train", "val", "test"):
        assert second["counts"][name] == expected[name], name
    assert np.array_equal(d.rows[: len(alone)], alone.rows)
    n_files = len(d.meta["sources"])
    assert second["files"][1] == n_files and d.file.max() < n_files


def test_packet_meta_columns_follow_the_rows(csv_corpus, second_csv, tmp_path):
    from pktnin.packets import iter_packets

    labels_csv, pcaps = second_csv
    out = tmp_path / "m"
    args = ["dataset", "build", str(csv_corpus / "labels.csv"), f"{labels_csv}:{pcaps}", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--packet-meta", "ts_ns,src_addr,src_port,dst_port", "--no-progress"])
    assert result.exit_code == 0, result.output
    d = load_dataset(out)
    assert d.meta["packet_meta"] == ["ts_ns", "src_addr", "src_port", "dst_port"]
    assert d.packet_meta["src_addr"].shape == (len(d), 16) and d.packet_meta["ts_ns"].dtype == np.int64
    # each row's metadata is that of the packet it came from, read again from its capture
    checked = 0
    for f, name in enumerate(d.meta["sources"]):
        at = np.flatnonzero(d.file == f)
        if not len(at):
            continue
        source = d.meta["inputs"][int(d.source[at[0]])]
        path = Path(source["root"]) / name.split("/", 1)[1]
        batches = list(iter_packets([path], threads=1))
        rows = np.concatenate([b.rows for b in batches])
        meta = {k: np.concatenate([b.meta[k] for b in batches]) for k in d.packet_meta}
        j = 0
        for i in at:  # the dataset keeps the labeled packets, in capture order
            while not np.array_equal(rows[j], d.rows[i]):
                j += 1
            for k, column in d.packet_meta.items():
                assert np.array_equal(column[i], meta[k][j]), (name, i, k)
            j += 1
            checked += 1
    assert checked == len(d)
    assert len(np.unique(d.packet_meta["ts_ns"])) > 1 and len(np.unique(d.packet_meta["src_port"])) > 1
    meta = {k: v for k, v in d.meta.items() if k != "packet_meta"}
    plain = load_dataset(write_dataset(tmp_path / "p", d.rows[:3], d.labels[:3], d.split[:3], d.flow[:3], meta))
    assert plain.packet_meta == {}  # a dataset without them still loads
    with pytest.raises(ValueError, match="unknown packet metadata"):
        BuildOptions(csv_corpus, tmp_path / "x", packet_meta=["color"])
    with pytest.raises(ValueError, match="keeps every packet"):
        BuildOptions(csv_corpus, tmp_path / "x", packet_meta=["ts_ns"], max_per_class=5)


def test_flow_set_first_rows_and_features(csv_corpus, second_csv, tmp_path):
    from pktnin.dataset.flows import FlowSet, first_rows, flow_set
    from pktnin.flow_features import pkt_feats

    labels_csv, pcaps = second_csv
    options = BuildOptions(csv_corpus / "labels.csv", tmp_path / "d", more_sources=[(labels_csv, pcaps)])
    build_dataset(options)
    with pytest.raises(ValueError, match="--packet-meta ts_ns,src_addr,src_port,dst_port"):
        flow_set(load_dataset(tmp_path / "d"))
    meta = ["ts_ns", "src_addr", "src_port", "dst_port"]
    build_dataset(BuildOptions(**{**vars(options), "packet_meta": meta, "out": tmp_path / "m"}))
    d = load_dataset(tmp_path / "m")
    flows = flow_set(d, k_max=3)
    assert len(flows) == len(np.unique(d.flow)) and flows.packets.sum() == len(d)
    for i, f in enumerate(flows.flow):
        rows_of = np.flatnonzero(d.flow == f)  # in capture order
        first = rows_of[:3]
        assert flows.index[i].tolist() == first.tolist() + [-1] * (3 - first.size)
        assert flows.packets[i] == rows_of.size and flows.label[i] == d.labels[first[0]]
        assert (flows.split[i], flows.capture_file[i], flows.source[i]) == (
            d.split[f0 := first[0]],
            d.file[f0],
            d.source[f0],
        )
        assert (flows.src_port[i], flows.dst_port[i]) == (d.packet_meta["src_port"][f0], d.packet_meta["dst_port"][f0])
    m = d.packet_meta
    expect = pkt_feats(np.asarray(d.rows), m["ts_ns"], m["src_addr"], m["src_port"], flows.index)
    np.testing.assert_array_equal(flows.feats, expect)
    rows = first_rows(d, flows, 2)
    assert rows.shape == (len(flows), 2, ROW_LEN)
    for i in range(len(flows)):
        for j in range(2):
            at = flows.index[i, j]
            assert np.array_equal(rows[i, j], d.rows[at] if at >= 0 else np.zeros(ROW_LEN, np.uint8))
    again = FlowSet.load(flows.save(tmp_path / "flows.npz"))
    assert all(np.array_equal(getattr(again, k), v) for k, v in vars(flows).items())
    assert len(flows.select(flows.split == 2)) == int((flows.split == 2).sum())
