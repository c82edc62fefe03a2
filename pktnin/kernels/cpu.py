"""CPU transform: RawBatch -> uint8 rows of packet layout v1 + per-packet metadata (numba, parallel).

The parse logic is pktnin.layout's, compiled here with njit; pktnin.kernels.cuda compiles the same functions
for the GPU. Two passes over the batch, both parallel over packets: parse every record into a descriptor
(int64[DESC_LEN]) and a skip reason, then (after a serial prefix sum over the kept flags) write the rows and
metadata of the kept packets.

Rows stay uint8 here: that is 4x less memory traffic than float32 and what the dataset stores. The
normalization byte/255 happens in the engine: inside the ONNX graph on the CPU, inside the CUDA row kernel
(pktnin.kernels.cuda) on the GPU.

Metadata (a dict of numpy arrays; k = number of kept packets, n = number of records in the batch):
  index int64[k]        position of the kept record in the batch
  frame, ts_ns, ip_version, proto, src_addr, dst_addr, src_port, dst_port, vlan, flow_key
                        [k, ...] in the dtypes of pktnin.schema.PACKET_META
  skip uint8[n]         per record: 0 kept, else the layout.SKIP_* reason
  skip_counts int64[len(SKIP_REASONS)]   records per reason (index 0: kept)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from pktnin import layout
from pktnin.schema import empty_meta


def _layout_digest() -> str:
    with open(layout.__file__, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def layout_keyed_cache_class():
    """numba's on-disk cache checks only the source file of the cached function (this module), so a changed
    pktnin/layout.py would silently reuse stale machine code: a subclass of numba's FunctionCache keys the
    entries on layout.py too. FunctionCache is numba's internal class; None when it is not there as expected."""
    try:
        from numba.core.caching import FunctionCache

        digest = _layout_digest()
    except (ImportError, OSError):  # numba internals moved, or no layout.py on disk
        return None
    if not callable(getattr(FunctionCache, "_index_key", None)):
        return None

    class LayoutKeyedCache(FunctionCache):
        def _index_key(self, sig, codegen):
            return (*super()._index_key(sig, codegen), digest)

    return LayoutKeyedCache


LAYOUT_KEYED_CACHE = layout_keyed_cache_class()


def cached(dispatcher, cache_class=LAYOUT_KEYED_CACHE):
    """Enable the disk cache for a kernel that compiles pktnin.layout functions in: keyed on layout.py too where
    numba's internals allow it, else numba's default cache, keyed on this module's file only (after an edit of
    layout.py alone, clear __pycache__ or set NUMBA_CACHE_DIR to a fresh folder)."""
    if cache_class is not None:
        try:
            dispatcher._cache = cache_class(dispatcher.py_func)
            return dispatcher
        except Exception:  # noqa: BLE001 - any failure of numba's internal class: use its public switch
            pass
    dispatcher.enable_caching()
    return dispatcher


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
@njit(parallel=True, nogil=True)
def _parse_all(buf, pkt_off, caplen, linktype, keep_dns, desc, skip):
    for i in prange(pkt_off.shape[0]):
        skip[i] = _parse_packet(buf, pkt_off[i], caplen[i], linktype[i], keep_dns, desc[i])


@njit(cache=True, nogil=True)
def _kept_index(skip, skip_counts):
    """Count records per skip reason and return the batch positions of the kept ones (the prefix sum)."""
    for r in range(skip_counts.shape[0]):
        skip_counts[r] = 0
    for i in range(skip.shape[0]):
        skip_counts[skip[i]] += 1
    kept = np.empty(skip_counts[0], dtype=np.int64)
    k = 0
    for i in range(skip.shape[0]):
        if skip[i] == 0:
            kept[k] = i
            k += 1
    return kept


