"""When Ray pays: `pktnin score --executor ray` against the local executor on the same captures and model, the
fixed and per-packet wall costs of each, and the input size above which N nodes beat one machine.

Configurations (same synthetic captures, the bundled model unless --model), run in interleaved rounds (the order
rotates each round; figures are medians over the rounds):
    local      score_files, one ONNX Runtime session with --threads threads (default 2)
    ray-1x2    a local Ray (ray.init), one actor with 2 threads
    ray-2x1    a local Ray, two single-thread actors
    ray-2node  two Ray nodes on this machine started as a cluster is (`ray start --head`, `ray start --address`),
               one single-thread actor on each: the multi-node machinery (a second raylet, actors placed on
               another node, parts written by another node's actor), not a speed-up: both nodes share the same
               cores, the network is loopback and the storage this machine's disk
Each configuration scores a small input (one file of --small packets) and the full input; the wall time of a run
against its packets through those two points separates the fixed wall cost of a run from its wall cost per
packet. The fixed cost is split as measured: cluster start (ray.init or both `ray start`s, until the cluster
answers), join (a driver connecting to a running cluster: ray.init(address)), actor start (the pool's creation
to an actor's __init__: Ray Data's planning, the worker process, pktnin's imports), model load and kernel warm-up
(each timed inside every actor; for local, in this process). The per-packet cost is split into the scoring (the
actors' work, the part that more nodes divide) and the driver's (the output assembled from the parts, which one
driver does whatever the cluster).

Break-even, for N = 2, 4, 8 nodes (and 1: Ray on this machine alone), each node like this machine running the best single-machine Ray configuration
(the lower scoring cost per packet), units spread evenly over the nodes and their actors starting in parallel:
    one machine  T1(P) = F_local + P * c_local
    N nodes      TN(P) = F_ray + P * (c_score / N + c_driver)
    N nodes beat one machine above P = (F_ray - F_local) / (c_local - c_score / N - c_driver) packets,
given for a cluster already running (F_ray = the node configuration's fixed cost, actor start, model load and
kernels included, plus ray-2node's join) and for one started for the run (plus ray-2node's cluster start), in packets and in bytes at the full input's bytes per scored
packet. CPU-seconds of every process (this one, and Ray's gcs, raylets and actors) are reported as before.

    PYTHONPATH=$PWD python bench/bench_distributed.py --save bench/results
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from proc_tree import below, kill_tree, proc_table  # noqa: E402 - after the path

from pktnin.distributed.ray_engine import RayExecutor, RunnerSpec, UnitScorer  # noqa: E402 - after the path

NODES = (1, 2, 4, 8)  # 1: Ray on this machine alone, against the local executor


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
        parent, cpu = proc_table()
        tree = set(below(self.root, parent))
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


class TimedScorer(UnitScorer):
    """The Ray actor, timing its own start: when __init__ began, the model load, when it was ready (the rest of
    __init__ is the kernel warm-up). Told once, with the first unit's summary."""

    def __init__(self, runner_spec, *args, **kw) -> None:
        entered = time.time()
        loaded = {}

        def open_runner(threads):
            t = time.perf_counter()
            runner = runner_spec(threads)
            loaded["s"] = time.perf_counter() - t
            return runner

        open_runner.backend = runner_spec.backend  # type: ignore[attr-defined]  # ONNX Runtime: no build lock
        super().__init__(open_runner, *args, **kw)
        self.start = {"entered": entered, "model_load_s": loaded["s"], "ready": time.time()}

    def __call__(self, batch: dict) -> dict:
        out = super().__call__(batch)
        if self.start is not None:
            first = json.loads(out["summary"][0])
            out["summary"][0] = json.dumps({**first, "actor": self.start})
            self.start = None
        return out


class TimedExecutor(RayExecutor):
    """RayExecutor with TimedScorer actors; collects the actors' start figures and the shards' CPU."""

    scorer = TimedScorer

    def __call__(self, units, parts_dir, progress=None):
        self.called, self.actors_seen, self.shard_cpu, self.nodes = time.time(), [], 0.0, {}
        for summary in super().__call__(units, parts_dir, progress):
            self.shard_cpu += summary["cpu_seconds"]
            self.nodes[summary["node"]] = self.nodes.get(summary["node"], 0) + 1
            if "actor" in summary:
                a = summary["actor"]
                self.actors_seen.append(
                    {
                        "actor_start_s": a["entered"] - self.called,
                        "model_load_s": a["model_load_s"],
                        "kernels_s": a["ready"] - a["entered"] - a["model_load_s"],
                    }
                )
            yield summary


