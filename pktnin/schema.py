"""The per-packet metadata every producer and writer shares: name -> (dtype, shape of one packet's value).

The CPU and CUDA transforms return these arrays for the kept packets, `preprocess` stores them in its .npz,
and the score writers take their Arrow column types from them, so an empty output has the same dtypes as a
full one.
"""

from __future__ import annotations

import numpy as np

ADDR_LEN = 16  # addresses are stored as 16 bytes; IPv4 in the first 4, the rest zero

PACKET_META: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "frame": (np.dtype(np.int64), ()),  # 0-based index of the record in its file
    "ts_ns": (np.dtype(np.int64), ()),  # timestamp, ns since epoch
    "ip_version": (np.dtype(np.uint8), ()),
    "proto": (np.dtype(np.uint8), ()),
    "src_addr": (np.dtype(np.uint8), (ADDR_LEN,)),  # as captured (unmasked)
    "dst_addr": (np.dtype(np.uint8), (ADDR_LEN,)),
    "src_port": (np.dtype(np.uint16), ()),
    "dst_port": (np.dtype(np.uint16), ()),
    "vlan": (np.dtype(np.uint16), ()),  # outermost 802.1Q id, 0 if untagged
    "flow_key": (np.dtype(np.uint64), ()),  # bidirectional 5-tuple + vlan hash (layout.flow_key)
}
META_COLUMNS = tuple(PACKET_META)


def meta_dtype(name: str) -> np.dtype:
    return PACKET_META[name][0]


def empty_meta(k: int, zero: bool = False) -> dict[str, np.ndarray]:
    """New arrays for k packets, one per metadata column (uninitialized unless zero)."""
    new = np.zeros if zero else np.empty
    return {name: new((k, *shape), dtype=dtype) for name, (dtype, shape) in PACKET_META.items()}


def concat_meta(parts: list[np.ndarray], name: str) -> np.ndarray:
    """One column of several chunks; with no chunks, an empty column of the schema's dtype and shape."""
    dtype, shape = PACKET_META[name]
    if not parts:
        return np.empty((0, *shape), dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)
