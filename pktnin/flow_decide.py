"""Flow decisions: the first K rows of each flow go to the engine, and the flow's decision labels all its rows.

One FlowDecider per unit of work (a file, or a shard of one on Ray), fed that unit's kept rows in order:

    plan = decider.assign(rows, meta)      which rows the engine must score (plan.send), or, for a flow model,
                                           the flows decided in this chunk (plan.flow_rows, plan.flow_feats)
    out = decider.resolve(plan, probs)     probs: the engine's output for plan.send rows (per-packet model) or
                                           for plan's flows (flow model); returns the rows whose flow's decision
                                           is now known, in input order (Released), possibly rows of earlier chunks
    plan = decider.finish()                at the unit's end: every flow still waiting is decided; resolve it too

Flow = rows of the unit sharing `flow_key` (bidirectional 5-tuple + VLAN), cut into flow instances by time:

- idle timeout: a flow not seen for `idle_s` of capture time ends (checked against the unit's clock, the
  largest timestamp seen so far); active timeout: a flow older than `active_s` ends at its next row. The
  same key coming back afterwards is a new flow (a new row of the flow table). Defaults are nfstream's.
- at most `max_flows` live flows: a new flow when the table is full evicts the least recently seen one
  (by arrival order, so the rule never depends on timestamps or timing).
- a flow is decided at its K-th row; a flow ending earlier (timeout, eviction, unit end) is decided with the
  rows it has. Rows of a flow before its decision are held (output order is kept, so rows of decided flows
  behind them wait too). When the held rows exceed `pending_rows`, the oldest undecided flow is decided with
  the rows it has: memory stays bounded and the rule depends on the row sequence only, never on chunk sizes
  or timing, so every chunking of the same unit gives the same rows.

The decision of a per-packet model is the mean of the probabilities of the flow's first n <= K rows; a flow
model gets the n rows and their packet features in one call ([F, K, 1500] rows, [F, K, 4] features, empty
slots zero). Rows after the decision get it without an engine call.

The per-row work is two numba passes over each chunk (assign before the engine, replay after it); Python
only handles whole chunks. Memory is allocated once per decider, whatever the traffic: per table slot
(`max_flows` of them) flow_state_bytes(C, K, flow_model) = 97 + 12 * C bytes (+ 8 * K with a flow model),
8 of them the hash index (up to 16 when `max_flows` is not a power of two): 313 bytes with 18 classes,
78 MiB for the default 262,144 flows; the held rows a ring of `pending_rows` +
chunk + 1 entries of 4 * C + 25 bytes (97 with 18 classes: 3.8 MiB by default), with a flow model 1,526 more
each for its rows and their metadata (63 MiB by default), beside the metadata of the chunks they belong to.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numba
import numpy as np

from pktnin.errors import OptionError
from pktnin.layout import ROW_LEN

NS = 1_000_000_000
# Per table slot: key, flow number, first and last time, first row (8 bytes each), rows seen and used, LRU
# links, free stack (4 each), decided flag (1); the replay's flow number, held-row list head and tail (8 each)
# and decision size (4); the hash index (at least 2 slots of 4 bytes per flow: a power of two, so up to 16).
SLOT_BYTES = 5 * 8 + 5 * 4 + 1 + 3 * 8 + 4 + 8


def flow_state_bytes(n_classes: int, flow_packets: int, flow_model: bool) -> int:
    """Bytes the table allocates per flow it can hold: fixed state, a running sum (float64) and a decision
    (float32) per class, and with a flow model the ring positions of its first K rows."""
    return SLOT_BYTES + 12 * n_classes + (8 * flow_packets if flow_model else 0)


@dataclass(frozen=True)
class FlowParams:
    packets: int = 4  # K: rows of a flow that reach the engine
    idle_s: float = 120.0
    active_s: float = 1800.0
    max_flows: int = 262144
    pending_rows: int = 32768

    def __post_init__(self) -> None:
        for name in ("packets", "max_flows", "pending_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise OptionError(f"flow {name} must be an integer of at least 1, got {value!r}")
        if not self.idle_s > 0 or not self.active_s > 0:
            raise OptionError(f"flow timeouts must be positive, got idle {self.idle_s}, active {self.active_s}")


@dataclass
class Plan:
    """What the engine must score for one chunk (see FlowDecider.assign)."""

    n: int  # rows in the chunk
    start: int  # unit row index of the chunk's first row
    slot: np.ndarray  # int32 [n] table slot of each row's flow
    flow: np.ndarray  # int64 [n] flow number in the unit (a key timed out and back is a new number)
    send: np.ndarray  # bool [n]: row goes to a per-packet model
    ev_at: np.ndarray  # int64 [E] decisions, in order: taken before row ev_at[e] of the chunk is replayed
    ev_slot: np.ndarray  # int32 [E]
    ev_flow: np.ndarray  # int64 [E]
    ev_used: np.ndarray  # int32 [E] rows the decision uses
    flow_rows: np.ndarray | None = None  # flow model: uint8 [E, K, 1500]
    flow_meta: dict[str, np.ndarray] | None = None  # flow model: ts_ns, src_addr, src_port [E, K, ...]
    meta: dict[str, np.ndarray] | None = None  # the chunk's metadata (kept until its rows are released)

    @property
    def flows_decided(self) -> int:
        return len(self.ev_at)


@dataclass
class Released:
    """Rows of the unit, consecutive and in order, with their flow's decision."""

    meta: dict[str, np.ndarray]
    probs: np.ndarray  # float32 [m, C]
    decision_packets: np.ndarray  # int32 [m]
    flow: np.ndarray  # int64 [m]
    start: int = 0  # unit row index of the first row


