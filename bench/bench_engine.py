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

--engines compares the CPU engines of pktnin.engine.precision on a model (--model, an .onnx file) instead:
  ort-fp32, ort-fp32-sessions, ort-int8, ort-int8-sessions   ONNX Runtime, one session or one single-thread
                                                             session per core; int8 = the model's QDQ file
  ov-fp32, ov-bf16, ov-int8                                  OpenVINO (when installed)
timed interleaved (one slice of each engine in turn, --runs rounds). Every engine row carries its roofline:
the model's multiply-accumulate work per row (2 operations each, from the ONNX graph), the achieved GFLOP/s
(GOP/s for int8) and that as a fraction of this CPU's peak at that precision, measured in the same rounds by a
large GEMM on all cores (ONNX Runtime MatMul fp32, MatMulInteger u8 x s8, OpenVINO MatMul in bf16; the best
round counts). On a loaded machine the GEMM rounds see the load too, so the fraction can pass 100 %.

    python bench/bench_engine.py --presets nin1,nin_parallel --batch 256 --save
    python bench/bench_engine.py --model pktnin/models/nin_parallel.onnx --engines all --data DATASET --save
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


# name -> (backend, precision, sessions: 1 = one session, 0 = one single-thread session per core)
ENGINES = {
    "ort-fp32": ("onnxruntime", "fp32", 1),
    "ort-fp32-sessions": ("onnxruntime", "fp32", 0),
    "ort-int8": ("onnxruntime", "int8", 1),
    "ort-int8-sessions": ("onnxruntime", "int8", 0),
    "ov-fp32": ("openvino", "fp32", 1),
    "ov-bf16": ("openvino", "bf16", 1),
    "ov-int8": ("openvino", "int8", 1),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="nin1,nin_parallel", help="comma-separated presets (random weights)")
    p.add_argument("--model", type=Path, help="a .keras checkpoint or .onnx file instead of random presets")
    p.add_argument("--classes", type=int, default=18, help="classes of the random-weight models")
    p.add_argument("--batch", default="256", help="comma-separated batch sizes")
    p.add_argument(
        "--variants",
        default="default,f32-input,opt-basic,intra1,int8",
        help=f"comma-separated, from: {', '.join(VARIANTS)}",
    )
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "all"])
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--seconds", type=float, default=1.0, help="approximate length of one run")
    p.add_argument("--data", type=Path, help="dataset directory: report macro-F1 on its test split")
    p.add_argument("--max-eval-rows", type=int, default=4000, help="test rows used for macro-F1 (a seeded sample)")
    p.add_argument("--engines", help=f"comma-separated CPU engines to compare (or 'all'): {', '.join(ENGINES)}")
    p.add_argument("--gemm-size", type=int, default=1024, help="N of the N x N x N GEMM that measures the peak")
    p.add_argument("--int8", type=Path, help="the int8 QDQ model of --model (default: the one `pktnin quantize` made)")
    p.add_argument("--save", action="store_true", help="write JSON to bench/results/")
    p.add_argument("--workdir", type=Path, help="where exported models go (default: a temporary directory)")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants: {', '.join(unknown)}")
    if args.engines:
        args.engines = list(ENGINES) if args.engines == "all" else args.engines.split(",")
        unknown = [e for e in args.engines if e not in ENGINES]
        if unknown:
            p.error(f"unknown engines: {', '.join(unknown)}")
        if args.model is None or args.model.suffix != ".onnx":
            p.error("--engines needs --model MODEL.onnx")
    return args


def random_model_onnx(preset: str, num_classes: int, input_dtype: str, workdir: Path) -> Path:
    """Export a random-weight model of `preset` (seeded) to ONNX."""
    import keras

    from pktnin.engine.export import export_keras_model
    from pktnin.engine.model_file import ModelInfo
    from pktnin.layout import LAYOUT_VERSION
    from pktnin.trainer import models
    from pktnin.trainer.presets import PARALLEL_PRESET

    keras.utils.set_random_seed(0)
    alpha = None
    if preset == PARALLEL_PRESET:
        alpha = 0.5
        model = models.build_parallel(
            models.build_model("nin1", num_classes), models.build_model("nin2", num_classes), alpha
        )
    else:
        model = models.build_model(preset, num_classes)
    info = ModelInfo(tuple(f"class{i}" for i in range(num_classes)), alpha, LAYOUT_VERSION, preset, input_dtype)
    return export_keras_model(model, workdir / f"{preset}-{input_dtype}.onnx", info)