def run_local(inputs, opts, model, threads, kernels_s):
    from pktnin.engine.runners import open_runner
    from pktnin.scoring import score_files

    runs = []
    for name, files in inputs:
        cpu0, t0 = cpu_used(), time.perf_counter()
        runner = open_runner(model, "onnxruntime", intra_threads=threads, max_batch=opts(name).batch)
        model_s = time.perf_counter() - t0
        result = score_files(files, runner, opts(name))
        runner.close()
        runs.append(
            {
                "run_s": time.perf_counter() - t0,
                "scoring_s": result.seconds,
                "run_cpu_s": cpu_used() - cpu0,
                "packets": result.packets,
                "shard_cpu_s": None,
                "actors": [{"actor_start_s": 0.0, "model_load_s": model_s, "kernels_s": kernels_s}],
            }
        )
    return {"cluster_start_s": 0.0, "cluster_start_cpu_s": 0.0, "join_s": 0.0, "runs": runs}


def _ray_runs(inputs, opts, model, classes, actors, threads):
    from pktnin.scoring.run import run_units

    runs = []
    for name, files in inputs:
        o = opts(name)
        executor = TimedExecutor(RunnerSpec(str(model), "onnxruntime", o.batch), o, actors=actors,
                                 cpus_per_actor=threads)  # fmt: skip
        cpu1, t1 = cpu_used(), time.perf_counter()
        result = run_units(files, o, classes, executor)
        runs.append(
            {
                "run_s": time.perf_counter() - t1,
                "scoring_s": result.seconds,
                "run_cpu_s": cpu_used() - cpu1,
                "packets": result.packets,
                "shard_cpu_s": executor.shard_cpu,
                "actors": executor.actors_seen,
                "units_by_node": executor.nodes,
            }
        )
    return runs


