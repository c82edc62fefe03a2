"""GPU check: run on a machine with an NVIDIA GPU (numba-cuda needed; CuPy, PyTorch, pycuda, ONNX Runtime optional).

Sections (--sections, default all):
  kernel      CUDA kernel == CPU kernel on every capture under --captures: uint8 rows byte for byte, float32
              rows == CPU bytes/255 exactly, and the per-packet metadata
  throughput  CUDA transform packets/s and GB/s at several batch sizes (--batches), with the raw bytes already
              on the device and with the host-to-device copy included (pageable host arrays)
  pycuda      pycuda in the device's primary context + the CUDA kernel writing through numba's external_stream
              into a pycuda allocation (the TensorRT runner's zero-copy path); with --pycuda-sdist, pycuda is
              first built and installed from that sdist and the build time recorded
  ort         ONNX Runtime's CUDA execution provider vs the CPU provider on --onnx (or the bundled model)
Results go to OUT/gpu_check.json and OUT/gpu_check.md with the GPU name; every section that could not run is
listed with the reason. Under NUMBA_ENABLE_CUDASIM=1 the kernel section runs in numba's simulator (a few
packets; it is marked as simulated) and the timed sections are not run: no GPU numbers come from the simulator.

    python bench/gpu_check.py --captures CORPUS/pcaps --out bench/results/gpu-check
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("kernel", "throughput", "pycuda", "ort")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captures", type=Path, help="folder (or file) of captures for the kernel and throughput sections")
    p.add_argument("--out", type=Path, required=True, help="output folder for gpu_check.json / gpu_check.md")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from: {', '.join(SECTIONS)}")
    p.add_argument(
        "--max-packets", type=int, default=0, help="stop the kernel section after this many records (0: all)"
    )
    p.add_argument("--batches", default="4096,65536,262144", help="batch sizes (records) for the throughput section")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per batch size (median reported)")
    p.add_argument("--mask", default="paper", choices=["paper", "strict"])
    p.add_argument("--onnx", type=Path, help="ONNX model for the ort section (default: the bundled model)")
    p.add_argument("--pycuda-sdist", type=Path, help="pycuda sdist (.tar.gz) to build and install if pycuda is missing")
    args = p.parse_args(argv)
    unknown = [s for s in args.sections.split(",") if s not in SECTIONS]
    if unknown:
        p.error(f"unknown sections: {', '.join(unknown)}")
    args.sections = args.sections.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    if any(s in args.sections for s in ("kernel", "throughput")) and args.captures is None:
        p.error("--captures is needed for the kernel and throughput sections")
    return args


def simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


# -- CPU side (runs anywhere) ---------------------------------------------------------------------------------
def capture_files(path: Path) -> list[Path]:
    from pktnin.packets import find_captures

    return find_captures([path])


def iter_raw(files: list[Path], chunk: int, max_records: int = 0):
    """(file, RawBatch) chunks of every readable capture; stops after max_records records (0: no limit)."""
    from pktnin.kernels.capture import CaptureError, CaptureReader

    seen = 0
    for path in files:
        try:
            reader = CaptureReader(path, max_records=chunk)
        except CaptureError:
            continue  # not a capture: the packets tests cover the reporting
        for raw in reader:
            if max_records:
                if seen >= max_records:
                    return
                if seen + raw.n > max_records:
                    raw = slice_raw(raw, max_records - seen)
            seen += raw.n
            yield path, raw


def slice_raw(raw, n: int):
    """The first n records of a RawBatch (the buffer is shared)."""
    return type(raw)(raw.buf, *(getattr(raw, f)[:n] for f in raw._fields[1:]))


def cpu_reference(raw, mask: str) -> tuple[np.ndarray, dict]:
    from pktnin.kernels.cpu import transform

    return transform(raw, mask=mask)


META_KEYS = (
    "frame",
    "ts_ns",
    "ip_version",
    "proto",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "vlan",
    "flow_key",
)
FLOAT_TABLE = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def new_entry() -> dict:
    return {
        "records": 0,
        "rows": 0,
        "row_mismatch": 0,
        "float_mismatch": 0,
        "meta_mismatch": [],
        "skip_counts_equal": True,
    }


def compare_batch(entry: dict, cpu_rows, cpu_meta, gpu_rows, gpu_float, gpu_meta, float_meta) -> None:
    """Count rows where the CUDA outputs (uint8 rows, float32 rows, metadata of both runs) differ from the CPU's."""
    entry["rows"] += cpu_rows.shape[0]
    if gpu_rows.shape != cpu_rows.shape or gpu_float.shape != cpu_rows.shape:
        entry["row_mismatch"] += max(cpu_rows.shape[0], gpu_rows.shape[0])
    else:
        entry["row_mismatch"] += int((gpu_rows != cpu_rows).any(axis=1).sum())
        entry["float_mismatch"] += int((gpu_float != FLOAT_TABLE[cpu_rows]).any(axis=1).sum())
    for key in META_KEYS:
        expected = np.asarray(cpu_meta[key])
        if not (
            np.array_equal(expected, np.asarray(gpu_meta[key]))
            and np.array_equal(expected, np.asarray(float_meta[key]))
        ):
            if key not in entry["meta_mismatch"]:
                entry["meta_mismatch"].append(key)
    if not np.array_equal(cpu_meta["skip_counts"], gpu_meta["skip_counts"]):
        entry["skip_counts_equal"] = False


