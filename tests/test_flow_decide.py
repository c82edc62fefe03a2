"""The flow table and decision logic (pktnin.flow_decide) against a plain-Python model of the same rules."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from pktnin.flow_decide import FlowDecider, FlowParams

NS = 1_000_000_000
C = 3


def reference(keys, ts, probs, p: FlowParams, flow_probs=None):
    """Per-row decision, rows used and flow number, by the rules in pktnin.flow_decide's docstring, one row at a
    time with dicts. `probs` [n,C]: per-row model output; `flow_probs(rows) -> [C]`: a flow model instead."""
    idle, active = int(p.idle_s * NS), int(p.active_s * NS)
    table: OrderedDict = OrderedDict()  # key -> flow dict, least recently seen first
    flows = []
    row_flow = np.empty(len(keys), np.int64)
    now = None

    def decide(f):
        if not f["decided"]:
            f["decided"] = True
            used = f["rows"]
            f["probs"] = flow_probs(used) if flow_probs is not None else probs[used].astype(np.float64).mean(axis=0)

    def end(key):
        decide(table.pop(key))

    for i, (k, t) in enumerate(zip(keys.tolist(), ts.tolist())):
        now = t if now is None else max(now, t)
        while table and now - next(iter(table.values()))["last"] > idle:
            end(next(iter(table)))
        f = table.get(k)
        if f is not None and (now - f["last"] > idle or now - f["first"] > active):
            end(k)
            f = None
        if f is None:
            if len(table) == p.max_flows:
                end(next(iter(table)))
            f = {"no": len(flows), "first": t, "last": t, "first_row": i, "rows": [], "decided": False}
            flows.append(f)
            table[k] = f
        else:
            f["last"] = max(f["last"], t)
            table.move_to_end(k)
        row_flow[i] = f["no"]
        if not f["decided"] and len(f["rows"]) < p.packets:
            f["rows"].append(i)
            if len(f["rows"]) == p.packets:
                decide(f)
        for g in flows:  # budget: oldest undecided flow first
            if not g["decided"]:
                if i + 1 - g["first_row"] > p.pending_rows:
                    decide(g)
                    continue
                break
    for f in flows:
        decide(f)
    out = np.stack([flows[n]["probs"] for n in row_flow]).astype(np.float32) if len(keys) else np.zeros((0, C))
    used = np.array([len(flows[n]["rows"]) for n in row_flow], dtype=np.int32)
    return out, used, row_flow


def stream(seed, n=3000, n_keys=60, jitter=False):
    rng = np.random.default_rng(seed)
    # Heavy-tailed key popularity, bursts of time with gaps that cross the idle timeout.
    weights = 1.0 / np.arange(1, n_keys + 1) ** 1.2
    keys = rng.choice(np.arange(1000, 1000 + n_keys, dtype=np.uint64), size=n, p=weights / weights.sum())
    steps = rng.choice([1_000, 1_000_000, 50 * NS], size=n, p=[0.6, 0.39, 0.01])
    ts = np.cumsum(steps).astype(np.int64)
    if jitter:  # timestamps going backwards a little, as merged captures do
        ts = ts - rng.integers(0, 5_000_000, size=n)
    probs = rng.dirichlet(np.ones(C), size=n).astype(np.float32)
    return keys, ts, probs


def run(keys, ts, probs, p, chunks, flow_model=None, chunk=8192):
    """Rows through a FlowDecider cut at `chunks` (sizes), with per-row probs or a flow model function."""
    d = FlowDecider(C, p, flow_model=flow_model is not None, chunk=chunk)
    meta = {"flow_key": keys, "ts_ns": ts, "frame": np.arange(len(keys)),
            "src_addr": np.zeros((len(keys), 16), np.uint8), "src_port": np.zeros(len(keys), np.uint16)}  # fmt: skip
    rows = np.zeros((len(keys), 1500), np.uint8)
    rows[:, 0] = np.arange(len(keys)) % 251  # which row is which, for the flow model
    rows[:, 1] = (np.arange(len(keys)) // 251) % 251
    released = []
    engine_rows = 0

    def feed(plan):
        nonlocal engine_rows
        if flow_model is not None:
            out = flow_model(plan.flow_rows, plan.flow_meta["present"])
        else:
            frames = plan.meta["frame"][plan.send] if plan.n else np.zeros(0, np.int64)
            out = probs[frames]
            engine_rows += len(frames)
        released.extend(d.resolve(plan, out))

    lo = 0
    for size in chunks:
        hi = min(len(keys), lo + size)
        sl = slice(lo, hi)
        for plan in d.assign(rows[sl], {k: v[sl] for k, v in meta.items()}):
            feed(plan)
        lo = hi
        if lo == len(keys):
            break
    feed(d.finish())
    assert d.held_rows == 0
    frames = np.concatenate([r.meta["frame"] for r in released])
    assert np.array_equal(frames, np.arange(len(keys))), "rows come out once each, in order"
    return (np.concatenate([r.probs for r in released]), np.concatenate([r.decision_packets for r in released]),
            np.concatenate([r.flow for r in released]), engine_rows)  # fmt: skip


PARAMS = [
    FlowParams(packets=1),
    FlowParams(packets=4),
    FlowParams(packets=4, idle_s=10.0, active_s=40.0),
    FlowParams(packets=3, max_flows=8),
    FlowParams(packets=8, pending_rows=20),
    FlowParams(packets=4, idle_s=10.0, max_flows=5, pending_rows=7),
]


@pytest.mark.parametrize("p", PARAMS, ids=str)
@pytest.mark.parametrize("jitter", [False, True])
def test_matches_reference_for_any_chunking(p, jitter):
    keys, ts, probs = stream(1, jitter=jitter)
    want, used, flows = reference(keys, ts, probs, p)
    for chunks in ([len(keys)], [1] * len(keys), [7, 300, 1, 64] * 200):
        got, got_used, got_flows, engine_rows = run(keys, ts, probs, p, chunks, chunk=50)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert np.array_equal(got_used, used)
        assert np.array_equal(got_flows, flows)
        _, first = np.unique(flows, return_index=True)
        assert engine_rows == int(used[first].sum()), "each flow's used rows, and no other, reach the engine"


def test_flow_model_gets_the_first_rows_of_each_flow():
    keys, ts, probs = stream(2, n=1500)
    p = FlowParams(packets=3, idle_s=10.0, max_flows=6, pending_rows=30)
    weights = np.random.default_rng(3).normal(size=(2 * 251, C))

    def model_on_rows(rows_idx):  # the flow model, given the rows' unit indices
        x = np.zeros(2 * 251)
        for r in rows_idx:
            x[r % 251] += 1.0
            x[251 + (r // 251) % 251] += 1.0
        z = np.exp(x @ weights / 3)
        return z / z.sum()

    def flow_model(flow_rows, present):
        out = np.zeros((len(flow_rows), C), np.float32)
        for j in range(len(flow_rows)):
            idx = [int(flow_rows[j, k, 0]) + 251 * int(flow_rows[j, k, 1]) for k in range(p.packets) if present[j, k]]
            assert all(not flow_rows[j, k].any() for k in range(p.packets) if not present[j, k])
            out[j] = model_on_rows(idx)
        return out

    want, used, flows = reference(keys, ts, probs, p, flow_probs=model_on_rows)
    for chunks in ([len(keys)], [13, 1, 200] * 200):
        got, got_used, got_flows, _ = run(keys, ts, probs, p, chunks, flow_model=flow_model, chunk=64)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert np.array_equal(got_used, used)


def test_budget_bounds_held_rows():
    keys, ts, probs = stream(4, n=4000, n_keys=400)
    p = FlowParams(packets=50, pending_rows=100)
    d = FlowDecider(C, p, chunk=10)
    meta = {"flow_key": keys, "ts_ns": ts, "frame": np.arange(len(keys))}
    most = 0
    for lo in range(0, len(keys), 10):
        for plan in d.assign(None, {k: v[lo : lo + 10] for k, v in meta.items()}):
            d.resolve(plan, probs[plan.meta["frame"][plan.send]])
            most = max(most, d.held_rows)
    assert 50 < most <= p.pending_rows


def test_full_table_evicts_least_recently_seen():
    p = FlowParams(packets=4, max_flows=2)
    keys = np.array([1, 2, 1, 3, 2, 1], dtype=np.uint64)  # 3 evicts 2 (1 was seen later); then 2 evicts 1
    ts = np.arange(6, dtype=np.int64)
    probs = np.eye(C, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    got, used, flows, _ = run(keys, ts, probs, p, [6])
    assert flows.tolist() == [0, 1, 0, 2, 3, 4]
    assert used.tolist() == [2, 1, 2, 1, 1, 1]
    np.testing.assert_allclose(got[0], [0.5, 0, 0.5])


@pytest.mark.parametrize("flow_model", [False, True])
def test_memory_per_flow_is_what_the_docs_say(flow_model):
    from pktnin.flow_decide import flow_state_bytes

    d = FlowDecider(C, FlowParams(max_flows=1000, pending_rows=100), flow_model=flow_model, chunk=50)
    per_slot = [v for v in vars(d).values() if isinstance(v, np.ndarray) and v.shape[:1] == (1000,)]
    hashed = d._h_slot.nbytes  # a power of two of 4-byte slots, at least 2 per flow
    assert sum(v.nbytes for v in per_slot) + 8 * 1000 == 1000 * flow_state_bytes(C, 4, flow_model)
    assert 8 * 1000 <= hashed < 16 * 1000


def test_pieces_of_a_unit_are_independent_and_resolves_may_lag():
    """end_piece() between pieces: each piece as if alone; plans resolved long after they were assigned."""
    p = FlowParams(packets=3, idle_s=10.0, max_flows=12, pending_rows=40)
    d = FlowDecider(C, p, chunk=64)
    streams = [stream(seed, n=700, n_keys=20) for seed in (8, 9, 10)]  # the same keys in every piece
    queued, released = [], []
    for keys, ts, probs in streams:
        meta = {"flow_key": keys, "ts_ns": ts, "frame": np.arange(len(keys))}
        for lo in range(0, len(keys), 90):
            queued += [(plan, probs) for plan in d.assign(None, {k: v[lo : lo + 90] for k, v in meta.items()})]
        queued.append((d.end_piece(), probs))
        if len(queued) > 9:  # resolve late, in order
            for plan, pr in queued:
                released += d.resolve(plan, pr[plan.meta["frame"][plan.send]] if plan.n else np.zeros((0, C)))
            queued = []
    for plan, pr in queued:
        released += d.resolve(plan, pr[plan.meta["frame"][plan.send]] if plan.n else np.zeros((0, C)))
    got = np.concatenate([r.probs for r in released])
    used = np.concatenate([r.decision_packets for r in released])
    want = [reference(keys, ts, probs, p) for keys, ts, probs in streams]
    np.testing.assert_allclose(got, np.concatenate([w[0] for w in want]), rtol=1e-6, atol=1e-7)
    assert np.array_equal(used, np.concatenate([w[1] for w in want]))
    assert [r.start for r in released] == list(np.cumsum([0] + [len(r.probs) for r in released[:-1]]))