# Scalars of the assign pass, one int64 array so numba functions can update them.
S_LIVE, S_LRU_HEAD, S_LRU_TAIL, S_NEXT_FLOW, S_NOW, S_ROWS, S_FIFO_HEAD, S_FIFO_TAIL, S_FREE, S_HIGH = range(10)
N_SCALARS = 10


@numba.njit(cache=True, inline="always")
def _hash(key, mask):
    h = key * np.uint64(0x9E3779B97F4A7C15)
    return np.int64(h >> np.uint64(33)) & mask


@numba.njit(cache=True)
def _find(h_slot, t_key, key):
    mask = len(h_slot) - 1
    i = _hash(key, mask)
    while True:
        s = h_slot[i]
        if s < 0:
            return -1, i
        if t_key[s] == key:
            return s, i
        i = (i + 1) & mask


@numba.njit(cache=True)
def _unhash(h_slot, t_key, key):
    """Remove key from the linear-probing index, shifting later entries back (no tombstones)."""
    s, i = _find(h_slot, t_key, key)
    if s < 0:
        return
    mask = len(h_slot) - 1
    h_slot[i] = -1
    j = i
    while True:
        j = (j + 1) & mask
        s2 = h_slot[j]
        if s2 < 0:
            return
        home = _hash(t_key[s2], mask)
        # Move s2 into the hole at i when its home is not cyclically within (i, j].
        if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
            h_slot[i] = s2
            h_slot[j] = -1
            i = j


@numba.njit(cache=True)
def _lru_unlink(sc, t_prev, t_next, s):
    p = t_prev[s]
    q = t_next[s]
    if p >= 0:
        t_next[p] = q
    else:
        sc[S_LRU_HEAD] = q
    if q >= 0:
        t_prev[q] = p
    else:
        sc[S_LRU_TAIL] = p
    t_prev[s] = -1
    t_next[s] = -1


@numba.njit(cache=True)
def _lru_append(sc, t_prev, t_next, s):
    tail = sc[S_LRU_TAIL]
    t_prev[s] = tail
    t_next[s] = -1
    if tail >= 0:
        t_next[tail] = s
    else:
        sc[S_LRU_HEAD] = s
    sc[S_LRU_TAIL] = s