def model_files(args, workdir: Path) -> dict[str, dict[str, Path]]:
    """{name: {"uint8": path, "float32": path}} for every model to measure."""
    if args.model is None:
        return {
            p: {d: random_model_onnx(p, args.classes, d, workdir) for d in ("uint8", "float32")}
            for p in args.presets.split(",")
        }
    if args.model.suffix == ".keras":
        from pktnin.engine.export import export_onnx

        name = args.model.stem
        return {
            name: {
                d: export_onnx(args.model, workdir / f"{name}-{d}.onnx", input_dtype=d) for d in ("uint8", "float32")
            }
        }
    from pktnin.engine.model_file import read_model_info

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
            runner.infer(rows[o : o + batch], out)
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
                        "model": name,
                        "backend": "onnxruntime",
                        "variant": variant,
                        "max_prob_diff": float(np.abs(probs - reference).max()),
                        "argmax_agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
                    }
                    if labels is not None:
                        from pktnin.trainer.metrics import macro_f1

                        entry["macro_f1"] = macro_f1(labels, probs.argmax(1), runner.num_classes)
                    for batch in batches:
                        rates = time_runner(runner, rows, batch, args.runs, args.seconds)
                        results.append(
                            {
                                **entry,
                                "batch": batch,
                                "packets_per_s": statistics.median(rates),
                                "runs": [round(r, 1) for r in rates],
                            }
                        )
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
                out.append(
                    {
                        "model": name,
                        "backend": "tensorrt",
                        "variant": precision,
                        "batch": batch,
                        "packets_per_s": statistics.median(rates),
                        "runs": [round(r, 1) for r in rates],
                    }
                )
                print_row(out[-1])
    return out


def print_row(r: dict) -> None:
    extra = f"  macro-F1 {r['macro_f1']:.4f}" if "macro_f1" in r else ""
    diff = f"  max|dp| {r['max_prob_diff']:.2e}  argmax= {r['argmax_agreement']:.4f}" if "max_prob_diff" in r else ""
    print(
        f"{r['model']:<14} {r['backend']:<12} {r['variant']:<14} batch {r['batch']:>5}  "
        f"{r['packets_per_s']:>10,.0f} packets/s{diff}{extra}",
        flush=True,
    )


