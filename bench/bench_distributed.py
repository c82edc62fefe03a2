"""`pktnin score --executor ray` against the local executor on the same captures and model, in one run.

Configurations (same synthetic captures, the bundled model unless --model):
    local            score_files, one ONNX Runtime session with --threads threads (default 2)
    ray-1x2          Ray Data, one actor with 2 threads
    ray-2x1          Ray Data, two single-thread actors
For each: wall seconds, packets/s, and CPU-seconds of every process involved (this process and, for Ray, every
process it started: gcs, raylet, workers, actors), split into the Ray start-up (ray.init to a started cluster)
and the runs. Each configuration scores a small input (one file of --small packets) and the full input in the
same cluster; CPU = fixed + per-packet * packets through those two points separates the fixed cost of a run
(actor start, model load, kernel warm-up, Ray's own actors) from the CPU per packet, the figure to compare with
the local engine's. CPU is sampled from /proc (user + system of each process); a process that
ended during a run counts up to its last sample (every 0.2 s). The shards' own CPU (measured inside the
actors) is reported too: the rest of a Ray run's CPU is Ray's and the driver's.

The Ray cluster is local and started with one logical CPU more than the actors take (--ray-cpus, default 3 on a
2-core machine): Ray Data's own tasks (from_items, moving the summaries) need a free CPU slot or they wait
forever behind the actors; they use almost no CPU.

    PYTHONPATH=$PWD python bench/bench_distributed.py --save bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

TICK = os.sysconf("SC_CLK_TCK")


class TreeCPU:
    """CPU seconds (user + system) used by a process and its descendants, sampled from /proc by a thread every
    SAMPLE_S so that processes that end during a run (Ray's actors of a finished pool) still count: each
    process's last sample is kept. Children's CPU is not read from their parents' cutime (that would count a
    reaped child twice)."""

    SAMPLE_S = 0.2

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds at its last sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        parent, cpu = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) onwards
            pid = int(entry)
            parent[pid] = int(fields[1])
            cpu[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
        children: dict[int, list[int]] = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        tree, stack = set(), [self.root]
        while stack:
            pid = stack.pop()
            tree.add(pid)
            stack += children.get(pid, [])
        for key, value in cpu.items():
            if key[0] in tree:
                self.seen[key] = value
        return sum(self.seen.values())

    def _run(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


_tracker: TreeCPU | None = None


def cpu_used() -> float:
    """CPU seconds used so far by this process and every process it started (since main began)."""
    return _tracker.sample()


def run_local(inputs, opts, model, threads):
    from pktnin.engine.runners import open_runner
    from pktnin.scoring import score_files

    runs = []
    for name, files in inputs:
        cpu0, t0 = cpu_used(), time.perf_counter()
        runner = open_runner(model, "onnxruntime", intra_threads=threads, max_batch=opts(name).batch)
        result = score_files(files, runner, opts(name))
        runner.close()
        runs.append(
            {
                "run_s": time.perf_counter() - t0,
                "run_cpu_s": cpu_used() - cpu0,
                "packets": result.packets,
                "shard_cpu_s": None,
            }
        )
    return {"startup_s": 0.0, "startup_cpu_s": 0.0, "runs": runs}


def run_ray(inputs, opts, model, actors, threads, ray_cpus):
    import ray

    from pktnin.distributed.ray_engine import RayExecutor, RunnerSpec, ray_session
    from pktnin.scoring.run import run_units

    classes = _classes(model)
    cpu0, t0 = cpu_used(), time.perf_counter()
    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    runs = []
    try:
        with ray_session():
            startup_s, startup_cpu = time.perf_counter() - t0, cpu_used() - cpu0
            for name, files in inputs:
                o = opts(name)
                shard_cpu = []

                class Timed(RayExecutor):
                    def __call__(self, todo, parts, progress=None, shard_cpu=shard_cpu):
                        for summary in super().__call__(todo, parts, progress):
                            shard_cpu.append(summary["cpu_seconds"])
                            yield summary

                executor = Timed(RunnerSpec(str(model), "onnxruntime", o.batch), o, actors=actors,
                                 cpus_per_actor=threads)  # fmt: skip
                cpu1, t1 = cpu_used(), time.perf_counter()
                result = run_units(files, o, classes, executor)
                runs.append(
                    {
                        "run_s": time.perf_counter() - t1,
                        "run_cpu_s": cpu_used() - cpu1,
                        "packets": result.packets,
                        "shard_cpu_s": sum(shard_cpu),
                    }
                )
    finally:
        ray.shutdown()
    return {"startup_s": startup_s, "startup_cpu_s": startup_cpu, "runs": runs}


def _classes(model):
    from pktnin.engine.runners import open_runner

    runner = open_runner(model, "onnxruntime")
    try:
        return list(runner.classes)
    finally:
        runner.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="ONNX model (default: the bundled one)")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--packets", type=int, default=5000, help="packets per file")
    ap.add_argument("--small", type=int, default=500, help="packets of the small input")
    ap.add_argument("--threads", type=int, default=2, help="threads of the local session")
    ap.add_argument("--ray-cpus", type=int, default=(os.cpu_count() or 2) + 1)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()

    from pktnin.engine.bundled import default_packet_model_path
    from pktnin.engine.cache import file_sha256
    from pktnin.scoring import ScoreOptions
    from pktnin.synth import write_synthetic_capture

    model = (args.model or default_packet_model_path()).resolve()
    results = {}
    global _tracker
    with tempfile.TemporaryDirectory(prefix="pktnin-dist-") as tmp, TreeCPU(os.getpid()) as _tracker:
        tmp = Path(tmp)
        os.environ.setdefault("PKTNIN_CACHE_DIR", str(tmp / "cache"))  # a cold shard index, like a first run
        full = [write_synthetic_capture(tmp / f"in{i}.pcap", args.packets, seed=i) for i in range(args.files)]
        small = [write_synthetic_capture(tmp / "small.pcap", args.small, seed=99)]
        inputs = [("small", small), ("full", full)]
        counter = iter(range(1000))

        def opts(name):
            return ScoreOptions(
                out=tmp / f"{name}{next(counter)}" / "p.parquet", batch=args.batch, model_id=file_sha256(model)
            )

        # Warm numba's cache in this process first so the local run is not charged a JIT the actors load.
        from pktnin.distributed.ray_engine import warm_kernels

        warm_kernels()
        results["local"] = run_local(inputs, opts, model, args.threads)
        print("local", results["local"], flush=True)
        results["ray-1x2"] = run_ray(inputs, opts, model, 1, 2, args.ray_cpus)
        print("ray-1x2", results["ray-1x2"], flush=True)
        results["ray-2x1"] = run_ray(inputs, opts, model, 2, 1, args.ray_cpus)
        print("ray-2x1", results["ray-2x1"], flush=True)

    for r in results.values():
        s_run, f_run = r["runs"]
        r["cpu_per_packet_s"] = (f_run["run_cpu_s"] - s_run["run_cpu_s"]) / (f_run["packets"] - s_run["packets"])
        r["fixed_cpu_s"] = s_run["run_cpu_s"] - r["cpu_per_packet_s"] * s_run["packets"]
        r["packets_per_s"] = f_run["packets"] / f_run["run_s"]
        r["total_cpu_per_packet_s"] = f_run["run_cpu_s"] / f_run["packets"]
        if f_run["shard_cpu_s"] is not None:
            r["shard_cpu_per_packet_s"] = f_run["shard_cpu_s"] / f_run["packets"]
    base = results["local"]
    lines = [
        (
            f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores (shared with other work: "
            f"load average {os.getloadavg()[0]:.1f} at the end)"
        ),
        (
            f"model: {model.name}; full input {args.files} synthetic pcaps x {args.packets} packets "
            f"({base['runs'][1]['packets']} scored), small input {args.small} packets; batch {args.batch}; one run"
        ),
        (
            f"{'config':8} {'pkt/s':>6} {'full CPU s':>10} {'us/pkt all':>10} {'us/pkt marg':>11} {'vs local':>8} "
            f"{'fixed CPU s':>11} {'shard us/pkt':>12} {'ray.init s':>10} {'init CPU s':>10}"
        ),
    ]
    for name, r in results.items():
        r["cpu_per_packet_vs_local"] = r["cpu_per_packet_s"] / base["cpu_per_packet_s"]
        shard = r.get("shard_cpu_per_packet_s")
        lines.append(
            f"{name:8} {r['packets_per_s']:>6.0f} {r['runs'][1]['run_cpu_s']:>10.2f} "
            f"{1e6 * r['total_cpu_per_packet_s']:>10.0f} {1e6 * r['cpu_per_packet_s']:>11.0f} "
            f"{r['cpu_per_packet_vs_local']:>8.3f} {r['fixed_cpu_s']:>11.2f} "
            f"{'-' if shard is None else f'{1e6 * shard:.0f}':>12} {r['startup_s']:>10.2f} {r['startup_cpu_s']:>10.2f}"
        )
    lines.append(
        "packets/s, ray-2x1 / ray-1x2: "
        f"{results['ray-2x1']['packets_per_s'] / results['ray-1x2']['packets_per_s']:.3f}; "
        f"ray-2x1 / local ({args.threads} threads): {results['ray-2x1']['packets_per_s'] / base['packets_per_s']:.3f}"
    )
    lines.append(
        "us/pkt marg: CPU per packet between the small and the full run (fixed costs removed); "
        "vs local: that figure over the local engine's"
    )
    text = "\n".join(lines)
    print(text)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        meta = {
            "machine": lines[0],
            "model": model.name,
            "files": args.files,
            "packets_per_file": args.packets,
            "small_packets": args.small,
            "batch": args.batch,
            "local_threads": args.threads,
            "ray_cpus": args.ray_cpus,
        }
        (args.save / "distributed.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
        (args.save / "distributed.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