@numba.njit(cache=True)
def _decide(t_decided, t_flow, t_used, t_store, s, at, ev_at, ev_slot, ev_flow, ev_used, ev_store, ne):
    t_decided[s] = 1
    ev_at[ne] = at
    ev_slot[ne] = s
    ev_flow[ne] = t_flow[s]
    ev_used[ne] = t_used[s]
    if ev_store.shape[1] > 0:
        for k in range(ev_store.shape[1]):
            ev_store[ne, k] = t_store[s, k] if k < t_used[s] else -1
    return ne + 1


@numba.njit(cache=True)
def _assign(
    keys, ts, finish, k_packets, idle_ns, active_ns, pending, store_rows,
    sc, h_slot, t_key, t_flow, t_first_ts, t_last_ts, t_first_row, t_n, t_used, t_decided, t_prev, t_next,
    t_store, free, fifo_slot, fifo_flow,
    out_slot, out_flow, out_send, ev_at, ev_slot, ev_flow, ev_used, ev_store,
):  # fmt: skip
    """Pass 1 over a chunk: flow of each row, rows to score, decisions (events) in order. Returns the event count."""
    ne = 0
    n = len(keys)
    cap = len(t_key)
    fifo_len = len(fifo_slot)
    for i in range(n):
        t = ts[i]
        if t > sc[S_NOW]:
            sc[S_NOW] = t
        now = sc[S_NOW]
        # Idle flows at the head of the LRU list end (least recently seen first).
        while sc[S_LRU_HEAD] >= 0 and now - t_last_ts[sc[S_LRU_HEAD]] > idle_ns:
            s = sc[S_LRU_HEAD]
            if t_decided[s] == 0:
                ne = _decide(t_decided, t_flow, t_used, t_store, s, i, ev_at, ev_slot, ev_flow, ev_used, ev_store, ne)
            _unhash(h_slot, t_key, t_key[s])
            _lru_unlink(sc, t_prev, t_next, s)
            free[sc[S_FREE]] = s
            sc[S_FREE] += 1
            sc[S_LIVE] -= 1
        key = keys[i]
        s, _ = _find(h_slot, t_key, key)
        if s >= 0 and (now - t_last_ts[s] > idle_ns or now - t_first_ts[s] > active_ns):
            if t_decided[s] == 0:
                ne = _decide(t_decided, t_flow, t_used, t_store, s, i, ev_at, ev_slot, ev_flow, ev_used, ev_store, ne)
            _unhash(h_slot, t_key, key)
            _lru_unlink(sc, t_prev, t_next, s)
            free[sc[S_FREE]] = s
            sc[S_FREE] += 1
            sc[S_LIVE] -= 1
            s = -1
        if s < 0:
            if sc[S_LIVE] == cap:  # full: the least recently seen flow makes room
                v = sc[S_LRU_HEAD]
                if t_decided[v] == 0:
                    ne = _decide(t_decided, t_flow, t_used, t_store, v, i, ev_at, ev_slot, ev_flow, ev_used, ev_store,
                                 ne)  # fmt: skip
                _unhash(h_slot, t_key, t_key[v])
                _lru_unlink(sc, t_prev, t_next, v)
                free[sc[S_FREE]] = v
                sc[S_FREE] += 1
                sc[S_LIVE] -= 1
            sc[S_FREE] -= 1
            s = free[sc[S_FREE]]
            sc[S_LIVE] += 1
            if cap - sc[S_FREE] > sc[S_HIGH]:
                sc[S_HIGH] = cap - sc[S_FREE]  # slots are taken from 0 up: [0, high) were used
            t_key[s] = key
            _, hpos = _find(h_slot, t_key, key)
            h_slot[hpos] = s
            t_flow[s] = sc[S_NEXT_FLOW]
            sc[S_NEXT_FLOW] += 1
            t_first_ts[s] = t
            t_last_ts[s] = t
            t_first_row[s] = sc[S_ROWS]
            t_n[s] = 0
            t_used[s] = 0
            t_decided[s] = 0
            _lru_append(sc, t_prev, t_next, s)
            f = sc[S_FIFO_TAIL] % fifo_len
            fifo_slot[f] = s
            fifo_flow[f] = t_flow[s]
            sc[S_FIFO_TAIL] += 1
        else:
            if t > t_last_ts[s]:
                t_last_ts[s] = t
            _lru_unlink(sc, t_prev, t_next, s)
            _lru_append(sc, t_prev, t_next, s)
        send = t_decided[s] == 0 and t_n[s] < k_packets
        t_n[s] += 1
        out_slot[i] = s
        out_flow[i] = t_flow[s]
        out_send[i] = send
        if send:
            if store_rows:
                t_store[s, t_used[s]] = sc[S_ROWS]
            t_used[s] += 1
            if t_used[s] == k_packets:
                ne = _decide(t_decided, t_flow, t_used, t_store, s, i + 1, ev_at, ev_slot, ev_flow, ev_used, ev_store,
                             ne)  # fmt: skip
        sc[S_ROWS] += 1
        # Held rows over budget: the oldest undecided flow is decided with what it has.
        while sc[S_FIFO_HEAD] < sc[S_FIFO_TAIL]:
            f = sc[S_FIFO_HEAD] % fifo_len
            h = fifo_slot[f]
            if t_flow[h] != fifo_flow[f] or t_decided[h] != 0:
                sc[S_FIFO_HEAD] += 1
                continue
            if sc[S_ROWS] - t_first_row[h] <= pending:
                break
            ne = _decide(t_decided, t_flow, t_used, t_store, h, i + 1, ev_at, ev_slot, ev_flow, ev_used, ev_store, ne)
            sc[S_FIFO_HEAD] += 1
    if finish:  # the unit's end: every waiting flow, oldest first
        while sc[S_FIFO_HEAD] < sc[S_FIFO_TAIL]:
            f = sc[S_FIFO_HEAD] % fifo_len
            h = fifo_slot[f]
            if t_flow[h] == fifo_flow[f] and t_decided[h] == 0:
                ne = _decide(t_decided, t_flow, t_used, t_store, h, n, ev_at, ev_slot, ev_flow, ev_used, ev_store, ne)
            sc[S_FIFO_HEAD] += 1
    return ne


