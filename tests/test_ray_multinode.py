"""Ray on more than one node, run as a user runs it: a head and a second node started as separate processes
(`ray start --head`, `ray start --address`), `pktnin score --executor ray` as a command; the README's cluster
commands as written; the second node killed mid-run, the output still the local run's rows.

Both nodes run on this machine, each with its own temporary folder, ports and CPUs; every process they start is
killed at the end (by process id: `ray stop` would stop every Ray on the machine). Skipped, saying why, when Ray
or its command line is not installed, or when a node does not start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from onnx_fixtures import tiny_model
from proc_tree import kill_tree

from pktnin.synth import write_synthetic_capture

pytest.importorskip("ray", reason="the ray extra is not installed")
RAY = shutil.which("ray")
PKTNIN = shutil.which("pktnin")
pytestmark = pytest.mark.skipif(
    RAY is None or PKTNIN is None, reason="the `ray` or `pktnin` command is not on PATH (pip install 'pktnin[ray]')"
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Web", "VoIP", "Chat", "Video"]
START_S = 90  # a node that has not started by then is taken as one that cannot start here
RUN_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A Ray head and worker nodes on this machine, each a `ray start --block` process with its own folder."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.nodes: list[subprocess.Popen] = []
        self.address = ""
        self.dashboard = ""

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        temp = self.root / name
        temp.mkdir()
        log = temp / "start.log"
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--temp-dir", str(temp), "--disable-usage-stats",
             "--dashboard-agent-listen-port", str(free_port()), *args],
            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.nodes.append(proc)
        deadline = time.monotonic() + START_S
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"Ray node {name} did not start here: {log.read_text()[-1500:]}")
            time.sleep(0.3)
        return proc

    def start_head(self, cpus: int) -> None:
        port, dash = free_port(), free_port()
        self.address, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        # A dead node is declared within seconds rather than Ray's default 15 s or more (the test's time only).
        env = {**self.env, "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
               "RAY_health_check_timeout_ms": "1000"}  # fmt: skip
        self._start("head", ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--ray-client-server-port", str(free_port()), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dash), "--num-cpus", str(cpus),
                             "--resources", '{"head_node": 1}'], env)  # fmt: skip

    def add_node(self, cpus: int) -> subprocess.Popen:
        return self._start(f"node{len(self.nodes)}", ["--address", self.address, "--node-ip-address", "127.0.0.1",
                                                      "--num-cpus", str(cpus), "--resources", '{"second_node": 1}'],
                           self.env)  # fmt: skip

    def stop(self) -> None:
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                kill_tree(proc)


@pytest.fixture(scope="module")
def root():
    path = Path(tempfile.mkdtemp(prefix="pktnin-ray-", dir="/tmp"))  # short: Ray's socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def env(root) -> dict[str, str]:
    """The environment of every command: the code under test, a private cache, and no Ray token: a head started
    where ~/.ray/auth_token exists would ask for it, and nodes started as here would not send it."""
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, "PKTNIN_CACHE_DIR": str(root / "cache"),
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip


@pytest.fixture(scope="module")
def captures(root) -> Path:
    folder = root / "captures"
    folder.mkdir()
    for i in range(40):  # below --split-bytes each: a unit each, many units to share
        write_synthetic_capture(folder / f"site{i:02}.pcap", 800, seed=i)
    return folder


@pytest.fixture(scope="module")
def model(root) -> Path:
    return tiny_model(root / "tiny.onnx", CLASSES, seed=5)


def pktnin(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PKTNIN, *args], env=env, capture_output=True, text=True, timeout=RUN_S, **kw)


@pytest.fixture(scope="module")
def local_rows(root, captures, model, env):
    out = root / "local.parquet"
    r = pktnin(["score", str(captures), "--model", str(model), "--out", str(out), "--no-progress"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    return pq.read_table(out)


@pytest.fixture(scope="module")
def cluster(root, env):
    c = Cluster(root, env)
    try:
        c.start_head(cpus=2)
        c.add_node(cpus=1)
        yield c
    finally:
        c.stop()


def test_readme_cluster_commands_as_written(cluster, captures, model, local_rows, root, env):
    """`pktnin score --executor ray --ray-address auto` on the head, and the same through `ray job submit`
    (RAY_ADDRESS names the cluster `auto` joins: other Rays may run on this machine)."""
    env = {**env, "RAY_ADDRESS": cluster.address}
    out = root / "auto.parquet"
    r = pktnin(["score", "--executor", "ray", "--ray-address", "auto", "--actors", "8", str(captures),
                "--out", str(out), "--model", str(model), "--no-progress"], env)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert pq.read_table(out).equals(local_rows)

    out = root / "job.parquet"
    r = subprocess.run(
        [RAY, "job", "submit", "--address", cluster.dashboard, "--", "pktnin", "score", "--executor", "ray",
         "--ray-address", "auto", str(captures), "--out", str(out), "--model", str(model), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=RUN_S,
    )  # fmt: skip
    assert r.returncode == 0 and "succeeded" in r.stdout, r.stdout + r.stderr
    assert pq.read_table(out).equals(local_rows)


def _finished(parts: Path) -> dict[str, str]:
    """Units finished so far: unit id -> the node that scored it (from the summaries beside the parts)."""
    done = {}
    for path in (parts / "_units").glob("*.summary.json"):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced
            continue
        done[summary["id"]] = summary["node"]
    return done


def test_second_node_killed_mid_run_output_is_the_local_one(cluster, captures, model, local_rows, root, env):
    """Actors on both nodes (each unit's summary names its node); the second node's raylet and workers killed
    once both have scored units, before all are done; the head scores the rest (the lost actor restarted there,
    its unit retried) and the output is the local run's."""
    out, summary, log = root / "killed.parquet", root / "killed-summary.json", root / "killed.log"
    parts = out.with_name(out.name + ".parts")
    args = ["score", str(captures), "--model", str(model), "--out", str(out), "--summary", str(summary),
            "--executor", "ray", "--ray-address", cluster.address, "--actors", "2", "--split-bytes", "100k",
            "--no-progress"]  # fmt: skip
    with open(log, "w") as sink:
        run = subprocess.Popen([PKTNIN, *args], env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + RUN_S
        while len(set(_finished(parts).values())) < 2:  # both nodes have scored a unit
            assert run.poll() is None, f"the run ended before both nodes scored a unit: {log.read_text()}"
            assert time.monotonic() < deadline, "the second node scored no unit"
            time.sleep(0.1)
        kill_tree(cluster.nodes[1])
        killed_at = _finished(parts)  # after the kill: the second node can add none
        run.wait(timeout=RUN_S)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, log.read_text()
    assert pq.read_table(out).equals(local_rows)  # every column, every row, in order

    result = json.loads(summary.read_text())
    assert len(killed_at) < result["units"]  # the kill came before the end
    by_node = result["units_by_node"]
    assert len(by_node) == 2 and sum(by_node.values()) == result["units"], by_node  # both nodes scored units
    # After the kill only the head scored: the second node is the one whose count stopped at the kill.
    second = [node for node in by_node if by_node[node] == sum(1 for n in killed_at.values() if n == node)]
    head = [node for node in by_node if node not in second]
    assert len(second) == 1 and len(head) == 1, (by_node, killed_at)
    assert by_node[head[0]] > sum(1 for n in killed_at.values() if n == head[0])
