"""Table 6/7-style comparison from a runs folder made by bench/train_corpus.sh (and bench/refit_corpus.sh).

For each split (by-file, random) and model: test macro precision / recall / F1 (packet level, and F1 at flow
level), validation macro-F1, parameters and FLOPs per packet (analytic, pktnin.trainer.presets), and CPU packets/s
(ONNX Runtime, model only, from a bench/bench_engine.py JSON when given). Baselines from bench/baselines.py JSONs.

    python bench/results_table.py RUNS_DIR [--engine bench/results/engine-*.json] [--baselines-dir RUNS_DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pktnin.trainer.presets import count  # noqa: E402

MODELS = ("cnn_large", "cnn_small", "nin_large", "nin_small", "cnn_deeppacket", "nin1", "nin2", "nin_parallel")


def engine_rates(paths: list[Path], batch: int = 256) -> dict[str, float]:
    """Model -> packets/s of the default ONNX Runtime variant at `batch`."""
    rates: dict[str, float] = {}
    for path in paths:
        for r in json.loads(path.read_text())["results"]:
            if r.get("variant") == "default" and r.get("backend") == "onnxruntime" and r["batch"] == batch:
                rates[r["model"]] = r["packets_per_s"]
    return rates


def budget(meta: dict) -> str:
    """Training rows, epochs (best/run) and minutes, from a checkpoint's metadata (branches for fused models)."""
    t = meta.get("training") or {}
    if "branches" in t:
        return f"fused: alpha {meta['alpha']:.2f}" + (" (given)" if t.get("alpha_curve") is None else "")
    if t.get("fit", "train") != "train":
        return f"{t.get('train_rows', 0):,} rows, {t.get('epochs_run')} ep, {t.get('seconds', 0) / 60:.0f} min"
    minutes = t.get("seconds", 0) / 60
    return f"{t.get('train_rows', 0):,} rows, {t.get('best_epoch')}/{t.get('epochs_run')} ep, {minutes:.0f} min"


def val_f1(meta: dict) -> str:
    """Validation macro-F1, or "refit" for models trained on train+val (validation was training data)."""
    return "refit" if meta.get("metrics") is None else f"{meta['metrics']['macro_f1']:.3f}"


def table(runs: Path, split: str, rates: dict[str, float], baselines: Path | None, refit: bool = False) -> str:
    """Models trained on the training split and the baselines fit on it; or (refit) the models refit on
    train+val by bench/refit_corpus.sh and the baselines fit on train+val."""
    lines = [
        "| model | test P | test R | test F1 | flow F1 | val F1 | parameters | FLOPs/packet | CPU packets/s | training |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    suffix = "-refit" if refit else ""
    for model in MODELS:
        name = model + suffix
        result_path = runs / f"{split}-{name}.test.json"
        if not result_path.exists():
            continue
        result = json.loads(result_path.read_text())
        meta = json.loads((runs / f"{split}-{name}.json").read_text())
        p, f = result["packet"], result["flow"]
        c = count(model, len(result["classes"]))
        rate = f"{rates[model]:,.0f}" if model in rates else "-"
        lines.append(
            f"| {model} | {p['macro_precision']:.3f} | {p['macro_recall']:.3f} | {p['macro_f1']:.3f} | "
            f"{f['macro_f1']:.3f} | {val_f1(meta)} | {c.params:,} | {c.flops:.3g} | {rate} | {budget(meta)} |"
        )
    base_path = baselines / f"baselines-{split}{'-trainval' if refit else ''}.json" if baselines else None
    if base_path and base_path.exists():
        for name, b in json.loads(base_path.read_text())["results"].items():
            r = b["report"]
            flow = f"{b['flow']['macro_f1']:.3f}" if b.get("flow") else "-"
            lines.append(
                f"| *{name}* | {r['macro_precision']:.3f} | {r['macro_recall']:.3f} | {r['macro_f1']:.3f} | {flow} | - | - | - | - | - |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--engine", type=Path, nargs="*", default=[])
    ap.add_argument("--baselines-dir", type=Path)
    args = ap.parse_args()
    rates = engine_rates(args.engine)
    for split in ("by-file", "random"):
        print(f"\n### Split: {split}\n")
        print(table(args.runs, split, rates, args.baselines_dir or args.runs))
        refit = table(args.runs, split, rates, args.baselines_dir or args.runs, refit=True)
        if refit.count("\n") > 1:
            print(f"\n### Split: {split}, refit on train+val\n")
            print(refit)


if __name__ == "__main__":
    main()
