"""Flow-label CSV source: packets take the label of their bidirectional flow as listed in labels.csv (with
file_splits.csv and classes.json beside it when present)."""

from __future__ import annotations

import csv
import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pktnin.dataset.format import SPLIT_CODES
from pktnin.dataset.source import Source

if TYPE_CHECKING:
    from pktnin.dataset.options import BuildOptions

_PROTOCOLS = {"TCP": 6, "UDP": 17, "6": 6, "17": 17}
_CLASS_LIST_KEYS = {"task_category": "CAT", "task_app": "APP"}
_FIVE_TUPLE_LEN = 38  # proto, ip version, two 18-byte endpoints (address + port); the vlan adds 2 bytes
_NO_LABEL = -1  # flow listed, but without a label for this task
_AMBIGUOUS = -2  # same 5-tuple listed more than once in a file: the vlan decides


def flow_key_bytes(
    proto: np.ndarray,
    ip_version: np.ndarray,
    src_addr: np.ndarray,
    src_port: np.ndarray,
    dst_addr: np.ndarray,
    dst_port: np.ndarray,
    vlan: np.ndarray,
) -> np.ndarray:
    """uint8 [k, 40] keys that are equal for both directions of a flow: proto, ip version, the lower
    (address, port) endpoint, the higher one, vlan (big-endian). The first 38 bytes are the 5-tuple key."""
    k = len(proto)
    ends = np.zeros((2, k, 18), np.uint8)
    for side, (addr, port) in enumerate(((src_addr, src_port), (dst_addr, dst_port))):
        port = np.asarray(port).astype(np.uint16)
        ends[side, :, :16] = addr
        ends[side, :, 16] = port >> 8
        ends[side, :, 17] = port & 0xFF
    a, b = ends
    differ = a != b
    first = differ.argmax(axis=1)
    rows = np.arange(k)
    a_low = a[rows, first] <= b[rows, first]
    key = np.empty((k, 40), np.uint8)
    key[:, 0] = proto
    key[:, 1] = ip_version
    key[:, 2:20] = np.where(a_low[:, None], a, b)
    key[:, 20:38] = np.where(a_low[:, None], b, a)
    vlan = np.asarray(vlan).astype(np.uint16)
    key[:, 38] = vlan >> 8
    key[:, 39] = vlan & 0xFF
    return key


def _addr16(text: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(text.strip())
    return addr.version, addr.packed.ljust(16, b"\0")


@dataclass
class FileFlows:
    """Labels of one capture file's flows: 5-tuple key -> class id (or _NO_LABEL / _AMBIGUOUS), and
    (5-tuple + vlan) key -> class id for the 5-tuples that repeat."""

    by_tuple: dict[bytes, int] = field(default_factory=dict)
    by_tuple_vlan: dict[bytes, int] = field(default_factory=dict)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Class id per packet (-1 when unlabeled) for uint8 [k, 40] keys."""
        out = np.full(len(keys), -1, np.int64)
        if not len(keys):
            return out
        tuples = np.ascontiguousarray(keys[:, :_FIVE_TUPLE_LEN]).view(f"V{_FIVE_TUPLE_LEN}").reshape(-1)
        uniq, inverse = np.unique(tuples, return_inverse=True)
        inverse = inverse.reshape(-1)
        per_uniq = np.array([self.by_tuple.get(u.tobytes(), _NO_LABEL) for u in uniq], np.int64)
        out[:] = per_uniq[inverse]
        ambiguous = np.flatnonzero(out == _AMBIGUOUS)
        for i in ambiguous:
            out[i] = self.by_tuple_vlan.get(keys[i].tobytes(), _NO_LABEL)
        out[out < 0] = -1
        return out


@dataclass
class FlowLabels:
    """A parsed flow-label CSV."""

    classes: list[str]
    files: dict[str, FileFlows]  # file (relative to the pcaps folder) -> its flows
    file_split: dict[str, str]  # file -> train / val / test
    labeled_flows: int
    left_out: dict[str, int]  # reason -> number of CSV rows


def read_flow_labels(
    csv_path: str | os.PathLike, label_column: str = "task_category", classes: list[str] | None = None
) -> FlowLabels:
    """Parse labels.csv (plus classes.json and file_splits.csv beside it when present). `classes`, when given,
    is the class list to use (labels outside it are left out) instead of classes.json or the CSV's labels."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        need = ["file", "proto", "addr_a", "port_a", "addr_b", "port_b", label_column]
        missing = [c for c in need if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)} (has {', '.join(header)})")
        records = list(reader)

    classes = list(classes) if classes is not None else _class_list(csv_path, label_column, records)
    if not classes:
        raise ValueError(f"{csv_path}: column {label_column!r} holds no label")
    class_id = {c: i for i, c in enumerate(classes)}
    left_out: dict[str, int] = {}

    def leave_out(reason: str) -> None:
        left_out[reason] = left_out.get(reason, 0) + 1

    # Parse every listed flow, labeled or not: an unlabeled flow still decides whether its 5-tuple repeats.
    parsed: dict[str, list[tuple[bytes, int]]] = {}
    for line, rec in enumerate(records, start=2):
        proto = _PROTOCOLS.get(rec["proto"].strip().upper())
        if proto is None:
            leave_out("not TCP/UDP")
            continue
        try:
            ver_a, addr_a = _addr16(rec["addr_a"])
            ver_b, addr_b = _addr16(rec["addr_b"])
        except ValueError:
            leave_out("unparsable address")  # no packet can match it; the other flows still label theirs
            continue
        try:
            port_a, port_b = int(rec["port_a"]), int(rec["port_b"])
            vlan = int(rec.get("vlan") or 0)
        except ValueError as exc:
            raise ValueError(f"{csv_path}, line {line}: {exc}") from None
        if ver_a != ver_b:
            raise ValueError(f"{csv_path}, line {line}: endpoints of different IP versions")
        key = flow_key_bytes(
            np.array([proto]),
            np.array([ver_a]),
            np.frombuffer(addr_a, np.uint8)[None, :],
            np.array([port_a]),
            np.frombuffer(addr_b, np.uint8)[None, :],
            np.array([port_b]),
            np.array([vlan]),
        )[0].tobytes()
        label = rec[label_column].strip()
        if not label:
            cls = _NO_LABEL
            leave_out("empty label")
        elif label not in class_id:
            cls = _NO_LABEL
            leave_out("label not in the class list")
        else:
            cls = class_id[label]
        parsed.setdefault(rec["file"].strip(), []).append((key, cls))

    files: dict[str, FileFlows] = {}
    labeled_flows = 0
    for name, flows in parsed.items():
        counts: dict[bytes, int] = {}
        for key, _ in flows:
            counts[key[:_FIVE_TUPLE_LEN]] = counts.get(key[:_FIVE_TUPLE_LEN], 0) + 1
        ff = FileFlows()
        for key, cls in flows:
            five = key[:_FIVE_TUPLE_LEN]
            if counts[five] == 1:
                ff.by_tuple[five] = cls
                continue
            ff.by_tuple[five] = _AMBIGUOUS
            if ff.by_tuple_vlan.get(key, cls) != cls:
                cls = _NO_LABEL  # the same flow listed twice with different labels: trust neither
                leave_out("conflicting labels")
            ff.by_tuple_vlan[key] = cls
        n_labeled = sum(1 for v in ff.by_tuple.values() if v >= 0) + sum(1 for v in ff.by_tuple_vlan.values() if v >= 0)
        if n_labeled:
            files[name] = ff
            labeled_flows += n_labeled

    file_split = _file_splits(csv_path, records)
    return FlowLabels(classes, files, file_split, labeled_flows, left_out)