# -- roofline ------------------------------------------------------------------------------------------------
def model_macs(onnx_path: Path) -> int:
    """Multiply-accumulates per row of the Conv, MatMul and Gemm nodes (shapes inferred at batch 1)."""
    import onnx
    from onnx import shape_inference

    proto = onnx.load_model(str(onnx_path))
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    proto = shape_inference.infer_shapes(proto)
    shapes = {}
    for value in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    inits = {t.name: list(t.dims) for t in proto.graph.initializer}
    shapes.update(inits)
    macs = 0
    for node in proto.graph.node:
        if node.op_type == "Conv":
            w = shapes[node.input[1]]  # [Co, Ci/group, k...]
            out = shapes[node.output[0]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            trans_b = any(att.name == "transB" and att.i for att in node.attribute)
            k = a[-1]
            n = b[-2] if trans_b else b[-1]
            macs += int(np.prod(a[:-1])) * k * n
    return macs


def gemm_calls(size: int = 1024) -> dict[str, tuple]:
    """{precision: (call, operations per call)} for a size^3 GEMM on all cores: fp32 and int8 (u8 x s8) in ONNX
    Runtime, bf16 in OpenVINO when installed and the CPU has it. Timed beside the engines, their rate is this
    CPU's practical peak for dense work at that precision under the same load."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def graph(op: str, a_type, b_type, out_type):
        g = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["c"])],
            "gemm",
            [
                helper.make_tensor_value_info("a", a_type, [size, size]),
                helper.make_tensor_value_info("b", b_type, [size, size]),
            ],
            [helper.make_tensor_value_info("c", out_type, [size, size])],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    rng = np.random.default_rng(0)
    ops = 2 * size**3
    fp32_model = graph("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)
    fp32_feed = {
        "a": rng.standard_normal((size, size), dtype=np.float32),
        "b": rng.standard_normal((size, size), dtype=np.float32),
    }
    int8_model = graph("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
    int8_feed = {
        "a": rng.integers(0, 256, (size, size), dtype=np.uint8),
        "b": rng.integers(-128, 128, (size, size), dtype=np.int8),
    }
    calls = {}
    for name, model, feed in (("fp32", fp32_model, fp32_feed), ("int8", int8_model, int8_feed)):
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        calls[name] = (lambda sess=sess, feed=feed: sess.run(None, feed), ops)
    try:
        import openvino as ov
    except ImportError:
        return calls
    core = ov.Core()
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        compiled = core.compile_model(
            core.read_model(fp32_model.SerializeToString(), b""),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"},
        )
        request = compiled.create_infer_request()
        inputs = [fp32_feed["a"], fp32_feed["b"]]
        calls["bf16"] = (lambda: request.infer(inputs), ops)
    return calls


def _ops_per_s(call, ops: int, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        n += 1
    return n * ops / (time.perf_counter() - start)


def roofline(entry: dict, macs: int, peaks: dict[str, float]) -> dict:
    """Achieved operations/s of an engine row and its fraction of the same-precision GEMM peak."""
    achieved = entry["packets_per_s"] * 2 * macs
    peak = peaks.get(entry["precision"], peaks["fp32"])
    return {
        "ops_per_row": 2 * macs,
        "achieved_gops": achieved / 1e9,
        "peak_gops": peak / 1e9,
        "peak_fraction": achieved / peak,
    }


def bench_engines(args) -> dict:
    """--engines: the CPU engines of pktnin.engine.precision on one model, interleaved, with rooflines."""
    from pktnin.engine.model_file import find_int8
    from pktnin.engine.precision import Engine, open_engine

    batch = int(args.batch.split(",")[0])
    rows, labels = eval_rows(args, max(batch * 4, 1024))
    int8 = args.int8 or find_int8(args.model)
    cores = os.cpu_count() or 1
    engines: dict[str, Engine] = {}
    for name in args.engines:
        backend, precision, sessions = ENGINES[name]
        path = int8 if precision == "int8" else args.model
        if path is None:
            print(f"{name} skipped: no int8 model (make one with `pktnin quantize MODEL --data DATASET`)")
            continue
        engines[name] = Engine(backend, precision, str(path), sessions or cores)
    runners = {}
    for name, engine in engines.items():
        try:
            runners[name] = open_engine(engine, max_batch=batch)
        except Exception as exc:  # noqa: BLE001 - a missing optional backend skips its rows only
            print(f"{name} skipped: {exc}")
    macs = model_macs(args.model)
    gemms = gemm_calls(args.gemm_size)
    for call, _ in gemms.values():
        call()  # warm-up
    check = rows[: len(labels)] if labels is not None else rows[:1024]
    reference = None
    entries = {}
    for name, runner in runners.items():
        probs = runner.predict(check)
        if reference is None:
            reference = probs
        entry = {
            "model": args.model.stem,
            "engine": name,
            "backend": engines[name].backend,
            "precision": engines[name].precision,
            "sessions": engines[name].workers,
            "batch": batch,
            "argmax_agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
            "max_prob_diff": float(np.abs(probs - reference).max()),
        }
        if labels is not None:
            from pktnin.trainer.metrics import macro_f1

            entry["macro_f1"] = macro_f1(labels, probs.argmax(1), runner.num_classes)
            entry["eval_rows"] = int(len(labels))
        entries[name] = entry
    rates: dict[str, list[float]] = {name: [] for name in runners}
    peak_runs: dict[str, list[float]] = {name: [] for name in gemms}
    for _ in range(args.runs):  # interleaved rounds, so load on the shared machine hits every engine alike
        for name, (call, ops) in gemms.items():
            peak_runs[name].append(_ops_per_s(call, ops, args.seconds / 2))
        for name, runner in runners.items():
            rates[name].extend(time_runner(runner, rows, batch, 1, args.seconds))
    peaks = {name: max(v) for name, v in peak_runs.items()}  # the best round: closest to what the cores can do
    print(
        "GEMM peak on this CPU (same rounds): "
        + ", ".join(f"{k} {v / 1e9:,.0f} G{'OP' if k == 'int8' else 'FLOP'}/s" for k, v in peaks.items()),
        flush=True,
    )
    results = []
    first = next(iter(runners), None)
    for name, runner in runners.items():
        entry = entries[name]
        entry["packets_per_s"] = statistics.median(rates[name])
        entry["runs"] = [round(r, 1) for r in rates[name]]
        entry["vs_first"] = statistics.median(a / b for a, b in zip(rates[name], rates[first]))
        entry["roofline"] = roofline(entry, macs, peaks)
        runner.close()
        results.append(entry)
        print_row({**entry, "variant": name})
        r = entry["roofline"]
        print(
            f"{'':<14} {entry['vs_first']:.2f}x {first}; {r['achieved_gops']:.1f} G{'OP' if entry['precision'] == 'int8' else 'FLOP'}/s "
            f"= {r['peak_fraction']:.1%} of the {entry['precision']} GEMM peak ({r['peak_gops']:.0f})",
            flush=True,
        )
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "onnxruntime": __import__("onnxruntime").__version__,
        "command": " ".join(sys.argv),
        "rows": "dataset test split" if args.data else "uniform random bytes",
        "model": str(args.model),
        "int8_model": str(int8) if int8 else None,
        "gemm_peak_gops": {k: v / 1e9 for k, v in peaks.items()},
        "gemm_peak_runs_gops": {k: [round(x / 1e9, 1) for x in v] for k, v in peak_runs.items()},
        "results": results,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    report = bench_engines(args) if args.engines else bench(args)
    if args.save:
        from pktnin.atomic import atomic_path

        target = ROOT / "bench" / "results" / f"engine-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