# -- sections -------------------------------------------------------------------------------------------------
def section_kernel(args) -> dict:
    from numba import cuda

    from pktnin.kernels import cuda as cuda_kernels

    files = capture_files(args.captures)
    per_file: dict[str, dict] = {}
    for path, raw in iter_raw(files, chunk=4096 if not simulated() else 64, max_records=args.max_packets):
        entry = per_file.setdefault(str(path), new_entry())
        cpu_rows, cpu_meta = cpu_reference(raw, args.mask)
        dev_rows, gpu_meta = cuda_kernels.transform_uint8_device(raw, mask=args.mask)
        gpu_rows = dev_rows.copy_to_host() if cpu_rows.shape[0] else np.zeros_like(cpu_rows)
        out = cuda.device_array((max(raw.n, 1), cpu_rows.shape[1]), dtype=np.float32)
        float_meta = cuda_kernels.transform_to_device(raw, out, mask=args.mask)
        gpu_float = out.copy_to_host()[: cpu_rows.shape[0]]
        entry["records"] += raw.n
        compare_batch(entry, cpu_rows, cpu_meta, gpu_rows, gpu_float, gpu_meta, float_meta)
    bad = {
        f: e
        for f, e in per_file.items()
        if e["row_mismatch"] or e["float_mismatch"] or e["meta_mismatch"] or not e["skip_counts_equal"]
    }
    return {
        "files": len(per_file),
        "capture_files_found": len(files),
        "records": sum(e["records"] for e in per_file.values()),
        "rows": sum(e["rows"] for e in per_file.values()),
        "all_equal": not bad and bool(per_file),
        "mismatching_files": bad,
        "simulated": simulated(),
    }


def replay_raw(files: list[Path], n: int) -> dict:
    """A RawBatch-like dict of n records: the captures' records repeated (buffer tiled, offsets shifted)."""
    bufs, offs, caplens, links, ts = [], [], [], [], []
    base = 0
    for _, raw in iter_raw(files, chunk=65536, max_records=min(n, 200_000)):
        lo = int(raw.pkt_off.min()) if raw.n else 0
        hi = int((raw.pkt_off + raw.caplen).max()) if raw.n else 0
        bufs.append(np.array(raw.buf[lo:hi]))
        offs.append(raw.pkt_off - lo + base)
        caplens.append(raw.caplen)
        links.append(raw.linktype)
        ts.append(raw.ts_ns)
        base += hi - lo
    if not offs:
        raise RuntimeError("no records in the captures")
    pool_buf = np.concatenate(bufs)
    pool_off, pool_cap = np.concatenate(offs), np.concatenate(caplens)
    pool_link, pool_ts = np.concatenate(links), np.concatenate(ts)
    reps = -(-n // pool_off.size)
    shift = np.repeat(np.arange(reps, dtype=np.int64) * pool_buf.size, pool_off.size)[:n]
    return {
        "buf": np.tile(pool_buf, reps),
        "pkt_off": (np.tile(pool_off, reps)[:n] + shift).astype(np.int64),
        "caplen": np.tile(pool_cap, reps)[:n].astype(np.int32),
        "linktype": np.tile(pool_link, reps)[:n].astype(np.int32),
        "ts_ns": np.tile(pool_ts, reps)[:n].astype(np.int64),
        "frame": np.arange(n, dtype=np.int64),
    }


def section_throughput(args) -> dict:
    from numba import cuda

    from pktnin.kernels import cuda as cuda_kernels
    from pktnin.layout import ROW_LEN

    files = capture_files(args.captures)
    results = []
    stream = cuda.stream()
    for n in args.batches:
        raw = replay_raw(files, n)
        in_bytes = int(raw["caplen"].astype(np.int64).sum())
        out = cuda.device_array((n, ROW_LEN), dtype=np.float32, stream=stream)
        dev_raw = {k: cuda.to_device(v, stream=stream) for k, v in raw.items()}
        stream.synchronize()
        for mode, source in (("device", dev_raw), ("host+copy", raw)):
            meta = cuda_kernels.transform_to_device(source, out, mask=args.mask, stream=stream)  # warm up / compile
            kept = int(len(meta["index"]))
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                cuda_kernels.transform_to_device(source, out, mask=args.mask, stream=stream)
                stream.synchronize()
                times.append(time.perf_counter() - start)
            t = float(np.median(times))
            results.append(
                {
                    "batch": n,
                    "mode": mode,
                    "seconds": t,
                    "packets_per_s": n / t,
                    "rows": kept,
                    "input_GB_per_s": in_bytes / t / 1e9,
                    "output_GB_per_s": kept * ROW_LEN * 4 / t / 1e9,
                }
            )
            print(
                f"  throughput batch {n:>8} {mode:<10} {n / t:>14,.0f} packets/s  "
                f"in {in_bytes / t / 1e9:6.2f} GB/s  out {kept * ROW_LEN * 4 / t / 1e9:6.2f} GB/s",
                flush=True,
            )
        del dev_raw, out
    return {
        "results": results,
        "note": "transform_to_device includes the host-side scan of skip codes and the metadata copy-back",
    }


def ensure_pycuda(args, report: dict) -> bool:
    try:
        import pycuda.driver  # noqa: F401

        report["pycuda_version"] = importlib.metadata.version("pycuda")
        return True
    except ImportError as exc:
        report["pycuda_import_error"] = str(exc)
    if args.pycuda_sdist is None:
        return False
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", str(args.pycuda_sdist)],
        capture_output=True,
        text=True,
    )
    report["pycuda_build"] = {
        "seconds": round(time.perf_counter() - start, 1),
        "returncode": proc.returncode,
        "log_tail": (proc.stdout + proc.stderr)[-3000:],
    }
    if proc.returncode != 0:
        return False
    importlib.invalidate_caches()
    import pycuda.driver  # noqa: F401,F811

    report["pycuda_version"] = importlib.metadata.version("pycuda")
    return True


