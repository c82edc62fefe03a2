"""A model through `pktnin score` on the capture files of one split, against the flow labels: packet and flow
macro-F1 per source and over all sources, as a user would get them.

Each source is NAME=LABELS_CSV:PCAPS (labels.csv with file_splits.csv beside it, and the folder of its captures).
The files of `--split` (default test) are scored by the command-line tool in a child process
(`pktnin score FILES --model M --flows ...`); every scored flow is then looked up in the labels by its 5-tuple
and vlan (pktnin.dataset.flow_csv, the lookup the dataset builder uses), packets take their flow's label, and
unlabeled flows are left out, so the rows are those of the dataset's split. Packet level: each packet's top
class. Flow level: the `--flows` output (mean probabilities over the flow's packets), one sample per flow.

    python bench/score_test_split.py --model nin_parallel_small_port \
        --source corpus=../shared/corpus/labels.csv:../shared/corpus/pcaps \
        --source corpus-ext=../shared/corpus-ext/labels.csv:/data/corpus-ext/pcaps \
        --work /tmp/testsplit --json bench/results/testsplit-default.json
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pktnin.dataset.flow_csv import flow_key_bytes, read_flow_labels  # noqa: E402
from pktnin.engine.bundled import resolve_model  # noqa: E402
from pktnin.engine.model_file import CLASSES_KEY, read_props  # noqa: E402
from pktnin.trainer.metrics import classification_report  # noqa: E402

RUN_FIELDS = ("engine", "files", "score_seconds", "score_exit_code", "packets_scored")


def parse_source(text: str) -> tuple[str, Path, Path]:
    name, sep, rest = text.partition("=")
    csv_path, sep2, pcaps = rest.rpartition(":")
    if not sep or not sep2:
        raise SystemExit(f"--source {text!r}: expected NAME=LABELS_CSV:PCAPS")
    return name, Path(csv_path), Path(pcaps)


def flow_truth(flows, labels, pcaps: Path) -> np.ndarray:
    """True class id of each row of the --flows table (-1: the flow is not labeled)."""
    files = flows.column("file").to_pylist()
    cols = {c: flows.column(c).to_numpy() for c in ("proto", "port_a", "port_b", "vlan")}
    addr_a, addr_b = flows.column("addr_a").to_pylist(), flows.column("addr_b").to_pylist()
    n = len(files)
    packed = np.zeros((2, n, 16), np.uint8)
    version = np.zeros(n, np.uint8)
    for i, (a, b) in enumerate(zip(addr_a, addr_b, strict=True)):
        for side, text in enumerate((a, b)):
            addr = ipaddress.ip_address(text)
            packed[side, i, : len(addr.packed)] = np.frombuffer(addr.packed, np.uint8)
            version[i] = addr.version
    keys = flow_key_bytes(cols["proto"], version, packed[0], cols["port_a"], packed[1], cols["port_b"], cols["vlan"])
    truth = np.full(n, -1, np.int64)
    names = np.array([str(Path(f).resolve().relative_to(pcaps.resolve())) for f in files])
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        ff = labels.files.get(str(name))
        if ff is not None:
            truth[rows] = ff.lookup(keys[rows])
    return truth


def score_source(
    model: str, name: str, csv_path: Path, pcaps: Path, split: str, work: Path, classes: list[str], precision: str
):
    labels = read_flow_labels(csv_path, classes=classes)
    files = sorted(f for f, s in labels.file_split.items() if s == split and f in labels.files)
    paths = [pcaps / f for f in files if (pcaps / f).is_file()]
    if len(paths) < len(files):
        raise SystemExit(f"{name}: {len(files) - len(paths)} of the {split} captures are missing under {pcaps}")
    out, flows_out, summary = work / f"{name}.parquet", work / f"{name}-flows.parquet", work / f"{name}-summary.json"
    cmd = [sys.executable, "-m", "pktnin.cli", "score", *map(str, paths), "--model", model, "--out", str(out),
           "--flows", str(flows_out), "--summary", str(summary), "--precision", precision, "--force", "--quiet"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 3):  # 3: some inputs cut short (real captures): reported, the rest scored
        raise SystemExit(f"pktnin score exited with {proc.returncode}: {proc.stderr[-2000:]}")
    flows = pq.read_table(flows_out)
    truth = flow_truth(flows, labels, pcaps)
    class_id = {c: i for i, c in enumerate(classes)}
    flow_pred = np.array([class_id[c] for c in flows.column("label").to_pylist()], np.int64)
    # packets take their flow's label: join on (file, flow_id)
    flow_index = {(f, int(k)): i for i, (f, k) in enumerate(zip(flows.column("file").to_pylist(),
                                                                 flows.column("flow_id").to_pylist()))}  # fmt: skip
    packets = pq.read_table(out, columns=["file", "flow_id", "label"])
    rows = np.array([flow_index[(f, int(k))] for f, k in zip(packets.column("file").to_pylist(),
                                                             packets.column("flow_id").to_pylist())])  # fmt: skip
    packet_truth = truth[rows]
    packet_pred = np.array([class_id[c] for c in packets.column("label").to_pylist()], np.int64)
    kept = packet_truth >= 0
    flow_kept = truth >= 0
    return {
        "engine": json.loads(summary.read_text())["engine"],
        "files": len(paths),
        "score_seconds": seconds,
        "score_exit_code": proc.returncode,
        "packets_scored": int(packets.num_rows),
        "y_true": packet_truth[kept],
        "y_pred": packet_pred[kept],
        "flow_true": truth[flow_kept],
        "flow_pred": flow_pred[flow_kept],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a bundled model name or a model file")
    ap.add_argument("--source", action="append", required=True, metavar="NAME=LABELS_CSV:PCAPS")
    ap.add_argument("--split", default="test")
    ap.add_argument("--precision", default="auto", help="pktnin score --precision (auto: what a user gets)")
    ap.add_argument("--work", type=Path, required=True, help="folder for the score outputs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model_path = resolve_model(args.model)
    classes = json.loads(read_props(model_path)[CLASSES_KEY])
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": str(args.model), "model_file": model_path.name, "split": args.split,
                     "precision": args.precision, "sources": {}}  # fmt: skip
    every: dict[str, list] = {"y_true": [], "y_pred": [], "flow_true": [], "flow_pred": []}
    for spec in args.source:
        name, csv_path, pcaps = parse_source(spec)
        got = score_source(str(args.model), name, csv_path, pcaps, args.split, args.work, classes, args.precision)
        for key in every:
            every[key].append(got[key])
        results["sources"][name] = report_of(got, classes) | {k: got[k] for k in RUN_FIELDS}
    results["all"] = report_of({k: np.concatenate(v) for k, v in every.items()}, classes)
    for name, r in [*results["sources"].items(), ("all", results["all"])]:
        engine = r.get("engine", "")
        print(f"{name:10s} {engine}  packets {r['packet']['samples']:>7,}  packet macro-F1 {r['packet']['macro_f1']:.4f}  "
              f"flows {r['flow']['samples']:>6,}  flow macro-F1 {r['flow']['macro_f1']:.4f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def report_of(got: dict, classes: list[str]) -> dict:
    return {
        "packet": classification_report(got["y_true"], got["y_pred"], classes),
        "flow": classification_report(got["flow_true"], got["flow_pred"], classes),
    }


if __name__ == "__main__":
    main()
