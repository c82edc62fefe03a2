"""Per-flow aggregation of scored packets, one file at a time, in numpy.

A flow is the packets of one file sharing the bidirectional `flow_key` (5-tuple + VLAN, both directions);
with `--decide flow`, the flow the decision stage saw (pktnin.flow_decide): a key that timed out and came back
is a new flow, so a file's table may hold a flow_id twice. Endpoint `a` is the source of the flow's first
scored packet. The flow's label is the argmax of its mean probability vector and its confidence that mean
probability (with `--decide flow` every packet of a flow carries the flow's decision, so that is it).

Packets are buffered and folded into the running per-flow state whenever the buffer holds as many packets as
the state has flows (at least MERGE_ROWS), so the work stays O(N log N) and memory O(flows + MERGE_ROWS).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pktnin.names import name_text
from pktnin.scoring.writers import DECISION_FIELDS, TIMESTAMP, format_addresses, labels_of, meta_type, prob_columns

MERGE_ROWS = 65536

# Fields of the first packet that describe the flow (taken from the earliest packet of each flow).
_FIRST_FIELDS = ("ip_version", "proto", "src_addr", "dst_addr", "src_port", "dst_port", "vlan")


def flow_schema(classes: list[str], with_probs: bool) -> pa.Schema:
    fields = [
        ("file", pa.string()),
        ("flow_id", meta_type("flow_key")),  # the packet rows' flow_id
        ("proto", meta_type("proto")),
        ("addr_a", pa.string()),
        ("port_a", meta_type("src_port")),
        ("addr_b", pa.string()),
        ("port_b", meta_type("dst_port")),
        ("vlan", meta_type("vlan")),
        ("first_ts", TIMESTAMP),
        ("last_ts", TIMESTAMP),
        ("packets", pa.int64()),  # scored packets of the flow (packets the layout skips are not counted)
        ("label", pa.string()),
        ("confidence", pa.float32()),
        *DECISION_FIELDS,  # packet: every scored packet of the flow; flow: the rows its decision used
    ]
    if with_probs:
        fields += [(name, pa.float32()) for name in prob_columns(classes)]
    return pa.schema(fields)


class FlowAccumulator:
    """Collects (meta, probs) of one file's scored packets, in frame order, and reduces them by flow_key, or by
    the decision stage's flows (`flow_no` in the metadata) when `by_flow`."""

    def __init__(self, n_classes: int, by_flow: bool = False) -> None:
        self.n_classes = n_classes
        self.by_flow = by_flow
        self._state: dict[str, np.ndarray] | None = None
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0

    def add(self, meta: dict[str, np.ndarray], probs: np.ndarray) -> None:
        n = probs.shape[0]
        if n == 0:
            return
        part = {name: meta[name] for name in _FIRST_FIELDS}
        part["flow_key"] = meta["flow_key"]
        part["group"] = (meta["flow_no"] if self.by_flow else meta["flow_key"]).astype(np.uint64, copy=False)
        part["decision_packets"] = meta["decision_packets"] if self.by_flow else np.ones(n, dtype=np.int32)
        part["first_frame"] = meta["frame"]
        part["first_ts"] = meta["ts_ns"]
        part["last_ts"] = meta["ts_ns"]
        part["packets"] = np.ones(n, dtype=np.int64)
        part["prob_sum"] = probs.astype(np.float64)
        self._pending.append(part)
        self._pending_rows += n
        state_flows = 0 if self._state is None else len(self._state["flow_key"])
        if self._pending_rows >= max(MERGE_ROWS, state_flows):
            self._merge()

    def add_partial(self, partial: dict[str, np.ndarray]) -> None:
        """Fold in the state() of an accumulator over later packets of the same file (a later shard)."""
        if partial and len(partial["flow_key"]):
            if "group" not in partial:  # the partial of an earlier version: grouped by flow_key
                partial = {**partial, "group": partial["flow_key"],
                           "decision_packets": np.ones(len(partial["flow_key"]), np.int32)}  # fmt: skip
            self._pending.append(partial)
            self._pending_rows += len(partial["flow_key"])

    def state(self) -> dict[str, np.ndarray]:
        """The per-flow partial sums so far (mergeable with add_partial); empty arrays when no packet came."""
        self._merge()
        return self._state if self._state is not None else {}

    def _merge(self) -> None:
        parts = ([self._state] if self._state is not None else []) + self._pending
        self._pending, self._pending_rows = [], 0
        if not parts:
            return
        cat = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        # return_index gives each key's first occurrence in concatenation order: the state (earlier packets)
        # comes first, then the buffered packets in arrival (= frame) order, so it is the flow's first packet.
        keys, first, inverse = np.unique(cat["group"], return_index=True, return_inverse=True)
        f = len(keys)
        out = {name: cat[name][first] for name in _FIRST_FIELDS}
        out["group"] = keys
        out["flow_key"] = cat["flow_key"][first]
        out["decision_packets"] = np.zeros(f, dtype=np.int32)
        np.maximum.at(out["decision_packets"], inverse, cat["decision_packets"])
        out["first_frame"] = cat["first_frame"][first]
        out["first_ts"] = np.full(f, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(out["first_ts"], inverse, cat["first_ts"])
        out["last_ts"] = np.full(f, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(out["last_ts"], inverse, cat["last_ts"])
        out["packets"] = np.zeros(f, dtype=np.int64)
        np.add.at(out["packets"], inverse, cat["packets"])
        out["prob_sum"] = np.zeros((f, self.n_classes), dtype=np.float64)
        np.add.at(out["prob_sum"], inverse, cat["prob_sum"])
        self._state = out

    @property
    def flows(self) -> int:
        self._merge()
        return 0 if self._state is None else len(self._state["flow_key"])

    def table(self, file_name: str, classes: pa.Array, schema: pa.Schema) -> pa.Table:
        """The file's flows, ordered by their first packet."""
        self._merge()
        s = self._state
        if s is None:
            return schema.empty_table()
        order = np.argsort(s["first_frame"], kind="stable")
        s = {name: values[order] for name, values in s.items()}
        mean = (s["prob_sum"] / s["packets"][:, None]).astype(np.float32)
        _, label, confidence = labels_of(mean, classes)
        n = len(order)
        columns = [
            pa.repeat(name_text(file_name), n).cast(pa.string()),
            pa.array(s["flow_key"], type=meta_type("flow_key")),
            pa.array(s["proto"], type=meta_type("proto")),
            format_addresses(s["src_addr"], s["ip_version"]),
            pa.array(s["src_port"], type=meta_type("src_port")),
            format_addresses(s["dst_addr"], s["ip_version"]),
            pa.array(s["dst_port"], type=meta_type("dst_port")),
            pa.array(s["vlan"], type=meta_type("vlan")),
            pa.array(s["first_ts"], type=pa.int64()).cast(TIMESTAMP),
            pa.array(s["last_ts"], type=pa.int64()).cast(TIMESTAMP),
            pa.array(s["packets"], type=pa.int64()),
            label,
            pa.array(confidence, type=pa.float32()),
            pa.repeat("flow" if self.by_flow else "packet", n).cast(pa.string()),
            pa.array(s["decision_packets"] if self.by_flow else s["packets"].astype(np.int32)),
        ]
        if len(schema) > len(columns):
            columns += [pa.array(np.ascontiguousarray(mean[:, c]), type=pa.float32()) for c in range(mean.shape[1])]
        return pa.Table.from_arrays(columns, schema=schema)
