"""`--decide flow` through the whole scoring path: per-packet and flow models, any chunking, local and sharded."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from onnx_fixtures import reference_probs, tiny_model
from onnx_fixtures import tiny_flow_model as _tiny_flow_model
from packetgen import ethernet, ipv4, ipv6, mixed_traffic, tcp, udp
from pcapgen import write_pcap, write_pcapng
from typer.testing import CliRunner

import pktnin
from pktnin.api import open_model
from pktnin.cli import app
from pktnin.engine.runners import open_runner
from pktnin.errors import OptionError
from pktnin.flow_decide import FlowParams
from pktnin.packets import find_captures, iter_packets
from pktnin.scoring import ScoreOptions, cpu_stages, score_files
from pktnin.scoring.run import run_units
from pktnin.scoring.unit_run import LocalExecutor

CLASSES = ["Web", "VoIP", "Chat", "Video"]
T0 = 1_700_000_000 * 10**9


pytestmark = pytest.mark.usefixtures("private_cache")


def flows_capture(seed: int, n_flows: int = 40) -> list[tuple[int, bytes]]:
    """Flows of 1 to ~60 packets (heavy-tailed), both directions, interleaved; the same 5-tuple on two VLANs,
    IPv6 and UDP among them."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.pareto(1.0, n_flows).astype(int) + 1, 60)
    events = []
    for f, size in enumerate(sizes):
        start = int(rng.integers(0, 10**9))
        for j in range(size):
            events.append((start + j * int(rng.integers(1, 10**7)), f, j))
    events.sort()
    out = []
    for ts, f, j in events:
        payload = rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
        fwd = j % 3 != 1
        a, b, pa_, pb = f"10.1.{f % 4}.{f // 4 + 1}", "192.0.2.9", 40000 + f % 5, 443
        sa, da, sp, dp = (a, b, pa_, pb) if fwd else (b, a, pb, pa_)
        if f % 7 == 3:
            pkt = ethernet(ipv6(udp(sp, dp, payload), next_header=17, src=f"2001:db8::{f:x}", dst="2001:db8::99"))
        elif f % 5 == 2:
            pkt = ethernet(ipv4(udp(sp, dp, payload), proto=17, src=sa, dst=da))
        else:  # flows 0..4 differ only by their VLAN from flows 20..24: different flows
            pkt = ethernet(ipv4(tcp(sp, dp, payload), src=sa, dst=da), vlans=[(0x8100, 10 + (f >= 20))])
        out.append((T0 + seed * 10**10 + ts, pkt))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", CLASSES, seed=11)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("caps")
    write_pcap(root / "a.pcap", flows_capture(1), nanosecond=True)
    write_pcap(root / "b.pcap", mixed_traffic(3, 300, flows=5))
    # pcapng: two interfaces, the flows' packets spread over both, and a second section.
    pk = flows_capture(2)
    epb = [("epb", i % 2, ts, d) for i, (ts, d) in enumerate(pk)]
    half = len(epb) // 2
    write_pcapng(root / "c.pcapng", [{"interfaces": [(1, 9), (1, 6)], "records": epb[:half]},
                                    {"interfaces": [(1, 9), (1, 9)], "records": epb[half:]}])  # fmt: skip
    return find_captures([root])


