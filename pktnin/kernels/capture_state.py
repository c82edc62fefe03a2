"""Capture formats' constants, the state shared with the compiled record walks, errors, batches and messages.

The walks (pktnin.kernels.capture_pcap, pktnin.kernels.capture_pcapng) keep their progress in one int64 array
laid out below, so that one call can stop anywhere in a window and the next call (on the next window) go on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from pktnin.names import name_text
from pktnin.storage import open_input

MAX_RECORD_LEN = 256 * 1024  # larger captured lengths mean the framing is lost (classic pcap) or the record is bad
# Largest pcapng block read into memory: the largest legal packet plus room for options. A longer block is
# skipped without being read (its bytes are never buffered), so memory is bounded by this, not by the input.
MAX_BLOCK_LEN = MAX_RECORD_LEN + (4 << 20)
# Bytes read per window: small enough that the windows in flight (being read, read ahead, being transformed) stay
# in the CPU's last-level cache, large enough that the calls per window stay few.
WINDOW_BYTES = 2 << 20
# Window buffers kept for reuse (a fresh buffer costs a page fault per 4 KiB): the one being read, the one the
# transform holds and the chunks read ahead (pktnin.packets.READ_AHEAD_CHUNKS).
_KEPT_BUFFERS = 4

_PCAP_MAGICS = {
    # magic as read little-endian -> (big_endian, nanosecond)
    0xA1B2C3D4: (False, False),
    0xD4C3B2A1: (True, False),
    0xA1B23C4D: (False, True),
    0x4D3CB2A1: (True, True),
}
_PCAP_HEADER_LEN = 24
_SHB_TYPE = 0x0A0D0D0A
_BOM_LE = 0x1A2B3C4D
_BOM_BE = 0x4D3C2B1A

# Walk results.
_NEED_MORE = 0  # the next record does not fit in the window; st[_NEED] bytes are needed from the returned pos
_BATCH_FULL = 1  # the output arrays are full
_END = 2  # clean end of file
_FATAL = 3  # framing lost: st[_ERR_*] describe it

# Layout of the int64 state array shared with the walk.
_FRAME = 0  # packet records seen so far (good and corrupt): the next record's frame number
_CORRUPT = 1
_NEED = 2
_ERR_CODE = 3
_ERR_OFF = 4
_ERR_V1 = 5
_ERR_V2 = 6
_BIG = 7  # pcapng: byte order of the current section
_N_IF = 8  # pcapng: interfaces defined in the current section
_WARN_BASE = 16  # per non-fatal kind k: count, first offset, first value at _WARN_BASE + 3k (+1, +2)

# Fatal error codes.
E_TRUNC_HEADER = 1
E_TRUNC_RECORD = 2
E_RECORD_TOO_LONG = 3
E_BLOCK_TRUNC_HEADER = 4
E_BLOCK_SHORT = 5
E_BLOCK_ALIGN = 6
E_BLOCK_BEYOND = 7
E_BLOCK_TRAILER = 8
E_BAD_BOM = 9

# Non-fatal kinds (the record is skipped, the walk continues).
W_ZERO_LEN = 0  # legal (captured length 0): skipped, not corrupt
W_CAPLEN_BLOCK = 1
W_BAD_IFACE = 2
W_SHORT_PACKET_BLOCK = 3
W_SHORT_IDB = 4
W_TOO_LONG = 5
W_TS_OVERFLOW = 6  # the record's time is outside int64 nanoseconds since the epoch: skipped, not corrupt
W_BIG_BLOCK = 7  # a pcapng block longer than the reader's bound: skipped unread (a packet block counts as corrupt)
_N_WARN = 8
_STATE_LEN = _WARN_BASE + 3 * _N_WARN

_IFACE_CAPACITY = 65536  # interfaces per pcapng section kept in the table; ids beyond it count as undefined
_MIN_RECORD_BYTES = 12  # smallest record or block: bounds the output arrays one walk call can fill


# ----------------------------------------------------------------------------------------------------------------
# Errors and batches


@dataclass(frozen=True)
class Issue:
    """One problem met in a capture file, typed: what it is (`kind`), the byte offset of its first occurrence
    (None when the file could not be opened at all), how many records of that kind were skipped (1 for an
    error that stopped or failed the file), and the bare description for people. Reports carry these from the
    reader to the edge; `line` makes the text shown and written to --report."""

    kind: str
    offset: int | None
    description: str
    count: int = 1
    fatal: bool = True  # it stopped (or failed) the file; else records of its kind were skipped and counted

    @property
    def reason(self) -> str:
        if self.fatal:
            return self.description
        return f"{self.description} (first of {self.count} in this file, skipped)"

    def line(self, path: str | os.PathLike) -> str:
        name = name_text(os.path.basename(path) or str(path))
        return f"{name}: {self.reason}" if self.offset is None else f"{name}: offset {self.offset}: {self.reason}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "offset": self.offset, "description": self.description, "count": self.count,
                "fatal": self.fatal}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Issue:
        offset = d["offset"]
        return cls(str(d["kind"]), None if offset is None else int(offset), str(d["description"]), int(d["count"]),
                   bool(d["fatal"]))  # fmt: skip


class CaptureError(Exception):
    """A problem in a capture file, at a byte offset: `issue` says which."""

    def __init__(self, path, kind: str, offset: int, description: str, count: int = 1, fatal: bool = True):
        self.path = str(path)
        self.issue = Issue(kind, int(offset), description, count, fatal)
        super().__init__(self.issue.line(self.path))

    @property
    def offset(self) -> int:
        return int(self.issue.offset or 0)

    @property
    def kind(self) -> str:
        return self.issue.kind

    @property
    def count(self) -> int:
        return self.issue.count

    @property
    def description(self) -> str:
        return self.issue.description

    @property
    def reason(self) -> str:
        return self.issue.reason


class NotACapture(CaptureError):
    """The file is empty or is neither classic pcap nor pcapng (always at offset 0)."""


class RawBatch(NamedTuple):
    """Records of one file; record i is buf[pkt_off[i] : pkt_off[i] + caplen[i]]."""

    buf: np.ndarray  # uint8 window of the file, valid until the next batch is read
    pkt_off: np.ndarray  # int64
    caplen: np.ndarray  # int32
    wirelen: np.ndarray  # int32
    linktype: np.ndarray  # int32, lower 16 bits of the link type field
    ts_ns: np.ndarray  # int64, ns since the epoch (0 when unknown: SPB)
    frame: np.ndarray  # int64, 0-based index of the packet record in its file
    base: int = 0  # file offset of buf[0]: record i starts at file offset base + pkt_off[i]
    consumed: int = 0  # bytes of the input (compressed bytes for .gz) read up to the end of this batch

    @property
    def n(self) -> int:
        return int(self.pkt_off.shape[0])


class ReaderState(NamedTuple):
    """What a pcapng walk needs to start in the middle of a section: its byte order and interface table
    (the walk's rows: link type, timestamp mode, parameter, offset, units per second). Classic pcap needs none."""

    big_endian: bool
    n_interfaces: int  # interfaces defined so far in the section (may exceed the rows kept)
    interfaces: tuple[tuple[int, ...], ...]

    def to_json(self) -> list:
        return [self.big_endian, self.n_interfaces, [list(row) for row in self.interfaces]]

    @classmethod
    def from_json(cls, data) -> ReaderState:
        big, n, rows = data
        return cls(bool(big), int(n), tuple(tuple(int(v) for v in row) for row in rows))


# ----------------------------------------------------------------------------------------------------------------
# Format detection


_IN_MEMORY_TYPES = (bytes, bytearray, memoryview, np.ndarray)


def _head_bytes(path_or_bytes, n: int) -> bytes:
    if isinstance(path_or_bytes, _IN_MEMORY_TYPES):
        return bytes(memoryview(path_or_bytes).cast("B")[:n])  # type: ignore[arg-type]  # numpy stub: no __buffer__
    with open_input(path_or_bytes) as f:  # a local file, or an object in a store (ranged read)
        return bytes(f.read(n))


def _format_of_head(head: bytes) -> str | None:
    if len(head) < 4:
        return None
    magic = int.from_bytes(head[:4], "little")
    if magic in _PCAP_MAGICS:
        return "pcap"
    if magic == _SHB_TYPE and len(head) >= 12 and int.from_bytes(head[8:12], "little") in (_BOM_LE, _BOM_BE):
        return "pcapng"
    return None


def detect_format(path_or_bytes) -> str | None:
    """'pcap', 'pcapng' or None, from the magic number (a path or the file's first bytes)."""
    return _format_of_head(_head_bytes(path_or_bytes, 12))


# ----------------------------------------------------------------------------------------------------------------
# Compiled walk. Every read is checked against the window end (`buf.shape[0]`) and the file size first.


@njit(cache=True, inline="always")
def _u16(buf, p, big):
    if big:
        return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])
    return np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8)