@numba.njit(cache=True)
def _replay(
    start, slots, flows, send, probs, flow_model, ev_at, ev_slot, ev_flow, ev_used, ev_probs,
    r_flow, r_sum, r_dec, r_dp, r_head, r_tail, ring_probs, ring_dp, ring_ready, ring_next,
):  # fmt: skip
    """Pass 2 over a chunk, after the engine: sums of the scored rows, decisions, and each row's output in the
    ring (written at once for a decided flow, else when its flow is decided)."""
    n = len(slots)
    n_ev = len(ev_at)
    n_classes = r_sum.shape[1]
    ring = len(ring_ready)
    e = 0
    k = 0
    for i in range(n + 1):
        while e < n_ev and ev_at[e] == i:
            s = ev_slot[e]
            if r_flow[s] != ev_flow[e]:  # cannot happen: a decided flow had at least one row replayed
                raise AssertionError("flow decided before its first row")
            used = ev_used[e]
            for c in range(n_classes):
                r_dec[s, c] = ev_probs[e, c] if flow_model else np.float32(r_sum[s, c] / used)
            r_dp[s] = used
            g = r_head[s]
            while g >= 0:
                p = g % ring
                for c in range(n_classes):
                    ring_probs[p, c] = r_dec[s, c]
                ring_dp[p] = used
                ring_ready[p] = 1
                g = ring_next[p]
            r_head[s] = -1
            r_tail[s] = -1
            e += 1
        if i == n:
            break
        s = slots[i]
        g = start + i
        p = g % ring
        if r_flow[s] != flows[i]:  # a new flow in this slot
            r_flow[s] = flows[i]
            r_dp[s] = 0
            r_head[s] = -1
            r_tail[s] = -1
            for c in range(n_classes):
                r_sum[s, c] = 0.0
        if send[i] and not flow_model:
            for c in range(n_classes):
                r_sum[s, c] += probs[k, c]
            k += 1
        ring_next[p] = -1
        if r_dp[s] > 0:
            for c in range(n_classes):
                ring_probs[p, c] = r_dec[s, c]
            ring_dp[p] = r_dp[s]
            ring_ready[p] = 1
        else:
            ring_ready[p] = 0
            if r_tail[s] >= 0:
                ring_next[r_tail[s] % ring] = g
            else:
                r_head[s] = g
            r_tail[s] = g


