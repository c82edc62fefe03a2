"""Model-only throughput of the inference engines: packets/s per backend, preset, batch size and variant.

Without --model it builds random-weight models of the given presets (pktnin.trainer.models.build_model) and
exports them; with --model it measures that checkpoint/ONNX file. ONNX Runtime variants:
  default      uint8 input (/255 in the graph), graph optimizations "all", ONNX Runtime's default threads
  f32-input    float32 input, rows normalized on the host inside infer() (counted in the time)
  opt-basic, opt-extended, opt-disable   graph optimization levels
  intra1, intra2, intra2-inter2          thread layouts
  int8         onnxruntime.quantization.quantize_dynamic (int8 weights, dynamic activation scales)
  fp16         onnxconverter-common float16 graph (on the CPU this mostly measures the cast overhead)
Each variant reports the median packets/s over --runs runs, the largest probability difference and the argmax
agreement against the default variant on the same rows, and with --data DIR (a dataset directory) the
macro-F1 on its test split (meaningful for trained models only).

    python bench/bench_engine.py --presets nin1,nin_parallel --batch 256 --save
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pktnin.engine.ort_runner import OnnxRuntimeRunner  # noqa: E402
from pktnin.layout import ROW_LEN  # noqa: E402

VARIANTS = {
    "default": {},
    "f32-input": {"input": "float32"},
    "opt-basic": {"graph_opt": "basic"},
    "opt-extended": {"graph_opt": "extended"},
    "opt-disable": {"graph_opt": "disable"},
    "intra1": {"intra_threads": 1},
    "intra2": {"intra_threads": 2},
    "intra2-inter2": {"intra_threads": 2, "inter_threads": 2},
    "int8": {"model": "int8"},
    "fp16": {"model": "fp16"},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="nin1,nin_parallel", help="comma-separated presets (random weights)")
    p.add_argument("--model", type=Path, help="a .keras checkpoint or .onnx file instead of random presets")
    p.add_argument("--classes", type=int, default=18, help="classes of the random-weight models")
    p.add_argument("--batch", default="256", help="comma-separated batch sizes")
    p.add_argument("--variants", default="default,f32-input,opt-basic,intra1,int8",
                   help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "all"])
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--seconds", type=float, default=1.0, help="approximate length of one run")
    p.add_argument("--data", type=Path, help="dataset directory: report macro-F1 on its test split")
    p.add_argument("--max-eval-rows", type=int, default=4000, help="test rows used for macro-F1 (a seeded sample)")
    p.add_argument("--save", action="store_true", help="write JSON to bench/results/")
    p.add_argument("--workdir", type=Path, help="where exported models go (default: a temporary directory)")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants: {', '.join(unknown)}")
    return args


def random_model_onnx(preset: str, num_classes: int, input_dtype: str, workdir: Path) -> Path:
    """Export a random-weight model of `preset` (seeded) to ONNX."""
    import keras

    from pktnin.engine.export import export_keras_model
    from pktnin.engine.runner_base import ModelInfo
    from pktnin.layout import LAYOUT_VERSION
    from pktnin.trainer import models
    from pktnin.trainer.presets import PARALLEL_PRESET

    keras.utils.set_random_seed(0)
    alpha = None
    if preset == PARALLEL_PRESET:
        alpha = 0.5
        model = models.build_parallel(models.build_model("nin1", num_classes), models.build_model("nin2", num_classes), alpha)
    else:
        model = models.build_model(preset, num_classes)
    info = ModelInfo(tuple(f"class{i}" for i in range(num_classes)), alpha, LAYOUT_VERSION, preset, input_dtype)
    return export_keras_model(model, workdir / f"{preset}-{input_dtype}.onnx", info)


def model_files(args, workdir: Path) -> dict[str, dict[str, Path]]:
    """{name: {"uint8": path, "float32": path}} for every model to measure."""
    if args.model is None:
        return {p: {d: random_model_onnx(p, args.classes, d, workdir) for d in ("uint8", "float32")}
                for p in args.presets.split(",")}
    if args.model.suffix == ".keras":
        from pktnin.engine.export import export_onnx

        name = args.model.stem
        return {name: {d: export_onnx(args.model, workdir / f"{name}-{d}.onnx", input_dtype=d) for d in ("uint8", "float32")}}
    from pktnin.engine.export import read_model_info

    return {args.model.stem: {read_model_info(args.model).input_dtype: args.model}}


def derived_model(base: Path, kind: str, workdir: Path) -> Path:
    target = workdir / f"{base.stem}-{kind}.onnx"
    if target.is_file():
        return target
    if kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(base), str(target), weight_type=QuantType.QInt8)
    elif kind == "fp16":
        from pktnin.engine.fp16 import convert_onnx_to_fp16

        convert_onnx_to_fp16(base, target)
    return target


def time_runner(runner, rows: np.ndarray, batch: int, runs: int, seconds: float) -> list[float]:
    """packets/s of `runs` runs, each about `seconds` long, batches of `batch` rows from `rows`."""
    out = runner.new_output(batch)
    runner.infer(rows[:batch], out)  # warm up
    start = time.perf_counter()
    runner.infer(rows[:batch], out)
    per_batch = max(time.perf_counter() - start, 1e-6)
    batches = max(1, int(seconds / per_batch))
    rates = []
    offsets = range(0, len(rows) - batch + 1, batch)
    for _ in range(runs):
        start = time.perf_counter()
        for k in range(batches):
            o = offsets[k % len(offsets)]
            runner.infer(rows[o:o + batch], out)
        rates.append(batches * batch / (time.perf_counter() - start))
    return rates


def eval_rows(args, num_rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows to run (uint8) and, with --data, their test labels."""
    if args.data is None:
        return np.random.default_rng(1).integers(0, 256, size=(num_rows, ROW_LEN), dtype=np.uint8), None
    from pktnin.dataset.format import load_dataset

    ds = load_dataset(args.data)
    idx = ds.indices("test")
    if idx.size > args.max_eval_rows:  # a seeded sample: the split is ordered by file, so a prefix is a few classes
        idx = np.sort(np.random.default_rng(0).choice(idx, args.max_eval_rows, replace=False))
    if idx.size == 0:
        raise SystemExit(f"{args.data}: empty test split")
    return np.ascontiguousarray(ds.rows[idx]), ds.labels[idx].astype(np.int64)