@cached
@njit(parallel=True, nogil=True)
def _write_all(
    buf, desc, kept, mask, frame_in, ts_in,
    rows, frame, ts_ns, ip_version, proto, src_addr, dst_addr, src_port, dst_port, vlan, flow_key,
):  # fmt: skip
    for r in prange(kept.shape[0]):
        i = kept[r]
        d = desc[i]
        _write_row(buf, d, mask, rows[r])
        _copy_addresses(buf, d, src_addr[r], dst_addr[r])
        frame[r] = frame_in[i]
        ts_ns[r] = ts_in[i]
        ip_version[r] = d[layout.D_IP_VERSION]
        proto[r] = d[layout.D_PROTO]
        src_port[r] = d[layout.D_SRC_PORT]
        dst_port[r] = d[layout.D_DST_PORT]
        vlan[r] = d[layout.D_VLAN]
        flow_key[r] = _flow_key(buf, d)


class Parsed(NamedTuple):
    """The parse pass of one batch."""

    arrays: dict  # raw_arrays(raw)
    desc: np.ndarray  # int64 [n, DESC_LEN]
    skip: np.ndarray  # uint8 [n]
    kept: np.ndarray  # int64 [k], batch positions of the kept records
    skip_counts: np.ndarray  # int64 [len(SKIP_REASONS)]


def parse(raw, keep_dns: bool = False) -> Parsed:
    """Parse pass only."""
    arrays = raw_arrays(raw)
    n = arrays["pkt_off"].shape[0]
    desc = np.empty((n, layout.DESC_LEN), dtype=np.int64)
    skip = np.empty(n, dtype=np.uint8)
    if n:
        _parse_all(
            arrays["buf"], arrays["pkt_off"], arrays["caplen"], arrays["linktype"], bool(keep_dns), desc, skip
        )
    skip_counts = np.zeros(_N_REASONS, dtype=np.int64)
    kept = _kept_index(skip, skip_counts)
    return Parsed(arrays, desc, skip, kept, skip_counts)


def _write_kept(parsed: Parsed, mask, rows_out) -> dict:
    """Write the kept rows into rows_out[:k]; returns the metadata dict."""
    arrays, desc, kept = parsed.arrays, parsed.desc, parsed.kept
    k = kept.shape[0]
    meta = {"index": kept, **empty_meta(k)}
    if k:
        _write_all(
            arrays["buf"], desc, kept, mask, arrays["frame"], arrays["ts_ns"],
            rows_out, meta["frame"], meta["ts_ns"], meta["ip_version"], meta["proto"],
            meta["src_addr"], meta["dst_addr"], meta["src_port"], meta["dst_port"], meta["vlan"], meta["flow_key"],
        )  # fmt: skip
    meta["skip"] = parsed.skip
    meta["skip_counts"] = parsed.skip_counts
    return meta


def transform_into(raw, rows_out: np.ndarray, mask=layout.MASK_PAPER, keep_dns: bool = False) -> dict:
    """Transform a batch, writing the k kept rows into rows_out[:k] (uint8, C-contiguous, [>=k, ROW_LEN]).

    Returns the metadata dict (see the module docstring); k = len(meta["index"]). A caller that reuses one
    buffer of len(batch) rows never runs out of space; a smaller one raises ValueError before any row is written.
    """
    mask = layout.mask_code(mask)
    if rows_out.dtype != np.uint8 or rows_out.ndim != 2 or rows_out.shape[1] != layout.ROW_LEN:
        raise ValueError(f"rows_out must be uint8 [rows, {layout.ROW_LEN}], got {rows_out.dtype} {rows_out.shape}")
    if not rows_out.flags.c_contiguous:
        raise ValueError("rows_out must be C-contiguous")
    parsed = parse(raw, keep_dns)
    k = parsed.kept.shape[0]
    if rows_out.shape[0] < k:
        raise ValueError(f"rows_out has {rows_out.shape[0]} rows, the batch keeps {k} packets")
    return _write_kept(parsed, mask, rows_out)


def transform(raw, mask=layout.MASK_PAPER, keep_dns: bool = False) -> tuple[np.ndarray, dict]:
    """Transform a batch: (rows uint8[k, ROW_LEN], metadata dict) for its k kept packets."""
    mask = layout.mask_code(mask)
    parsed = parse(raw, keep_dns)
    rows = np.empty((parsed.kept.shape[0], layout.ROW_LEN), dtype=np.uint8)
    return rows, _write_kept(parsed, mask, rows)