def run_ray(inputs, opts, model, classes, actors, threads, ray_cpus):
    import ray

    from pktnin.distributed.ray_engine import ray_session

    cpu0, t0 = cpu_used(), time.perf_counter()
    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        with ray_session():
            start_s, start_cpu = time.perf_counter() - t0, cpu_used() - cpu0
            runs = _ray_runs(inputs, opts, model, classes, actors, threads)
    finally:
        ray.shutdown()
    return {"cluster_start_s": start_s, "cluster_start_cpu_s": start_cpu, "join_s": 0.0, "runs": runs}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(temp: Path, args: list[str], env: dict) -> subprocess.Popen:
    """`ray start --block` of one node in its own folder; returns once the node says it has started."""
    temp.mkdir()
    log = temp / "start.log"
    proc = subprocess.Popen(
        ["ray", "start", "--block", "--temp-dir", str(temp), "--disable-usage-stats",
         "--dashboard-agent-listen-port", str(_free_port()), *args],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None:
            raise RuntimeError(f"ray start failed: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def run_two_nodes(inputs, opts, model, classes, tmp: Path):
    """A head (2 logical CPUs: an actor and Ray Data's own tasks) and a second node (1 CPU), one single-thread
    actor on each (Ray Data spreads its actors)."""
    import ray

    from pktnin.distributed.ray_engine import ray_session

    root = Path(tempfile.mkdtemp(prefix="pkb", dir="/tmp"))  # short: Ray's socket paths must stay short
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    address = f"127.0.0.1:{_free_port()}"
    nodes = []
    cpu0, t0 = cpu_used(), time.perf_counter()
    try:
        nodes.append(_ray_start(root / "head", ["--head", "--node-ip-address", "127.0.0.1", "--port",
                                                address.split(":")[1], "--ray-client-server-port",
                                                str(_free_port()), "--include-dashboard", "false", "--num-cpus",
                                                "2"], env))  # fmt: skip
        nodes.append(_ray_start(root / "node1", ["--address", address, "--node-ip-address", "127.0.0.1",
                                                 "--num-cpus", "1"], env))  # fmt: skip
        start_s, start_cpu = time.perf_counter() - t0, cpu_used() - cpu0
        t1 = time.perf_counter()
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        join_s = time.perf_counter() - t1
        try:
            with ray_session():
                runs = _ray_runs(inputs, opts, model, classes, 2, 1)
        finally:
            ray.shutdown()
    finally:
        for proc in reversed(nodes):
            kill_tree(proc)
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return {"cluster_start_s": start_s, "cluster_start_cpu_s": start_cpu, "join_s": join_s, "runs": runs}


def settle(limit_s: float = 30.0) -> None:
    """Wait until the processes the last configuration started are gone (Ray's exit after ray.shutdown or a
    node's kill), so that the next configuration does not pay for their end; the local one, with nothing to
    start, would pay most."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        parent, _ = proc_table()
        if len(below(os.getpid(), parent)) == 1:
            break
        time.sleep(0.2)
    time.sleep(1.0)


def _classes(model):
    from pktnin.engine.runners import open_runner

    runner = open_runner(model, "onnxruntime")
    try:
        return list(runner.classes)
    finally:
        runner.close()


def figures(r: dict) -> dict:
    """One round of one configuration: wall (and CPU) per packet and fixed, from its small and full runs."""
    s_run, f_run = r["runs"]
    dp = f_run["packets"] - s_run["packets"]
    c = (f_run["run_s"] - s_run["run_s"]) / dp
    c_score = (f_run["scoring_s"] - s_run["scoring_s"]) / dp
    cpu = (f_run["run_cpu_s"] - s_run["run_cpu_s"]) / dp
    actors = s_run["actors"] + f_run["actors"]
    out = {
        "wall_per_packet_s": c,
        "scoring_wall_per_packet_s": c_score,
        "driver_wall_per_packet_s": c - c_score,
        "fixed_wall_s": s_run["run_s"] - c * s_run["packets"],
        "cluster_start_s": r["cluster_start_s"],
        "join_s": r["join_s"],
        "actor_start_s": statistics.median(a["actor_start_s"] for a in actors),
        "model_load_s": statistics.median(a["model_load_s"] for a in actors),
        "kernels_s": statistics.median(a["kernels_s"] for a in actors),
        "packets_per_s": f_run["packets"] / f_run["run_s"],
        "cpu_per_packet_s": cpu,
        "fixed_cpu_s": s_run["run_cpu_s"] - cpu * s_run["packets"],
        "cluster_start_cpu_s": r["cluster_start_cpu_s"],
    }
    if f_run.get("units_by_node") is not None:
        out["nodes_used"] = len(f_run["units_by_node"])
    return out


def break_even(local: dict, node: dict, cluster: dict, n: int, with_start: bool) -> float | None:
    """Packets above which n nodes like this one beat one machine; None: never (the driver's share alone is
    slower than one machine). `node`: the configuration each node runs; `cluster`: the two-node setup, whose
    `ray start`s and join are what a cluster's are."""
    fixed_ray = node["fixed_wall_s"] + cluster["join_s"] + (cluster["cluster_start_s"] if with_start else 0.0)
    gain = local["wall_per_packet_s"] - node["scoring_wall_per_packet_s"] / n - node["driver_wall_per_packet_s"]
    if gain <= 0:
        return None
    return max(0.0, (fixed_ray - local["fixed_wall_s"]) / gain)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="ONNX model (default: the bundled one)")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--packets", type=int, default=2000, help="packets per file")
    ap.add_argument("--small", type=int, default=200, help="packets of the small input")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads of the local session")
    ap.add_argument("--ray-cpus", type=int, default=(os.cpu_count() or 2) + 1)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()

    import ray.data  # noqa: F401 - it sets its loggers up on import: quieten them after that

    from pktnin.engine.bundled import default_packet_model_path
    from pktnin.engine.cache import file_sha256
    from pktnin.scoring import ScoreOptions
    from pktnin.scoring.warmup import warm_kernels
    from pktnin.synth import write_synthetic_capture

    for logger in ("ray", "ray.data"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    # A cluster of `ray start` nodes asks no token (a token in ~/.ray would turn it on for the head only).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    model = (args.model or default_packet_model_path()).resolve()
    classes = _classes(model)
    load = [os.getloadavg()[0]]
    rounds: dict[str, list[dict]] = {}
    global _tracker
    with tempfile.TemporaryDirectory(prefix="pktnin-dist-") as tmp, TreeCPU(os.getpid()) as _tracker:
        tmp = Path(tmp)
        os.environ.setdefault("PKTNIN_CACHE_DIR", str(tmp / "cache"))  # a cold shard index, like a first run
        full = [write_synthetic_capture(tmp / f"in{i}.pcap", args.packets, seed=i) for i in range(args.files)]
        small = [write_synthetic_capture(tmp / "small.pcap", args.small, seed=99)]
        inputs = [("small", small), ("full", full)]
        full_bytes = sum(f.stat().st_size for f in full)
        counter = iter(range(100000))

        def opts(name):
            return ScoreOptions(
                out=tmp / f"{name}{next(counter)}" / "p.parquet",
                batch=args.batch,
                model_id=file_sha256(model),
                unit_files=1,  # a unit per file: the actors share the files (grouped, they would be one unit)
            )

        t = time.perf_counter()
        warm_kernels()  # numba's cache loaded by this process: what each actor's warm-up does
        kernels_s = time.perf_counter() - t
        configs = {
            "local": lambda: run_local(inputs, opts, model, args.threads, kernels_s),
            "ray-1x2": lambda: run_ray(inputs, opts, model, classes, 1, 2, args.ray_cpus),
            "ray-2x1": lambda: run_ray(inputs, opts, model, classes, 2, 1, args.ray_cpus),
            "ray-2node": lambda: run_two_nodes(inputs, opts, model, classes, tmp),
        }
        names = list(configs)
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # the order rotates each round
                settle()
                raw = configs[name]()
                rounds.setdefault(name, []).append({"raw": raw, **figures(raw)})
                load.append(os.getloadavg()[0])
                print(f"round {i + 1} {name}: {json.dumps(rounds[name][-1]['raw']['runs'][1]['run_s'])} s", flush=True)

    results = {}
    for name, rs in rounds.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "raw"}
        med["full_packets"] = rs[0]["raw"]["runs"][1]["packets"]
        results[name] = {**med, "rounds": rs}
    local = results["local"]
    full_packets = local["full_packets"]
    bytes_per_packet = full_bytes / full_packets
    best = min(("ray-1x2", "ray-2x1"), key=lambda k: results[k]["scoring_wall_per_packet_s"])
    even = {}
    for with_start in (False, True):
        for n in NODES:
            p = break_even(local, results[best], results["ray-2node"], n, with_start)
            key = f"{n}-nodes-{'cold' if with_start else 'running'}"
            even[key] = {"packets": p, "bytes": None if p is None else p * bytes_per_packet}

    def size(b):
        for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if b >= scale:
                return f"{b / scale:.1f} {unit}"
        return f"{b:.0f} B"

    cpu_model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    avx512 = "avx512f" in open("/proc/cpuinfo").read()
    lines = [
        f"machine: {cpu_model} ({'AVX-512' if avx512 else 'no AVX-512'}), {os.cpu_count()} cores, {platform.machine()};"
        f" shared with other work: load average {min(load):.1f}-{max(load):.1f} (1 min) during the run",
        f"model: {model.name}; full input {args.files} synthetic pcaps x {args.packets} packets ({full_packets} scored,"
        f" {full_bytes} bytes: {bytes_per_packet:.0f} bytes per scored packet), small input {args.small} packets;"
        f" batch {args.batch}; medians of {args.rounds} interleaved rounds",
        "wall seconds (fixed: one run's fixed wall cost from its small and full runs; its parts measured apart):",
        f"{'config':9} {'pkt/s':>6} {'us/pkt':>7} {'score':>6} {'driver':>6} {'fixed':>6} {'cluster':>7} {'join':>5} "
        f"{'actor':>6} {'model':>6} {'kernels':>7} {'CPU us/pkt':>10}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:9} {r['packets_per_s']:>6.0f} {1e6 * r['wall_per_packet_s']:>7.0f} "
            f"{1e6 * r['scoring_wall_per_packet_s']:>6.0f} {1e6 * r['driver_wall_per_packet_s']:>6.0f} "
            f"{r['fixed_wall_s']:>6.2f} {r['cluster_start_s']:>7.2f} {r['join_s']:>5.2f} {r['actor_start_s']:>6.2f} "
            f"{r['model_load_s']:>6.2f} {r['kernels_s']:>7.2f} {1e6 * r['cpu_per_packet_s']:>10.0f}"
        )
    lines += [
        "us/pkt: wall per packet (score: the actors' or the local chain's scoring; driver: the rest, the output"
        " assembled from the parts); fixed: the rest of a run's wall, actor start, model load and kernels included;"
        " cluster: starting Ray (ray-2node: both `ray start`s); join: a driver connecting to the running cluster;"
        " actor: pool creation to an actor's __init__; model, kernels: inside each actor (local: this process)",
        f"ray-2node: units scored on {results['ray-2node'].get('nodes_used', 0):.0f} nodes; both share this"
        " machine's cores, so its per-packet figures show the cost of the second node's machinery, not a speed-up",
        f"N nodes beat one machine (each node like this one running {best}, units spread evenly, actors starting in"
        " parallel; the driver's per-packet share is not divided; cluster start and join as ray-2node's):",
    ]
    for n in NODES:
        cells = []
        for state in ("running", "cold"):
            e = even[f"{n}-nodes-{state}"]
            what = "never" if e["packets"] is None else f"{e['packets']:,.0f} packets ({size(e['bytes'])})"
            cells.append(f"cluster {'running' if state == 'running' else 'started for the run'}: above {what}")
        lines.append(f"  {n} node{'s' if n > 1 else ' '}: " + "; ".join(cells))
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
            "rounds": args.rounds,
            "batch": args.batch,
            "local_threads": args.threads,
            "ray_cpus": args.ray_cpus,
            "full_bytes": full_bytes,
            "bytes_per_packet": bytes_per_packet,
            "load_average": load,
            "node_config": best,
        }
        out = {**meta, "break_even": even, "results": results}
        (args.save / "distributed.json").write_text(json.dumps(out, indent=2) + "\n")
        (args.save / "distributed.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