@numba.njit(cache=True)
def _drop_all(sc, h_slot, t_key, t_next, t_prev, free):
    """Remove every live flow (all decided): empty index, LRU list and table; every slot free again."""
    _clear_hash(sc, h_slot, t_key, t_next)
    s = sc[S_LRU_HEAD]
    while s >= 0:
        q = t_next[s]
        t_prev[s] = -1
        t_next[s] = -1
        s = q
    cap = len(free)
    high = sc[S_HIGH]
    for i in range(high):
        free[cap - 1 - i] = i
    sc[S_FREE] = cap
    sc[S_LIVE] = 0
    sc[S_LRU_HEAD] = -1
    sc[S_LRU_TAIL] = -1


@numba.njit(cache=True)
def _clear_hash(sc, h_slot, t_key, t_next):
    """Empty the hash index, touching only the clusters that hold the live flows."""
    mask = len(h_slot) - 1
    s = sc[S_LRU_HEAD]
    while s >= 0:
        i = _hash(t_key[s], mask)
        while h_slot[i] >= 0:
            h_slot[i] = -1
            i = (i + 1) & mask
        s = t_next[s]


class FlowDecider:
    """Flow state of one unit of work (see the module's docstring). `flow_model`: decisions come from a flow
    model (one probability vector per flow) rather than the mean of per-row probabilities. `chunk`: the
    largest chunk assign() takes in one pass (bigger chunks are cut)."""

    def __init__(self, n_classes: int, params: FlowParams, flow_model: bool = False, chunk: int = 8192) -> None:
        self.n_classes = n_classes
        self.params = params
        self.flow_model = flow_model
        self.chunk = chunk
        p = params
        cap = p.max_flows
        self.ring = p.pending_rows + chunk + 1  # held rows never span more (see the module docstring)
        h = 1
        while h < 2 * cap:
            h *= 2
        self._h_slot = np.full(h, -1, dtype=np.int32)
        self._t_key = np.zeros(cap, dtype=np.uint64)
        self._t_flow = np.full(cap, -1, dtype=np.int64)
        self._t_first_ts = np.zeros(cap, dtype=np.int64)
        self._t_last_ts = np.zeros(cap, dtype=np.int64)
        self._t_first_row = np.zeros(cap, dtype=np.int64)
        self._t_n = np.zeros(cap, dtype=np.int32)
        self._t_used = np.zeros(cap, dtype=np.int32)
        self._t_decided = np.zeros(cap, dtype=np.uint8)
        self._t_prev = np.full(cap, -1, dtype=np.int32)
        self._t_next = np.full(cap, -1, dtype=np.int32)
        self._t_store = np.zeros((cap, p.packets if flow_model else 0), dtype=np.int64)
        self._free = np.arange(cap - 1, -1, -1, dtype=np.int32)  # a stack: slot 0 is taken first
        self._fifo_slot = np.zeros(self.ring, dtype=np.int32)
        self._fifo_flow = np.zeros(self.ring, dtype=np.int64)
        self._sc = np.zeros(N_SCALARS, dtype=np.int64)
        # Replay side (after the engine).
        self._r_flow = np.full(cap, -1, dtype=np.int64)
        self._r_sum = np.zeros((cap, n_classes), dtype=np.float64)
        self._r_dec = np.zeros((cap, n_classes), dtype=np.float32)
        self._r_dp = np.zeros(cap, dtype=np.int32)
        self._r_head = np.full(cap, -1, dtype=np.int64)
        self._r_tail = np.full(cap, -1, dtype=np.int64)
        self._ring_probs = np.zeros((self.ring, n_classes), dtype=np.float32)
        self._ring_dp = np.zeros(self.ring, dtype=np.int32)
        self._ring_ready = np.zeros(self.ring, dtype=np.uint8)
        self._ring_next = np.full(self.ring, -1, dtype=np.int64)
        if flow_model:
            self._ring_rows = np.zeros((self.ring, ROW_LEN), dtype=np.uint8)
            self._ring_ts = np.zeros(self.ring, dtype=np.int64)
            self._ring_src_addr = np.zeros((self.ring, 16), dtype=np.uint8)
            self._ring_src_port = np.zeros(self.ring, dtype=np.uint16)
        self._held: deque[tuple[int, Plan]] = deque()  # (unit row of the chunk's first row, plan) not yet released
        self._start_unit()

    def _start_unit(self) -> None:
        self._sc[:] = 0
        self._sc[S_LRU_HEAD] = self._sc[S_LRU_TAIL] = -1
        self._sc[S_NOW] = np.iinfo(np.int64).min
        self._sc[S_FREE] = len(self._t_key)
        self._held.clear()
        self._released = 0  # unit rows released so far
        self._replayed = 0  # unit rows resolve() has replayed
        self._finished = False

    @property
    def rows(self) -> int:
        """Rows of the unit assigned so far."""
        return int(self._sc[S_ROWS])

    @property
    def live_flows(self) -> int:
        return int(self._sc[S_LIVE])

    @property
    def held_rows(self) -> int:
        return self.rows - self._released

    def assign(self, rows: np.ndarray | None, meta: dict[str, np.ndarray]) -> list[Plan]:
        """Plans for the next rows of the unit (one per piece of at most `chunk` rows). `rows` (uint8 [n,1500])
        is needed only with a flow model, which gets the rows of decided flows in the plans."""
        if self._finished:
            raise RuntimeError("assign after finish: a FlowDecider serves one unit of work")
        n = len(meta["flow_key"])
        plans = []
        for lo in range(0, n, self.chunk):
            hi = min(n, lo + self.chunk)
            piece = {k: v[lo:hi] for k, v in meta.items()}
            plans.append(self._assign(None if rows is None else rows[lo:hi], piece, False))
        return plans

    def end_piece(self) -> Plan:
        """The end of a piece of the unit (a file, or its byte range): a plan deciding every flow still waiting
        (resolve it like the others); the piece's flows are dropped and the clock starts again, so the next
        piece's rows start new flows. Flow and row numbers go on, so plans may still wait to be resolved."""
        plan = self._assign(None, None, True)
        _drop_all(self._sc, self._h_slot, self._t_key, self._t_next, self._t_prev, self._free)
        self._sc[S_NOW] = np.iinfo(np.int64).min
        return plan

    def finish(self) -> Plan:
        """The unit's end: a plan deciding every flow still waiting (resolve it like the others)."""
        plan = self._assign(None, None, True)
        self._finished = True
        return plan

    def _assign(self, rows, meta, finish: bool) -> Plan:
        p = self.params
        n = 0 if meta is None else len(meta["flow_key"])
        keys = np.empty(0, np.uint64) if meta is None else np.ascontiguousarray(meta["flow_key"], dtype=np.uint64)
        ts = np.empty(0, np.int64) if meta is None else np.ascontiguousarray(meta["ts_ns"], dtype=np.int64)
        start = self.rows
        # Decisions per chunk: at most two per row (K-th row, budget) and one per flow live or new (timeouts,
        # eviction, the unit's end).
        max_ev = 3 * n + self.live_flows + 1
        slot = np.empty(n, np.int32)
        flow = np.empty(n, np.int64)
        send = np.empty(n, np.bool_)
        ev_at = np.empty(max_ev, np.int64)
        ev_slot = np.empty(max_ev, np.int32)
        ev_flow = np.empty(max_ev, np.int64)
        ev_used = np.empty(max_ev, np.int32)
        ev_store = np.empty((max_ev, p.packets if self.flow_model else 0), np.int64)
        ne = _assign(
            keys, ts, finish, p.packets, int(p.idle_s * NS), int(p.active_s * NS), p.pending_rows, self.flow_model,
            self._sc, self._h_slot, self._t_key, self._t_flow, self._t_first_ts, self._t_last_ts, self._t_first_row,
            self._t_n, self._t_used, self._t_decided, self._t_prev, self._t_next, self._t_store, self._free,
            self._fifo_slot, self._fifo_flow, slot, flow, send, ev_at, ev_slot, ev_flow, ev_used, ev_store,
        )  # fmt: skip
        plan = Plan(n, start, slot, flow, send, ev_at[:ne], ev_slot[:ne], ev_flow[:ne], ev_used[:ne], meta=meta)
        if self.flow_model:
            if n:
                if rows is None:
                    raise ValueError("a flow model needs the rows of each chunk")
                # The rows a decision may use are kept in a ring of the last `ring` unit rows, read back below.
                idx = np.flatnonzero(send)
                pos = (start + idx) % self.ring
                self._ring_rows[pos] = rows[idx]
                self._ring_ts[pos] = ts[idx]
                self._ring_src_addr[pos] = meta["src_addr"][idx]
                self._ring_src_port[pos] = meta["src_port"][idx]
            store = ev_store[:ne]
            empty = store < 0
            pos = np.where(empty, 0, store % self.ring)
            plan.flow_rows = self._ring_rows[pos]
            plan.flow_rows[empty] = 0
            plan.flow_meta = {
                "ts_ns": np.where(empty, 0, self._ring_ts[pos]),
                "src_addr": np.where(empty[..., None], 0, self._ring_src_addr[pos]).astype(np.uint8),
                "src_port": np.where(empty, 0, self._ring_src_port[pos]).astype(np.uint16),
                "present": ~empty,
            }
        return plan

    def resolve(self, plan: Plan, probs: np.ndarray) -> list[Released]:
        """Feed the engine's output for `plan` (plans in the order assign made them); the rows now decided."""
        c = self.n_classes
        expected = plan.flows_decided if self.flow_model else int(plan.send.sum())
        if probs.shape != (expected, c):
            raise ValueError(f"expected probabilities [{expected}, {c}], got {list(probs.shape)}")
        ev_probs = probs.astype(np.float32, copy=False) if self.flow_model else np.empty((0, c), np.float32)
        _replay(
            plan.start, plan.slot, plan.flow, plan.send, probs.astype(np.float32, copy=False), self.flow_model,
            plan.ev_at, plan.ev_slot, plan.ev_flow, plan.ev_used, ev_probs, self._r_flow, self._r_sum, self._r_dec,
            self._r_dp, self._r_head, self._r_tail, self._ring_probs, self._ring_dp, self._ring_ready, self._ring_next,
        )  # fmt: skip
        if plan.n:
            self._held.append((plan.start, plan))
        self._replayed = plan.start + plan.n
        return self._release()

    def _release(self) -> list[Released]:
        # Rows are ready from the oldest held one up to the first whose flow is undecided.
        end = self._replayed
        g = self._released
        if g < end:
            pos = np.arange(g, end) % self.ring
            waiting = np.flatnonzero(self._ring_ready[pos] == 0)
            upto = g + (int(waiting[0]) if len(waiting) else end - g)
        else:
            upto = g
        out: list[Released] = []
        while self._held and self._released < upto:
            start, plan = self._held[0]
            lo = self._released - start
            hi = min(plan.n, upto - start)
            pos = (start + np.arange(lo, hi)) % self.ring
            assert plan.meta is not None
            meta = plan.meta if lo == 0 and hi == plan.n else {k: v[lo:hi] for k, v in plan.meta.items()}
            out.append(Released(meta, self._ring_probs[pos], self._ring_dp[pos], plan.flow[lo:hi], self._released))
            self._released = start + hi
            if hi == plan.n:
                self._held.popleft()
        return out
