"""Argmax agreement of each CPU engine (ONNX Runtime int8, OpenVINO int8/bf16/fp32) with float32 on ONNX Runtime,
for the bundled models, on rows no calibration or quantization choice saw.

    python bench/int8_agreement.py --captures DIR [--json OUT]    # captures of a source no model here has seen
    python bench/int8_agreement.py --dataset DIR --record          # held-out sets written into the int8 models

--captures: every capture under DIR becomes rows (the default layout); for each model every engine's agreement
with float32 is printed, then the engines `--precision auto` may pick by the agreement recorded in the model
(with and without OpenVINO installed) and the lowest agreement among them: the bound on how far `auto`'s
labels can be from float32's on these captures, on either install.
--dataset: each source's test rows (stratified by class and file) and the synthetic and odd rows of
pktnin.engine.check_rows, measured with quantize.check_engines; --record writes them into the bundled int8
models' pktnin.agreement, where `auto` and `pktnin models` read them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pktnin.engine import precision as prec  # noqa: E402
from pktnin.engine.bundled import bundled_models  # noqa: E402
from pktnin.engine.check_rows import synthetic_rows  # noqa: E402
from pktnin.engine.model_file import find_int8  # noqa: E402
from pktnin.engine.openvino_runner import OpenVinoRunner, cpu_has_bf16, openvino_available  # noqa: E402
from pktnin.engine.quantize import agreement, check_engines, held_out_sets, probabilities, record_agreement  # noqa: E402
from pktnin.packets import find_captures, iter_packets  # noqa: E402


def capture_rows(folder: Path) -> tuple[np.ndarray, int]:
    files = find_captures([folder])
    reports: list = []
    parts = [b.rows.copy() for b in iter_packets(files, reports=reports, flow_keys=False)]
    return (np.concatenate(parts) if parts else np.zeros((0, 1500), np.uint8)), len(files)


def engine_agreement(fp32: Path, int8: Path | None, rows: np.ndarray) -> dict[str, float]:
    reference = probabilities(fp32, rows)
    out = {}
    if int8 is not None:
        out["onnxruntime:int8"] = agreement(probabilities(int8, rows), reference)[0]
    if openvino_available():
        runs = [("openvino:fp32", fp32, "fp32")] + ([("openvino:int8", int8, "int8")] if int8 else [])
        runs += [("openvino:bf16", fp32, "bf16")] if cpu_has_bf16() else []
        for key, path, precision in runs:
            with OpenVinoRunner(path, precision=precision) as runner:
                out[key] = agreement(runner.predict(rows), reference)[0]
    return out


def auto_candidates(fp32: Path, with_openvino: bool) -> list[str]:
    """The engines `auto` may pick for this model on an install with or without OpenVINO."""
    real = prec.openvino_available
    prec.openvino_available = lambda: with_openvino and real()  # type: ignore[assignment]
    try:
        engines = prec.candidate_engines(fp32, "auto", workers=1)
    finally:
        prec.openvino_available = real  # type: ignore[assignment]
    return sorted({f"{e.backend}:{e.precision}" for e in engines})


def on_captures(folder: Path) -> dict:
    start = time.perf_counter()
    rows, nfiles = capture_rows(folder)
    print(f"{folder}: {nfiles} captures, {len(rows):,} rows ({time.perf_counter() - start:.0f} s)")
    result: dict = {"captures": str(folder), "files": nfiles, "rows": int(len(rows)), "models": {}}
    for fp32 in bundled_models():
        measured = engine_agreement(fp32, find_int8(fp32), rows)
        entry: dict = {"agreement": measured, "auto": {}}
        for install, with_ov in (("without openvino", False), ("with openvino", True)):
            picks = auto_candidates(fp32, with_ov)
            worst = min([1.0] + [measured[k] for k in picks if k in measured])
            entry["auto"][install] = {"may_pick": picks, "lowest_agreement": worst}
        result["models"][fp32.stem] = entry
        print(f"\n{fp32.stem}")
        for key, value in sorted(measured.items()):
            print(f"  {key:<18} {value:.4f}")
        for install, a in entry["auto"].items():
            print(f"  auto {install:<17} may pick {', '.join(a['may_pick'])}: agreement >= {a['lowest_agreement']:.4f}")
    return result


def on_dataset(folder: Path, rows_per_source: int, record: bool) -> dict:
    from pktnin.dataset.format import load_dataset

    dataset = load_dataset(folder)
    # The sizes and seed of `pktnin quantize`'s defaults (--check-rows 3000, --seed 0).
    sets = held_out_sets(
        dataset, dataset.indices("test"), "test", rows_per_source, synthetic_rows(rows_per_source, seed=1000)
    )
    print({name: len(r) for name, r in sets.items()})
    result: dict = {"dataset": str(folder), "rows": {k: int(len(v)) for k, v in sets.items()}, "models": {}}
    for fp32 in bundled_models():
        int8 = find_int8(fp32)
        if int8 is None:
            continue
        measured = check_engines(fp32, int8, sets)
        result["models"][fp32.stem] = measured
        print(f"\n{fp32.stem}")
        for key, per_set in measured.items():
            print(f"  {key:<18} " + "  ".join(f"{name} {v:.4f}" for name, v in per_set.items()))
        if record:
            record_agreement(int8, measured, result["rows"])
            print(f"  recorded in {int8}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captures", type=Path)
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--rows-per-source", type=int, default=3000, help="and synthetic packets per set")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if (args.captures is None) == (args.dataset is None):
        ap.error("give one of --captures or --dataset")
    if args.captures is not None:
        result = on_captures(args.captures)
    else:
        result = on_dataset(args.dataset, args.rows_per_source, args.record)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