@njit(cache=True, inline="always")
def _u32(buf, p, big):
    if big:
        return (
            (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3])
        )
    return np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8) | (np.int64(buf[p + 2]) << 16) | (np.int64(buf[p + 3]) << 24)


@njit(cache=True, inline="always")
def _fatal(st, code, offset, v1, v2):
    st[_ERR_CODE] = code
    st[_ERR_OFF] = offset
    st[_ERR_V1] = v1
    st[_ERR_V2] = v2
    return _FATAL


@njit(cache=True, inline="always")
def _warn(st, kind, offset, value):
    base = _WARN_BASE + 3 * kind
    if st[base] == 0:
        st[base + 1] = offset
        st[base + 2] = value
    st[base] += 1
    # damaged packet records only: an IDB is not a packet record, a bad time or an empty record is no damage, and
    # the walk counts an oversized block itself (only a packet block is a record)
    if kind != W_SHORT_IDB and kind != W_TS_OVERFLOW and kind != W_ZERO_LEN and kind != W_BIG_BLOCK:
        st[_CORRUPT] += 1


@njit(cache=True, inline="always")
def _clamp_i32(v):
    return min(v, np.int64(0x7FFFFFFF))


# ----------------------------------------------------------------------------------------------------------------
# Messages


_FATAL_REASONS = {
    E_TRUNC_HEADER: "truncated record header: only {v1} bytes left in the file",
    E_TRUNC_RECORD: "truncated record: record length {v1} but only {v2} bytes left in the file",
    E_RECORD_TOO_LONG: "record length {v1} exceeds {v2}",
    E_BLOCK_TRUNC_HEADER: "truncated block header: only {v1} bytes left in the file",
    E_BLOCK_SHORT: "block length {v1} is less than {v2}",
    E_BLOCK_ALIGN: "block length {v1} is not a multiple of 4",
    E_BLOCK_BEYOND: "block length {v1} goes beyond the end of the file ({v2} bytes left)",
    E_BLOCK_TRAILER: "trailing block length {v1} does not match the block length {v2}",
    E_BAD_BOM: "bad byte-order magic 0x{v1:08x} in section header",
}