def section_pycuda(args) -> dict:
    report: dict = {}
    if not ensure_pycuda(args, report):
        report["not_run"] = "pycuda is not importable" + (
            "" if args.pycuda_sdist else " (pass --pycuda-sdist to build it)"
        )
        return report
    import pycuda.driver as drv
    from numba import cuda

    from pktnin.engine.gpu_env import context_current
    from pktnin.kernels import cuda as cuda_kernels
    from pktnin.layout import ROW_LEN

    files = capture_files(args.captures) if args.captures else []
    raw = next((r for _, r in iter_raw(files, chunk=4096, max_records=4096)), None)
    if raw is None:
        report["not_run"] = "no captures to transform"
        return report
    cpu_rows, _ = cpu_reference(raw, args.mask)
    with context_current(0) as ctx:
        numba_ctx = cuda.current_context()
        pycuda_handle = getattr(ctx, "handle", None)
        report["same_context"] = (
            None if pycuda_handle is None else handle_int(numba_ctx.handle) == handle_int(pycuda_handle)
        )
        stream = drv.Stream()
        buf = drv.mem_alloc(raw.n * ROW_LEN * 4)
        desc = {"shape": (raw.n, ROW_LEN), "typestr": "<f4", "data": (int(buf), False), "strides": None, "version": 3}
        dev = cuda.from_cuda_array_interface(desc, owner=buf, sync=False)
        meta = cuda_kernels.transform_to_device(raw, dev, mask=args.mask, stream=stream.handle)
        host = drv.pagelocked_empty((raw.n, ROW_LEN), np.float32)
        drv.memcpy_dtoh_async(host, buf, stream)
        stream.synchronize()
        k = len(meta["index"])
        report.update(
            {
                "records": raw.n,
                "rows": k,
                "zero_copy_rows_equal": bool(
                    k == cpu_rows.shape[0] and np.array_equal(host[:k], FLOAT_TABLE[cpu_rows])
                ),
            }
        )
        buf.free()
    try:
        import tensorrt  # noqa: F401

        report["tensorrt"] = importlib.metadata.version("tensorrt")
    except ImportError:
        report["tensorrt"] = "not installed: the TensorRT runner itself was not exercised"
    return report


def handle_int(handle) -> int:
    """A CUDA handle as an int: ctypes pointers have .value, cuda-python handles convert with int()."""
    value = getattr(handle, "value", handle)
    return int(value or 0)