def bench(args) -> dict:
    batches = [int(b) for b in args.batch.split(",")]
    rows, labels = eval_rows(args, max(max(batches) * 4, 1024))
    results = []
    with tempfile.TemporaryDirectory(prefix="pktnin-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name, files in model_files(args, workdir).items():
            base_dtype = "uint8" if "uint8" in files else "float32"
            reference = None
            for variant in args.variants.split(","):
                spec = VARIANTS[variant]
                path = files.get(spec.get("input", base_dtype))
                if path is None:
                    continue
                if "model" in spec:
                    path = derived_model(path, spec["model"], workdir)
                kwargs = {k: spec[k] for k in ("graph_opt", "intra_threads", "inter_threads") if k in spec}
                with OnnxRuntimeRunner(path, **kwargs) as runner:
                    probs = runner.predict(rows[: len(labels) if labels is not None else 1024])
                    if reference is None:
                        reference = probs
                    entry = {
                        "model": name, "backend": "onnxruntime", "variant": variant,
                        "max_prob_diff": float(np.abs(probs - reference).max()),
                        "argmax_agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
                    }
                    if labels is not None:
                        from pktnin.trainer.metrics import macro_f1

                        entry["macro_f1"] = macro_f1(labels, probs.argmax(1), runner.num_classes)
                    for batch in batches:
                        rates = time_runner(runner, rows, batch, args.runs, args.seconds)
                        results.append({**entry, "batch": batch, "packets_per_s": statistics.median(rates),
                                        "runs": [round(r, 1) for r in rates]})
                        print_row(results[-1])
            if args.backend in ("tensorrt", "all"):
                results.extend(bench_tensorrt(name, files, rows, batches, args))
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "onnxruntime": __import__("onnxruntime").__version__,
        "command": " ".join(sys.argv),
        "rows": "dataset test split" if args.data else "uniform random bytes",
        "results": results,
    }


def bench_tensorrt(name: str, files: dict, rows: np.ndarray, batches: list[int], args) -> list[dict]:
    from pktnin.engine.gpu_env import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason:
        print(f"tensorrt skipped: {reason}")
        return [{"model": name, "backend": "tensorrt", "skipped": reason}]
    from pktnin.engine.trt_build import cached_plan
    from pktnin.engine.trt_runner import TensorRTRunner

    out = []
    for precision in ("fp32", "fp16"):
        plan = cached_plan(files["float32"], precision=precision, max_batch=max(batches))
        with TensorRTRunner(plan) as runner:
            for batch in batches:
                rates = time_runner(runner, rows, batch, args.runs, args.seconds)
                out.append({"model": name, "backend": "tensorrt", "variant": precision, "batch": batch,
                            "packets_per_s": statistics.median(rates), "runs": [round(r, 1) for r in rates]})
                print_row(out[-1])
    return out


def print_row(r: dict) -> None:
    extra = f"  macro-F1 {r['macro_f1']:.4f}" if "macro_f1" in r else ""
    diff = f"  max|dp| {r['max_prob_diff']:.2e}  argmax= {r['argmax_agreement']:.4f}" if "max_prob_diff" in r else ""
    print(f"{r['model']:<14} {r['backend']:<12} {r['variant']:<14} batch {r['batch']:>5}  "
          f"{r['packets_per_s']:>10,.0f} packets/s{diff}{extra}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    report = bench(args)
    if args.save:
        from pktnin.atomic import atomic_path

        target = ROOT / "bench" / "results" / f"engine-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