_WARN_REASONS = {
    W_ZERO_LEN: "zero-length record",
    W_CAPLEN_BLOCK: "captured length {value} exceeds its block",
    W_BAD_IFACE: "record references undefined interface {value}",
    W_SHORT_PACKET_BLOCK: "packet block length {value} is too short for its fields",
    W_SHORT_IDB: "interface description block length {value} is too short",
    W_TOO_LONG: "record length {value} exceeds " + str(MAX_RECORD_LEN),
    W_TS_OVERFLOW: "timestamp 0x{value:016x} of its interface is outside int64 nanoseconds since the epoch",
    W_BIG_BLOCK: "block length {value} exceeds the {bound}-byte bound on one block: skipped without reading it",
}


# Kinds (Issue.kind) of the fatal errors and of the skipped records, by code.
FATAL_KINDS = {
    E_TRUNC_HEADER: "truncated-record-header",
    E_TRUNC_RECORD: "truncated-record",
    E_RECORD_TOO_LONG: "record-too-long",
    E_BLOCK_TRUNC_HEADER: "truncated-block-header",
    E_BLOCK_SHORT: "block-too-short",
    E_BLOCK_ALIGN: "block-misaligned",
    E_BLOCK_BEYOND: "block-beyond-end",
    E_BLOCK_TRAILER: "block-trailer-mismatch",
    E_BAD_BOM: "bad-byte-order-magic",
}
SKIP_KINDS = {
    W_ZERO_LEN: "zero-length-record",
    W_CAPLEN_BLOCK: "captured-length-beyond-block",
    W_BAD_IFACE: "undefined-interface",
    W_SHORT_PACKET_BLOCK: "short-packet-block",
    W_SHORT_IDB: "short-interface-block",
    W_TOO_LONG: "oversized-record",
    W_TS_OVERFLOW: "timestamp-overflow",
    W_BIG_BLOCK: "oversized-block",
}


def _fatal_error(path, code: int, offset: int, v1: int, v2: int) -> CaptureError:
    reason = _FATAL_REASONS.get(code, "fatal error {code}").format(code=code, v1=v1, v2=v2)
    return CaptureError(path, FATAL_KINDS.get(code, f"fatal-{code}"), offset, reason)


def _skipped_kind(path, kind: int, offset: int, value: int, count: int, bound: int = MAX_BLOCK_LEN) -> CaptureError:
    """The records of one kind skipped in a file: the first one's offset and value, how many."""
    if kind == W_TS_OVERFLOW:
        value &= 0xFFFFFFFFFFFFFFFF  # the raw u64 timestamp, stored in int64
    what = _WARN_REASONS.get(kind, "corrupt record (kind {kind})").format(kind=kind, value=value, bound=bound)
    return CaptureError(path, SKIP_KINDS.get(kind, f"skipped-{kind}"), offset, what, count, fatal=False)