def section_ort(args) -> dict:
    import onnxruntime as ort

    from pktnin.engine.bundled import default_packet_model_path
    from pktnin.engine.ort_runner import OnnxRuntimeRunner

    providers = ort.get_available_providers()
    report: dict = {"onnxruntime": ort.__version__, "providers": providers}
    if "CUDAExecutionProvider" not in providers:
        report["not_run"] = "this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not installed)"
        return report
    model = args.onnx or default_packet_model_path()
    rows = np.random.default_rng(0).integers(0, 256, size=(4096, 1500), dtype=np.uint8)
    with OnnxRuntimeRunner(model) as cpu_runner:
        expected = cpu_runner.predict(rows[:512])
    with OnnxRuntimeRunner(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]) as gpu_runner:
        got = gpu_runner.predict(rows[:512])
        report["model"] = str(model)
        report["max_prob_diff_vs_cpu"] = float(np.abs(got - expected).max())
        report["argmax_agreement_vs_cpu"] = float((got.argmax(1) == expected.argmax(1)).mean())
        timings = []
        for batch in (256, 1024, 4096):
            out = gpu_runner.new_output(batch)
            gpu_runner.infer(rows[:batch], out)
            start = time.perf_counter()
            reps = 20
            for _ in range(reps):
                gpu_runner.infer(rows[:batch], out)
            timings.append({"batch": batch, "packets_per_s": reps * batch / (time.perf_counter() - start)})
        report["throughput"] = timings
    return report


# -- driver ---------------------------------------------------------------------------------------------------
def environment() -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(), "simulated": simulated()}
    for dist in (
        "numba",
        "numba-cuda",
        "cupy-cuda12x",
        "cupy",
        "torch",
        "onnxruntime",
        "onnxruntime-gpu",
        "pycuda",
        "tensorrt",
    ):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        env["nvcc"] = (
            subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30)
            .stdout.strip()
            .splitlines()[-1]
        )
    except (OSError, subprocess.SubprocessError, IndexError):
        env["nvcc"] = None
    return env


def gpu_name() -> str:
    if simulated():
        return "numba CUDA simulator (not a GPU)"
    from numba import cuda

    if not cuda.is_available():
        return "none"
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return f"{name} (compute capability {dev.compute_capability[0]}.{dev.compute_capability[1]})"


def run(args) -> dict:
    report = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "environment": environment(),
        "sections": {},
        "not_run": {},
    }
    report["gpu"] = gpu_name()
    runners = {"kernel": section_kernel, "throughput": section_throughput, "pycuda": section_pycuda, "ort": section_ort}
    for name in args.sections:
        if report["gpu"] == "none":
            report["not_run"][name] = "no CUDA GPU visible to numba"
            continue
        if simulated() and name != "kernel":
            report["not_run"][name] = "simulator: timed and driver-level sections need a real GPU"
            continue
        print(f"[{name}]", flush=True)
        try:
            result = runners[name](args)
        except Exception as exc:  # record and go on with the other sections
            report["not_run"][name] = f"{type(exc).__name__}: {exc}"
            report["sections"][name] = {"traceback": traceback.format_exc()[-4000:]}
            continue
        if "not_run" in result:
            report["not_run"][name] = result["not_run"]
        report["sections"][name] = result
    return report


def markdown(report: dict) -> str:
    lines = [f"# GPU check — {report['gpu']}", "", f"created {report['created']}", "", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in report["environment"].items()]
    kernel = report["sections"].get("kernel")
    if kernel and "files" in kernel:
        lines += [
            "",
            "## CUDA kernel vs CPU kernel",
            "",
            f"{kernel['files']} files, {kernel['records']:,} records, {kernel['rows']:,} rows: "
            f"{'all equal' if kernel['all_equal'] else 'MISMATCHES in ' + str(len(kernel['mismatching_files'])) + ' files'}"
            + (" (simulator)" if kernel["simulated"] else ""),
        ]
    thr = report["sections"].get("throughput")
    if thr and "results" in thr:
        lines += [
            "",
            "## Kernel throughput",
            "",
            "| batch | mode | packets/s | in GB/s | out GB/s |",
            "|---:|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['batch']} | {r['mode']} | {r['packets_per_s']:,.0f} | {r['input_GB_per_s']:.2f} | {r['output_GB_per_s']:.2f} |"
            for r in thr["results"]
        ]
    for name in ("pycuda", "ort"):
        sec = report["sections"].get(name)
        if sec:
            lines += [
                "",
                f"## {name}",
                "",
                "```",
                json.dumps({k: v for k, v in sec.items() if k != "traceback"}, indent=2),
                "```",
            ]
    if report["not_run"]:
        lines += ["", "## Not run", ""] + [f"- {k}: {v}" for k, v in report["not_run"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    from pktnin.atomic import atomic_path

    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "gpu_check.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    with atomic_path(args.out / "gpu_check.md") as tmp:
        tmp.write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