def reference(files, model, k: int) -> dict[str, np.ndarray]:
    """Per row, in output order: the mean of the model's probabilities over the first k rows of its (file,
    flow_key), and k or the flow's size. Plain numpy on iter_packets' rows (no timeout is reached here)."""
    rows, keys, names = [], [], []
    for b in iter_packets(files):
        rows.append(b.rows)
        keys.append(b.meta["flow_key"])
        names += [b.file_index] * len(b)
    probs = reference_probs(model, np.concatenate(rows)).astype(np.float64)
    group = np.stack([np.asarray(names, np.uint64), np.concatenate(keys)], axis=1)
    _, inverse = np.unique(group, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    rank = np.zeros(len(inverse), np.int64)
    seen: dict[int, int] = {}
    for i, g in enumerate(inverse.tolist()):  # position of each row in its flow
        rank[i] = seen.get(g, 0)
        seen[g] = rank[i] + 1
    first = rank < k
    sums = np.zeros((inverse.max() + 1, probs.shape[1]))
    np.add.at(sums, inverse[first], probs[first])
    used = np.bincount(inverse[first])
    return {"probs": (sums / used[:, None])[inverse], "used": used[inverse], "row_probs": probs,
            "file": [str(files[i]) for i in names]}  # fmt: skip


def _opts(out: Path, model: Path, **kw) -> ScoreOptions:
    kw.setdefault("batch", 16)
    return ScoreOptions(out=out, flows_out=out.with_name("flows.parquet"), probs=True, model_id=str(model), **kw)


def _score(files, model, out, **kw):
    return score_files(files, open_runner(model, "onnxruntime"), _opts(out, model, **kw))


@pytest.mark.parametrize("k", [1, 3])
def test_every_row_of_a_flow_gets_the_mean_of_its_first_k(inputs, model, tmp_path, k):
    out = tmp_path / "p.parquet"
    _score(inputs, model, out, decide="flow", flow=FlowParams(packets=k))
    t = pq.read_table(out)
    want = reference(inputs, model, k)
    got = np.stack([t[f"p_{c}"].to_numpy() for c in CLASSES], axis=1)
    np.testing.assert_allclose(got, want["probs"], rtol=1e-5, atol=1e-6)
    assert t["decided_by"].unique().to_pylist() == ["flow"] and t["file"].to_pylist() == want["file"]
    assert np.array_equal(t["decision_packets"].to_numpy(), want["used"])
    assert t["label"].to_pylist() == [CLASSES[i] for i in want["probs"].argmax(axis=1)]
    assert pq.read_schema(out).metadata[b"pktnin.decide"] == b"flow"
    assert pq.read_schema(out).metadata[b"pktnin.decide_packets"] == str(k).encode()
    flows = pq.read_table(out.with_name("flows.parquet"))
    assert flows["decided_by"].unique().to_pylist() == ["flow"]
    assert flows["packets"].to_numpy().sum() == t.num_rows
    assert (flows["decision_packets"].to_numpy() == np.minimum(flows["packets"].to_numpy(), k)).all()


def test_packet_mode_is_every_packet_alone(inputs, model, tmp_path):
    out = tmp_path / "p.parquet"
    _score(inputs, model, out)
    t = pq.read_table(out)
    want = reference(inputs, model, 1)["row_probs"]
    np.testing.assert_allclose(np.stack([t[f"p_{c}"].to_numpy() for c in CLASSES], axis=1), want, rtol=1e-5)
    assert t["decided_by"].unique().to_pylist() == ["packet"] and (t["decision_packets"].to_numpy() == 1).all()
    assert pq.read_schema(out).metadata[b"pktnin.decide"] == b"packet"


def test_same_rows_whatever_the_batch_chunk_and_window(inputs, model, tmp_path, monkeypatch):
    params = FlowParams(packets=4, pending_rows=50, max_flows=16)  # small limits: budget and eviction at work
    first = tmp_path / "a" / "p.parquet"
    _score(inputs, model, first, decide="flow", flow=params, batch=512)
    monkeypatch.setattr(cpu_stages, "READ_CHUNK", 7)
    other = tmp_path / "b" / "p.parquet"
    source = functools.partial(iter_packets, reader_kwargs={"window_bytes": 4096})
    score_files(inputs, open_runner(model, "onnxruntime"), _opts(other, model, decide="flow", flow=params, batch=5),
                source=source)  # fmt: skip
    a, b = pq.read_table(first), pq.read_table(other)
    assert a.equals(b)
    assert pq.read_table(first.with_name("flows.parquet")).equals(pq.read_table(other.with_name("flows.parquet")))
    assert (a["decision_packets"].to_numpy() < 4).any()  # the limits decided some flows early


def test_a_flow_cut_by_units_restarts_in_each(inputs, model, tmp_path):
    whole = tmp_path / "whole" / "p.parquet"
    _score(inputs, model, whole, decide="flow", flow=FlowParams(packets=2))
    out = tmp_path / "cut" / "p.parquet"
    opts = _opts(out, model, decide="flow", flow=FlowParams(packets=2), unit_bytes=8000)
    run_units(inputs, opts, CLASSES, LocalExecutor(open_runner(model, "onnxruntime"), opts), step_records=5)
    flows = pq.read_table(out.with_name("flows.parquet")).to_pandas()
    want = pq.read_table(whole.with_name("flows.parquet")).to_pandas()
    # Units are byte ranges of the big files: a flow crossing a cut is decided again, one flow row per unit.
    assert len(flows) > len(want) and flows["packets"].sum() == want["packets"].sum()
    rows = pq.read_table(out)
    assert rows.num_rows == pq.read_table(whole).num_rows and (rows["decision_packets"].to_numpy() <= 2).all()


def test_api_and_cli(inputs, model, tmp_path):
    table = pktnin.score(inputs, model, probs=True, decide="flow", flow_packets=2, batch=8)
    want = reference(inputs, model, 2)
    np.testing.assert_allclose(np.stack([table[f"p_{c}"].to_numpy() for c in CLASSES], axis=1), want["probs"],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    out = tmp_path / "p.parquet"
    args = ["score", *map(str, inputs), "--model", str(model), "--out", str(out), "--no-progress", "-q"]
    result = CliRunner().invoke(app, [*args, "--decide", "flow", "--flow-packets", "2", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert (
        pq.read_table(out)
        .select(["label", "decided_by", "decision_packets"])
        .equals(table.select(["label", "decided_by", "decision_packets"]))
    )
    bad = CliRunner().invoke(app, [*args, "--flow-packets", "2", "--force"])
    assert bad.exit_code == 2 and "--decide flow" in bad.output
    bad = CliRunner().invoke(app, [*args, "--decide", "flows", "--force"])
    assert bad.exit_code == 2 and "decide" in bad.output


def flow_model(path: Path, k: int, seed: int = 0) -> Path:
    return _tiny_flow_model(path, CLASSES, k, seed)


def test_flow_model_through_the_whole_path(inputs, tmp_path):
    from pktnin.flow_features import first_k_index, gather_rows, pkt_feats

    k = 3
    path = flow_model(tmp_path / "flow.onnx", k)
    out = tmp_path / "p.parquet"
    result = pktnin.score_to_files(inputs, out, path, flows=tmp_path / "flows.parquet", probs=True, batch=4)
    assert result.packets > 0
    t = pq.read_table(out)
    assert t["decided_by"].unique().to_pylist() == ["flow"]
    # numpy copy of the model on the first k rows of each (file, flow_key)
    w = np.load(path.with_suffix(".npz"))
    want = []
    for f in inputs:
        batches = list(iter_packets([f]))
        if not batches:
            continue
        rows = np.concatenate([b.rows for b in batches])
        meta = {n: np.concatenate([b.meta[n] for b in batches]) for n in ("flow_key", "ts_ns", "src_addr", "src_port")}
        flows, index = first_k_index(meta["flow_key"], k)
        feats = pkt_feats(rows, meta["ts_ns"], meta["src_addr"], meta["src_port"], index)
        x = gather_rows(rows, index).astype(np.float32) / 255
        logits = x.mean(axis=1) @ w["w_rows"] + feats.reshape(len(flows), -1) @ w["w_feats"]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        position = {int(v): i for i, v in enumerate(flows)}
        want.append(p[[position[int(key)] for key in meta["flow_key"]]])
    got = np.stack([t[f"p_{c}"].to_numpy() for c in CLASSES], axis=1)
    np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-4, atol=1e-5)
    with pytest.raises(OptionError, match="flow model"):
        pktnin.score(inputs, path, decide="packet")
    with pytest.raises(OptionError, match="first 3 packets"):
        pktnin.score(inputs, path, flow_packets=2)


try:
    import ray
except ImportError:  # the ray extra is not installed
    ray = None


@pytest.mark.skipif(ray is None, reason="the ray extra is not installed")
def test_ray_rows_equal_local_rows_in_flow_mode(inputs, model, tmp_path):
    import os

    from pktnin.distributed.ray_engine import RayExecutor, RunnerSpec, ray_session

    tests = Path(__file__).resolve().parent
    fmodel = flow_model(tmp_path / "flow.onnx", 2)
    pythonpath = os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})  # fmt: skip
    try:
        with ray_session():
            for name, m, flow in (("packet-model", model, FlowParams(packets=3, pending_rows=40)),
                                  ("flow-model", fmodel, FlowParams(packets=2))):  # fmt: skip
                # Small units: big files are cut, small ones grouped; the flow state resets at the same places.
                local = tmp_path / name / "local" / "p.parquet"
                runner = open_model(m, "onnxruntime", batch=16, precision="fp32")[0]
                score_files(inputs, runner, _opts(local, m, decide="flow", flow=flow, unit_bytes=8000))
                out = tmp_path / name / "ray" / "p.parquet"
                opts = _opts(out, m, decide="flow", flow=flow, unit_bytes=8000)
                executor = RayExecutor(RunnerSpec(str(m), "onnxruntime", 16), opts, actors=2, cpus_per_actor=0.5)
                run_units(inputs, opts, CLASSES, executor)
                assert pq.read_table(out).equals(pq.read_table(local)), name
                assert pq.read_table(out.with_name("flows.parquet")).equals(
                    pq.read_table(local.with_name("flows.parquet"))
                ), name
    finally:
        ray.shutdown()


def test_bench_measures_decision_modes_interleaved(tmp_path, model):
    from pktnin.synth import write_synthetic_capture

    capture = write_synthetic_capture(tmp_path / "cap.pcap", packets=400, seed=2)
    args = ["bench", str(capture), "--model", str(model), "--runs", "2", "--precision", "fp32", "--json"]
    result = CliRunner().invoke(app, [*args, "--decide", "packet,flow", "--flow-packets", "1,4"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    modes = [(m["decide"], m["flow_packets"]) for m in report["modes"]]
    assert modes == [("packet", None), ("flow", 1), ("flow", 4)]
    rows = report["modes"][0]["end_to_end"]["packets"]
    for m in report["modes"]:
        assert m["end_to_end"]["packets"] == rows and len(m["end_to_end"]["runs_packets_per_s"]) == 2
    assert all(m["vs_first"] > 0 for m in report["modes"][1:])
    bad = CliRunner().invoke(app, [*args, "--decide", "flow", "--flow-packets", "0"])
    assert bad.exit_code == 2


def test_bench_measures_a_flow_model_in_its_own_mode(inputs, tmp_path):
    path = flow_model(tmp_path / "flow.onnx", 3)
    args = ["bench", *map(str, inputs), "--model", str(path), "--runs", "1", "--batch", "8", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(m["decide"], m["flow_packets"]) for m in report["modes"]] == [("flow", 3)]
    assert report["modes"][0]["end_to_end"]["packets_per_s"] > 0
    for other in (["--decide", "packet"], ["--flow-packets", "2"]):  # a flow model decides per flow with its own K
        bad = CliRunner().invoke(app, [*args, *other])
        assert bad.exit_code == 2 and "flow model" in bad.output, bad.output