def _class_list(csv_path: Path, label_column: str, records: list[dict]) -> list[str]:
    classes_json = csv_path.parent / "classes.json"
    key = _CLASS_LIST_KEYS.get(label_column)
    if key and classes_json.is_file():
        with open(classes_json) as f:
            lists = json.load(f)
        if key in lists:
            return [str(c) for c in lists[key]]
    return sorted({rec[label_column].strip() for rec in records} - {""})


def _file_splits(csv_path: Path, records: list[dict]) -> dict[str, str]:
    """Split per capture file, from file_splits.csv beside the CSV and/or its `split` column; they must agree."""
    result: dict[str, str] = {}
    origin: dict[str, str] = {}

    def put(name: str, value: str, where: str) -> None:
        value = value.strip().lower()
        if not value:
            return
        if value not in SPLIT_CODES:
            raise ValueError(f"{where}: unknown split {value!r} for {name} (expected train, val or test)")
        if name in result and result[name] != value:
            raise ValueError(f"{where}: {name} is in split {value!r} here but {result[name]!r} in {origin[name]}")
        result[name] = value
        origin[name] = where

    splits_csv = csv_path.parent / "file_splits.csv"
    if splits_csv.is_file():
        with open(splits_csv, newline="") as f:
            for line, rec in enumerate(csv.DictReader(f), start=2):
                if "file" not in rec or "split" not in rec:
                    raise ValueError(f"{splits_csv}: needs the columns file and split")
                put(rec["file"].strip(), rec["split"] or "", f"{splits_csv}, line {line}")
    for line, rec in enumerate(records, start=2):
        if rec.get("split"):
            put(rec["file"].strip(), rec["split"], f"{csv_path}, line {line}")
    return result


def read(options: BuildOptions) -> Source:
    """Packets take the label of their bidirectional 5-tuple flow (+ vlan where a 5-tuple repeats) in the same
    capture file. Split by capture file as the CSV says, or (split "random") packets at random 68/16/16."""
    csv_path = options.source
    pcaps = options.pcaps
    if pcaps is None or not pcaps.is_dir():
        raise NotADirectoryError(f"{pcaps}: capture folder not found (give it with --pcaps)")
    flows = read_flow_labels(csv_path, options.label_column, options.classes)

    by_file = options.split == "by-file"
    skipped: list[tuple[str, str]] = []
    names: list[str] = []
    for name in sorted(flows.files):
        if not (pcaps / name).is_file():
            skipped.append((name, "listed in the CSV but not found"))
        elif by_file and name not in flows.file_split:
            skipped.append((name, "no split given for this file"))
        else:
            names.append(name)
    per_file = [flows.files[name] for name in names]

    def label_batch(batch) -> tuple[np.ndarray, np.ndarray]:
        m = batch.meta
        keys = flow_key_bytes(
            m["proto"], m["ip_version"], m["src_addr"], m["src_port"], m["dst_addr"], m["dst_port"], m["vlan"]
        )
        labels = per_file[batch.file_index].lookup(keys)
        return labels, labels

    return Source(
        kind="flow-csv",
        task=options.label_column,
        label_column=options.label_column,
        max_per_class=options.max_per_class,
        root=pcaps,
        files=[pcaps / name for name in names],
        classes=flows.classes,
        label_batch=label_batch,
        group_caps=[options.max_per_class] * len(flows.classes),
        group_class=list(range(len(flows.classes))),
        skipped=skipped,
        file_split=[SPLIT_CODES[flows.file_split[name]] for name in names] if by_file else None,
        extra_meta=dict(
            labels_csv=str(csv_path.resolve()),
            labeled_flows=flows.labeled_flows,
            csv_rows_left_out=flows.left_out,
            file_splits={name: flows.file_split.get(name) for name in names},
        ),
    )
