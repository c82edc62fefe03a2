"""CPU transform: RawBatch -> uint8 rows of packet layout v1 + per-packet metadata (numba).

The parse logic is pktnin.layout's, compiled here with njit; pktnin.kernels.cuda compiles the same functions
for the GPU. One pass over the records: each record is parsed and, if kept, its row and metadata are written
at once, straight into the caller's buffer, while the packet's bytes are still in cache (no descriptor array,
no second pass, no copy of the rows). Threads split a batch by record ranges (RangePrep): each range has its
own output, so the threads never wait for one another.

Rows stay uint8 here: that is 4x less memory traffic than float32 and what the dataset stores. The
normalization byte/255 happens in the engine: inside the ONNX graph on the CPU, inside the CUDA row kernel
(pktnin.kernels.cuda) on the GPU.

Metadata (a dict of numpy arrays; k = number of kept packets, n = number of records in the batch):
  index int64[k]        position of the kept record in the batch
  frame, ts_ns, ip_version, proto, src_addr, dst_addr, src_port, dst_port, vlan, flow_key
                        [k, ...] in the dtypes of pktnin.schema.PACKET_META (RangePrep(flow_keys=False): no flow_key)
  skip uint8[n]         per record: 0 kept, else the layout.SKIP_* reason
  skip_counts int64[len(SKIP_REASONS)]   records per reason (index 0: kept)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numba import njit

from pktnin import layout
from pktnin.kernels.disk_cache import cached as disk_cached
from pktnin.kernels.disk_cache import source_keyed_cache_class
from pktnin.schema import empty_meta

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor


def layout_keyed_cache_class():
    """A numba disk cache keyed on pktnin/layout.py too: the kernels compile its functions in."""
    return source_keyed_cache_class(layout)


LAYOUT_KEYED_CACHE = layout_keyed_cache_class()


def cached(dispatcher, cache_class=LAYOUT_KEYED_CACHE):
    """Enable the disk cache for a kernel that compiles pktnin.layout functions in (see kernels.disk_cache)."""
    return disk_cached(dispatcher, cache_class)


_parse_packet = njit(nogil=True)(layout.parse_packet)
_write_row = njit(nogil=True)(layout.write_row)
_copy_addresses = njit(nogil=True)(layout.copy_addresses)
_flow_key = njit(nogil=True)(layout.flow_key)

_N_REASONS = len(layout.SKIP_REASONS)
RAW_DTYPES = {
    "buf": np.uint8,
    "pkt_off": np.int64,
    "caplen": np.int32,
    "linktype": np.int32,
    "ts_ns": np.int64,
    "frame": np.int64,
}
RAW_FIELDS = tuple(RAW_DTYPES)


def raw_arrays(raw) -> dict[str, np.ndarray]:
    """The RawBatch fields the transform needs, as contiguous arrays of the contract dtypes.

    `raw` is a RawBatch (attributes) or a mapping with the keys buf, pkt_off, caplen, linktype, ts_ns, frame.
    """
    out = {}
    for name in RAW_FIELDS:
        value = raw[name] if isinstance(raw, Mapping) else getattr(raw, name)
        out[name] = np.ascontiguousarray(value, dtype=RAW_DTYPES[name]).reshape(-1)
    check_raw_lengths(out)
    return out


def check_raw_lengths(fields: Mapping) -> None:
    """Every per-record field of a RawBatch (all but buf) has as many entries as pkt_off."""
    n = fields["pkt_off"].shape[0]
    for name in RAW_FIELDS:
        if name != "buf" and fields[name].shape[0] != n:
            raise ValueError(f"RawBatch field {name} has {fields[name].shape[0]} entries, pkt_off has {n}")


@cached
@njit(nogil=True)
def _prep_range(
    buf, pkt_off, caplen, linktype, frame_in, ts_in, lo, hi, keep_dns, mask,
    rows, row_end, index, frame, ts_ns, ip_version, proto, src_addr, dst_addr, src_port, dst_port, vlan, flow_key,
    skip, skip_counts,
):  # fmt: skip
    """Records lo..hi-1 in one pass: parse each one and, if kept, write its row and metadata at the next output
    position while its bytes are still in cache. Returns the rows written; skip[i] and skip_counts are filled for
    the range. row_end[r] says where row r's nonzero bytes may end (rows reused from an earlier call: only that
    much of the old row is cleared, not all 1500 bytes); an empty row_end means rows of unknown content, fully
    written. An empty flow_key array means no flow keys."""
    d = np.empty(layout.DESC_LEN, dtype=np.int64)
    with_flow_key = flow_key.shape[0] > 0
    track_end = row_end.shape[0] > 0
    for r in range(skip_counts.shape[0]):
        skip_counts[r] = 0
    k = 0
    for i in range(lo, hi):
        reason = _parse_packet(buf, pkt_off[i], caplen[i], linktype[i], keep_dns, d)
        skip[i] = reason
        skip_counts[reason] += 1
        if reason != layout.KEPT:
            continue
        if track_end:
            row_end[k] = _write_row(buf, d, mask, rows[k], row_end[k])
        else:
            _write_row(buf, d, mask, rows[k], layout.ROW_LEN)
        _copy_addresses(buf, d, src_addr[k], dst_addr[k])
        index[k] = i
        frame[k] = frame_in[i]
        ts_ns[k] = ts_in[i]
        ip_version[k] = d[layout.D_IP_VERSION]
        proto[k] = d[layout.D_PROTO]
        src_port[k] = d[layout.D_SRC_PORT]
        dst_port[k] = d[layout.D_DST_PORT]
        vlan[k] = d[layout.D_VLAN]
        if with_flow_key:
            flow_key[k] = _flow_key(buf, d)
        k += 1
    return k


def _check_rows(rows: np.ndarray, need: int) -> None:
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != layout.ROW_LEN:
        raise ValueError(f"rows_out must be uint8 [rows, {layout.ROW_LEN}], got {rows.dtype} {rows.shape}")
    if not rows.flags.c_contiguous or not rows.flags.writeable:
        raise ValueError("rows_out must be C-contiguous and writeable")
    if rows.shape[0] < need:
        raise ValueError(f"rows_out has {rows.shape[0]} rows, the batch has {need} records")


class RangeOutput:
    """Where one record range's kept rows and metadata go: rows [capacity, ROW_LEN] and one array per column.

    Without `rows`, the rows start zeroed and each fill() clears only what the row written there before may have
    left (the rows must not be written by anyone else); given `rows` of unknown content, every byte is written.
    """

    def __init__(self, capacity: int, flow_keys: bool = True, rows: np.ndarray | None = None):
        if rows is None:
            self.rows = np.zeros((capacity, layout.ROW_LEN), dtype=np.uint8)
            self.row_end = np.zeros(capacity, dtype=np.int64)
        else:
            self.rows = rows
            self.row_end = np.empty(0, dtype=np.int64)
        self.meta = {"index": np.empty(capacity, dtype=np.int64), **empty_meta(capacity)}
        if not flow_keys:
            self.meta["flow_key"] = self.meta["flow_key"][:0]  # tells the kernel to skip the hash
        self.flow_keys = flow_keys

    @property
    def capacity(self) -> int:
        return int(self.meta["index"].shape[0])

    def fill(self, arrays: dict, lo: int, hi: int, mask: int, keep_dns: bool, skip, skip_counts) -> int:
        """Prepare records lo..hi-1 of `arrays` (raw_arrays) into this output; returns the rows written."""
        if hi - lo > self.capacity or self.rows.shape[0] < hi - lo:
            raise ValueError(f"range of {hi - lo} records does not fit an output of {self.capacity} rows")
        m = self.meta
        return _prep_range(
            arrays["buf"], arrays["pkt_off"], arrays["caplen"], arrays["linktype"], arrays["frame"], arrays["ts_ns"],
            lo, hi, bool(keep_dns), mask,
            self.rows, self.row_end, m["index"], m["frame"], m["ts_ns"], m["ip_version"], m["proto"],
            m["src_addr"], m["dst_addr"], m["src_port"], m["dst_port"], m["vlan"], m["flow_key"], skip, skip_counts,
        )  # fmt: skip

    def kept(self, k: int) -> tuple[np.ndarray, dict]:
        """Views of the first k rows and metadata entries."""
        meta = {name: value[:k] for name, value in self.meta.items() if self.flow_keys or name != "flow_key"}
        return self.rows[:k], meta


def transform_into(raw, rows_out: np.ndarray, mask=layout.MASK_PAPER, keep_dns: bool = False) -> dict:
    """Transform a batch in one pass, writing the k kept rows into rows_out[:k] (uint8, C-contiguous).

    rows_out must have at least len(batch) rows (the kept count is known only once the rows are written);
    otherwise ValueError before anything is written. Returns the metadata dict (see the module docstring);
    k = len(meta["index"]).
    """
    mask = layout.mask_code(mask)
    arrays = raw_arrays(raw)
    n = arrays["pkt_off"].shape[0]
    _check_rows(rows_out, n)
    out = RangeOutput(n, rows=rows_out)
    skip = np.empty(n, dtype=np.uint8)
    skip_counts = np.zeros(_N_REASONS, dtype=np.int64)
    k = out.fill(arrays, 0, n, mask, keep_dns, skip, skip_counts) if n else 0
    meta = out.kept(k)[1]
    meta["skip"] = skip
    meta["skip_counts"] = skip_counts
    return meta


def transform(raw, mask=layout.MASK_PAPER, keep_dns: bool = False) -> tuple[np.ndarray, dict]:
    """Transform a batch: (rows uint8[k, ROW_LEN], metadata dict) for its k kept packets.

    The rows are a view of a len(batch)-row buffer whose untouched tail is never paged in.
    """
    n = np.shape(raw["pkt_off"] if isinstance(raw, Mapping) else raw.pkt_off)[0]
    rows = np.empty((n, layout.ROW_LEN), dtype=np.uint8)
    meta = transform_into(raw, rows, mask, keep_dns)
    return rows[: meta["index"].shape[0]], meta


class Prepared(NamedTuple):
    """One batch through RangePrep: the kept rows and metadata of each record range, in record order."""

    parts: list  # [(rows uint8[k_i, ROW_LEN], meta dict without skip/skip_counts)]
    skip: np.ndarray  # uint8 [n], the batch's (or the piece's) records
    skip_counts: np.ndarray  # int64 [len(SKIP_REASONS)]


class RangePrep:
    """The one-pass transform of whole batches on `threads` threads, split by record ranges.

    Each thread takes one contiguous range of the batch's records and writes that range's kept rows into its
    own output, so no thread waits for another's kept count and no row is moved afterwards; the ranges come back
    in record order, one (rows, meta) part each. With reuse=True every range writes into the same buffers at each
    call (the parts are valid until the next call: the engine reads them where they were written); otherwise
    each call allocates. flow_keys=False leaves out the flow_key column (only flow aggregation needs it).
    Ranges are at least `min_range` records, so small batches run on one thread.
    """

    def __init__(
        self,
        mask=layout.MASK_PAPER,
        keep_dns: bool = False,
        threads: int = 1,
        reuse: bool = False,
        flow_keys: bool = True,
        min_range: int = 2048,
    ):
        if threads < 1 or min_range < 1:
            raise ValueError("threads and min_range must be positive")
        self.mask = layout.mask_code(mask)
        self.keep_dns = bool(keep_dns)
        self.threads = int(threads)
        self.reuse = reuse
        self.flow_keys = flow_keys
        self.min_range = int(min_range)
        self._outputs: list[RangeOutput | None] = [None] * self.threads
        self._pool: ThreadPoolExecutor | None = None
        if self.threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="pktnin-prep")

    def _output(self, slot: int, need: int) -> RangeOutput:
        out = self._outputs[slot]
        if out is None or out.capacity < need:
            out = RangeOutput(need, self.flow_keys)
            if self.reuse:
                self._outputs[slot] = out
        return out

    def __call__(self, raw) -> Prepared:
        """The whole batch at once."""
        arrays = raw_arrays(raw)
        n = arrays["pkt_off"].shape[0]
        skip = np.empty(n, dtype=np.uint8)
        return self._run(arrays, 0, n, skip)

    def pieces(self, raw, records: int) -> Iterator[Prepared]:
        """The batch `records` records at a time, each piece split over the threads; a piece's skip covers its
        records only. With reuse=True each piece overwrites the one before, so pieces small enough for the
        cache keep the rows there from the transform to their consumer."""
        if records < 1:
            raise ValueError("records must be positive")
        arrays = raw_arrays(raw)
        n = arrays["pkt_off"].shape[0]
        skip = np.empty(n, dtype=np.uint8)
        for lo in range(0, n, records):
            yield self._run(arrays, lo, min(n, lo + records), skip)

    def _run(self, arrays: dict, lo: int, hi: int, skip: np.ndarray) -> Prepared:
        ranges = max(1, min(self.threads, (hi - lo) // self.min_range))
        bounds = [lo + (hi - lo) * r // ranges for r in range(ranges + 1)]
        counts = np.zeros((ranges, _N_REASONS), dtype=np.int64)
        outputs = [self._output(r, bounds[r + 1] - bounds[r]) for r in range(ranges)]

        def run(r: int) -> int:
            return outputs[r].fill(arrays, bounds[r], bounds[r + 1], self.mask, self.keep_dns, skip, counts[r])

        others: list[Future[int]] = []
        if ranges > 1:
            assert self._pool is not None  # ranges <= threads, and threads > 1 made the pool
            others = [self._pool.submit(run, r) for r in range(1, ranges)]
        kept = [run(0)]
        for r, future in enumerate(others, start=1):
            # A range no worker has started yet (the machine is busy) is done here rather than waited for.
            kept.append(run(r) if future.cancel() else future.result())
        parts = [outputs[r].kept(kept[r]) for r in range(ranges)]
        return Prepared(parts, skip[lo:hi], counts.sum(axis=0))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> RangePrep:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
