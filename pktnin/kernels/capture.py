"""Capture reading: format detection and a compiled record walk over windows of the file read into a buffer.

Classic pcap (microsecond and nanosecond magics, both byte orders) and pcapng (several sections, each with its
own byte order; several interfaces per section, each with its own link type and timestamp resolution; EPB, SPB
and the obsolete OPB; every other block type skipped). The format comes from the magic number, never from the
file name.

The file is read in windows of `window_bytes` into reused buffers (pread, never a memory map: a file cut
short while it is read gives a short read, reported as "cut short at offset N" with the records before it kept,
where a map would fault with SIGBUS past the new end). A numba function walks the complete records inside a
window and says how far it got; a record that straddles the window end is read again from the next window, so
memory stays bounded whatever the file size and no Python code runs per packet. The pcapng state (byte order,
interface table) lives in small arrays that persist across windows.

Streams (stdin as "-", pipes, FIFOs, process substitution) and compressed files (.gz, and .zst with the optional
`zstandard` package; recognised by their magic number) are read by a window source of their own: sequential
windows over the decompressed bytes, fed to the same record walk, so memory stays bounded and the rows are those
of a regular file. The file size is unknown until the stream ends. A stream is read once; its reads wait in
short polls so that `should_stop` (a callable) can end a wait on a pipe that is never written.

    reader = CaptureReader("x.pcapng")      # raises NotACapture (offset 0) for empty and non-capture files
    for raw in reader:                      # RawBatch; raw.buf is valid until the next batch is read
        ...
    reader.records, reader.corrupt_records, reader.ts_overflow, reader.errors, reader.fatal

A reader can also walk one byte range [start, stop) of a file whose bounds are record boundaries found by an
earlier walk: it then starts at frame number `first_frame` with the pcapng section state saved there
(`reader.state()` after a batch, a ReaderState), and `reader.offset` says where the next record starts.
Offsets in batches (`base + pkt_off`), errors and `offset` are absolute file offsets.

Bad input never crashes the walk: a record or block whose framing is lost (truncated, beyond the file, above
256 KiB in classic pcap, impossible pcapng block lengths) stops the file with one fatal CaptureError, keeping the
good records before it; a damaged record whose framing is intact (zero length, a pcapng packet longer than its
block, an undefined interface) is skipped, counted in `corrupt_records` and reported once per kind with the
offset of its first occurrence. pcapng timestamps are computed exactly (rounded down to the nanosecond) for
every if_tsresol and if_tsoffset; a record whose time does not fit int64 nanoseconds since the epoch is skipped
and counted in `ts_overflow` (never a wrapped, wrong date).
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from typing import NamedTuple

import numpy as np
from numba import njit

from pktnin.kernels.streams import (
    GZIP_MAGIC,
    STREAM_WINDOW,
    ZSTD_MAGIC,
    PipeReader,
    Prepend,
    ReadStopped,
    StreamSource,
    is_stream,
    read_full,
)

__all__ = [
    "MAX_RECORD_LEN",
    "WINDOW_BYTES",
    "CaptureError",
    "CaptureReader",
    "NotACapture",
    "RawBatch",
    "ReadStopped",
    "ReaderState",
    "detect_format",
    "is_stream",
]

MAX_RECORD_LEN = 256 * 1024  # larger captured lengths mean the framing is lost (classic pcap) or the record is bad
# Bytes read per window: small enough that the windows in flight (being read, read ahead, being transformed) stay
# in the CPU's last-level cache (2 MiB ran ~10% faster than 8 MiB with the walk on a thread of its own, 2 cores),
# large enough that the calls per window stay few.
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
W_ZERO_LEN = 0
W_CAPLEN_BLOCK = 1
W_BAD_IFACE = 2
W_SHORT_PACKET_BLOCK = 3
W_SHORT_IDB = 4
W_TOO_LONG = 5
W_TS_OVERFLOW = 6  # the record's time is outside int64 nanoseconds since the epoch: skipped, not corrupt
_N_WARN = 7
_STATE_LEN = _WARN_BASE + 3 * _N_WARN

_IFACE_CAPACITY = 65536  # interfaces per pcapng section kept in the table; ids beyond it count as undefined
_MIN_RECORD_BYTES = 12  # smallest record or block: bounds the output arrays one walk call can fill


# ----------------------------------------------------------------------------------------------------------------
# Errors and batches


class CaptureError(Exception):
    """A problem in a capture file, at a byte offset."""

    def __init__(self, path, offset: int, reason: str):
        self.path = str(path)
        self.offset = int(offset)
        self.reason = reason
        super().__init__(f"{os.path.basename(self.path) or self.path}: offset {self.offset}: {reason}")


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
    with open(path_or_bytes, "rb") as f:
        return f.read(n)


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
    if kind != W_SHORT_IDB and kind != W_TS_OVERFLOW:  # an IDB is not a packet record; a bad time is no damage
        st[_CORRUPT] += 1


@njit(cache=True, inline="always")
def _clamp_i32(v):
    return min(v, np.int64(0x7FFFFFFF))


@njit(cache=True, nogil=True)
def _walk_pcap(
    buf, pos, file_off, file_size, big, nanosecond, linktype, pkt_off, caplen, wirelen, ltype, ts_ns, frame, st
):
    """Walk classic pcap records from buf[pos]; buf starts at file offset file_off. Returns (status, pos, n)."""
    end = buf.shape[0]
    cap = pkt_off.shape[0]
    frac_ns = 1 if nanosecond else 1000
    fr = st[_FRAME]
    n = 0
    status = _END
    while True:
        if n == cap:
            status = _BATCH_FULL
            break
        left = file_size - (file_off + pos)
        if left <= 0:
            status = _END
            break
        if pos + 16 > end:
            if left < 16:
                status = _fatal(st, E_TRUNC_HEADER, file_off + pos, left, 0)
            else:
                st[_NEED] = 16
                status = _NEED_MORE
            break
        cl = _u32(buf, pos + 8, big)
        if cl > MAX_RECORD_LEN:
            status = _fatal(st, E_RECORD_TOO_LONG, file_off + pos, cl, MAX_RECORD_LEN)
            break
        if cl > left - 16:
            status = _fatal(st, E_TRUNC_RECORD, file_off + pos, cl, left - 16)
            break
        if pos + 16 + cl > end:
            st[_NEED] = 16 + cl
            status = _NEED_MORE
            break
        if cl == 0:
            _warn(st, W_ZERO_LEN, file_off + pos, 0)
        else:
            pkt_off[n] = pos + 16
            caplen[n] = cl
            wirelen[n] = _clamp_i32(_u32(buf, pos + 12, big))
            ltype[n] = linktype
            ts_ns[n] = _u32(buf, pos, big) * 1_000_000_000 + _u32(buf, pos + 4, big) * frac_ns
            frame[n] = fr
            n += 1
        fr += 1
        pos += 16 + cl
    st[_FRAME] = fr
    return status, pos, n


# pcapng timestamp modes (interface table column 1).
TS_MUL = 0  # 10^-r s, r <= 9: param = ns per unit, per_s = units per second
TS_DIV = 1  # 10^-r s, 10 <= r <= 28: param = units per ns (as uint64 bits)
TS_BIN = 2  # 2^-k s: param = k (0..127)
TS_ZERO = 3  # 10^-r s, r >= 29: any u64 count is below 1 ns
_NS = 1_000_000_000
# int64 ns range as whole seconds and the nanoseconds allowed in the last second at each end
_MAX_S = 9223372036  # INT64_MAX = _MAX_S * 1e9 + _MAX_S_NS
_MAX_S_NS = 854775807
_MIN_S = 9223372037  # INT64_MIN = -_MIN_S * 1e9 + _MIN_S_NS
_MIN_S_NS = 145224192


@njit(cache=True, inline="always")
def _bin_frac_ns(frac, k):
    """floor(frac * 1e9 / 2^k) for a uint64 frac, k in 0..127, without a 128-bit product."""
    ns1 = np.uint64(_NS)
    if k <= 32:  # frac < 2^32 here, so frac * 1e9 < 2^62
        return (frac * ns1) >> np.uint64(k)
    # frac * 1e9 = hi*1e9 * 2^32 + lo*1e9; a = floor(frac * 1e9 / 2^32) < 2^63
    a = (frac >> np.uint64(32)) * ns1 + (((frac & np.uint64(0xFFFFFFFF)) * ns1) >> np.uint64(32))
    if k - 32 >= 64:
        return np.uint64(0)
    return a >> np.uint64(k - 32)


@njit(cache=True, inline="always")
def _ts_to_ns(ts, mode, param, per_s, off_s):
    """(ok, ns): a pcapng timestamp (u64 bits in ts) plus the interface's if_tsoffset (signed seconds) as int64
    ns since the epoch, exact and rounded down; ok is False when the result does not fit int64."""
    u = np.uint64(ts)
    ns1 = np.uint64(_NS)
    if mode == TS_MUL:
        units = np.uint64(per_s)
        w = u // units
        r = (u - w * units) * np.uint64(param)
    elif mode == TS_DIV:
        n = u // np.uint64(param)
        w = n // ns1
        r = n - w * ns1
    elif mode == TS_BIN:
        k = param
        if k >= 64:
            w = np.uint64(0)
            frac = u
        else:
            w = u >> np.uint64(k)
            frac = u & ((np.uint64(1) << np.uint64(k)) - np.uint64(1))
        r = _bin_frac_ns(frac, k)
    else:
        w = np.uint64(0)
        r = np.uint64(0)
    # whole seconds w (u64) + off_s (i64), then range-check against int64 ns without overflowing
    if off_s >= 0:
        o = np.uint64(off_s)
        if w > np.uint64(0xFFFFFFFFFFFFFFFF) - o:
            return False, np.int64(0)
        w = w + o
        neg = False
    else:
        m = np.uint64(-(off_s + 1)) + np.uint64(1)  # |off_s|, up to 2^63
        if w >= m:
            w = w - m
            neg = False
        else:
            w = m - w
            neg = True
    if not neg:
        if w < np.uint64(_MAX_S) or (w == np.uint64(_MAX_S) and r <= np.uint64(_MAX_S_NS)):
            return True, np.int64(w) * _NS + np.int64(r)
        return False, np.int64(0)
    if w < np.uint64(_MIN_S) or (w == np.uint64(_MIN_S) and r >= np.uint64(_MIN_S_NS)):
        # -(w * 1e9) + r, arranged so that no intermediate leaves int64
        return True, -(np.int64(w - np.uint64(1)) * _NS) - np.int64(ns1 - r)
    return False, np.int64(0)


@njit(cache=True, nogil=True)
def _parse_idb(buf, pos, blen, big, ifs, st, boff):
    """Append the interface of the IDB at buf[pos] (whole block inside buf) to the section's table."""
    idx = st[_N_IF]
    st[_N_IF] = idx + 1
    if idx >= ifs.shape[0]:
        return
    if blen < 20:
        _warn(st, W_SHORT_IDB, boff, blen)
        ifs[idx, 0] = -1
        return
    mode = TS_MUL
    param = np.int64(1000)  # default resolution 1e-6 s
    per_s = np.int64(1_000_000)
    tsoff = np.int64(0)
    o = pos + 16
    opt_end = pos + blen - 4
    while o + 4 <= opt_end:
        code = _u16(buf, o, big)
        olen = _u16(buf, o + 2, big)
        if code == 0:
            break
        v = o + 4
        if v + olen > opt_end:
            break
        if code == 9 and olen >= 1:  # if_tsresol
            r = np.int64(buf[v])
            if r & 0x80:
                mode = TS_BIN
                param = r & 0x7F
                per_s = np.int64(0)
            elif r <= 9:
                mode = TS_MUL
                param = np.int64(1)
                per_s = np.int64(1)
                for _ in range(9 - r):
                    param *= 10
                for _ in range(r):
                    per_s *= 10
            elif r <= 28:
                mode = TS_DIV
                div = np.uint64(1)
                for _ in range(r - 9):
                    div *= np.uint64(10)
                param = np.int64(div)  # 10^19 for r = 28 keeps its bits; read back as uint64
                per_s = np.int64(0)
            else:
                mode = TS_ZERO
                param = np.int64(0)
                per_s = np.int64(0)
        elif code == 14 and olen >= 8:  # if_tsoffset, signed seconds
            if big:
                tsoff = (_u32(buf, v, big) << 32) | _u32(buf, v + 4, big)
            else:
                tsoff = (_u32(buf, v + 4, big) << 32) | _u32(buf, v, big)
        o = v + ((olen + 3) & ~3)
    ifs[idx, 0] = _u16(buf, pos + 8, big)
    ifs[idx, 1] = mode
    ifs[idx, 2] = param
    ifs[idx, 3] = tsoff
    ifs[idx, 4] = per_s


@njit(cache=True, nogil=True)
def _walk_pcapng(buf, pos, file_off, file_size, ifs, pkt_off, caplen, wirelen, ltype, ts_ns, frame, st):
    """Walk pcapng blocks from buf[pos]; buf starts at file offset file_off. Returns (status, pos, n)."""
    end = buf.shape[0]
    cap = pkt_off.shape[0]
    n_table = ifs.shape[0]
    fr = st[_FRAME]
    n = 0
    status = _END
    while True:
        if n == cap:
            status = _BATCH_FULL
            break
        boff = file_off + pos
        left = file_size - boff
        if left <= 0:
            status = _END
            break
        if pos + 12 > end:
            if left < 12:
                status = _fatal(st, E_BLOCK_TRUNC_HEADER, boff, left, 0)
            else:
                st[_NEED] = 12
                status = _NEED_MORE
            break
        is_shb = _u32(buf, pos, False) == _SHB_TYPE  # the SHB type reads the same in both orders
        if is_shb:
            bom = _u32(buf, pos + 8, False)
            if bom == _BOM_LE:
                big = False
            elif bom == _BOM_BE:
                big = True
            else:
                status = _fatal(st, E_BAD_BOM, boff, bom, 0)
                break
            btype = np.int64(_SHB_TYPE)
            min_len = 28
        else:
            big = st[_BIG] != 0
            btype = _u32(buf, pos, big)
            min_len = 12
        blen = _u32(buf, pos + 4, big)
        if blen < min_len:
            status = _fatal(st, E_BLOCK_SHORT, boff, blen, min_len)
            break
        if blen & 3:
            status = _fatal(st, E_BLOCK_ALIGN, boff, blen, 0)
            break
        if blen > left:
            status = _fatal(st, E_BLOCK_BEYOND, boff, blen, left)
            break
        if pos + blen > end:
            st[_NEED] = blen
            status = _NEED_MORE
            break
        trailer = _u32(buf, pos + blen - 4, big)
        if trailer != blen:
            status = _fatal(st, E_BLOCK_TRAILER, boff, trailer, blen)
            break

        if is_shb:  # a new section: its own byte order, an empty interface table
            st[_BIG] = 1 if big else 0
            st[_N_IF] = 0
        elif btype == 1:
            _parse_idb(buf, pos, blen, big, ifs, st, boff)
        elif btype == 6 or btype == 3 or btype == 2:  # EPB, SPB, OPB
            if btype == 3:
                fixed = 16
            else:
                fixed = 32
            if blen < fixed:
                _warn(st, W_SHORT_PACKET_BLOCK, boff, blen)
            else:
                room = blen - fixed
                if btype == 3:
                    if_id = np.int64(0)
                    ol = _u32(buf, pos + 8, big)
                    cl = min(ol, room)
                    data = pos + 12
                    ts = np.int64(0)
                else:
                    if btype == 6:
                        if_id = _u32(buf, pos + 8, big)
                    else:
                        if_id = _u16(buf, pos + 8, big)
                    ts = (_u32(buf, pos + 12, big) << 32) | _u32(buf, pos + 16, big)
                    cl = _u32(buf, pos + 20, big)
                    ol = _u32(buf, pos + 24, big)
                    data = pos + 28
                if cl > room:
                    _warn(st, W_CAPLEN_BLOCK, boff, cl)
                elif cl > MAX_RECORD_LEN:
                    _warn(st, W_TOO_LONG, boff, cl)
                elif if_id >= st[_N_IF] or if_id >= n_table or ifs[if_id, 0] < 0:
                    _warn(st, W_BAD_IFACE, boff, if_id)
                elif cl == 0:
                    _warn(st, W_ZERO_LEN, boff, 0)
                else:
                    ok = True
                    t_ns = np.int64(0)
                    if btype != 3:
                        ok, t_ns = _ts_to_ns(ts, ifs[if_id, 1], ifs[if_id, 2], ifs[if_id, 4], ifs[if_id, 3])
                    if not ok:
                        _warn(st, W_TS_OVERFLOW, boff, ts)
                    else:
                        pkt_off[n] = data
                        caplen[n] = cl
                        wirelen[n] = _clamp_i32(ol)
                        ltype[n] = ifs[if_id, 0]
                        ts_ns[n] = t_ns
                        frame[n] = fr
                        n += 1
            fr += 1
        pos += blen
    st[_FRAME] = fr
    return status, pos, n


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
}


def _fatal_reason(code: int, v1: int, v2: int) -> str:
    return _FATAL_REASONS.get(code, "fatal error {code}").format(code=code, v1=v1, v2=v2)


def _warn_reason(kind: int, value: int, count: int) -> str:
    if kind == W_TS_OVERFLOW:
        value &= 0xFFFFFFFFFFFFFFFF  # the raw u64 timestamp, stored in int64
    what = _WARN_REASONS.get(kind, "corrupt record (kind {kind})").format(kind=kind, value=value)
    return f"{what} (first of {count} in this file, skipped)"


# ----------------------------------------------------------------------------------------------------------------
# Window sources


class _FileSource:
    """Windows of a file read into one buffer with pread. A window shorter than asked for means the file was cut
    short since it was opened; the caller reports it. Nothing is mapped, so a shrinking file cannot fault."""

    granularity = 1

    def __init__(self, path):
        self._f = open(path, "rb")
        self.size = os.fstat(self._f.fileno()).st_size
        self._bufs: list[np.ndarray] = []

    def _buffer(self, length: int) -> np.ndarray:
        # Buffers in turn: the consumer still holds earlier windows' batches (one, or a few when the walk runs
        # ahead on a thread of its own) while the next window is read. A buffer is reused only when no batch holds a view of it any more (views keep their bytes): views
        # hold the array through .base, which shows in its reference count (the list and the call's argument: 2).
        for i in range(len(self._bufs)):
            if self._bufs[i].shape[0] >= length and sys.getrefcount(self._bufs[i]) == 2:
                return self._bufs[i]
        buf = np.empty(length, dtype=np.uint8)
        self._bufs = [buf] + self._bufs[: _KEPT_BUFFERS - 1]
        return buf

    @staticmethod
    def consumed(pos: int) -> int:
        return pos

    def window(self, off: int, length: int):
        buf = self._buffer(length)
        fd = self._f.fileno()
        got = 0
        with memoryview(buf) as view:  # type: ignore[arg-type]  # numpy's stub lacks __buffer__ before Python 3.12
            while got < length:
                n = os.preadv(fd, [view[got:length]], off + got)
                if n <= 0:
                    break
                got += n
        return buf[:got], None

    @staticmethod
    def release(_handle):
        pass

    def close(self):
        self._f.close()


class _MemorySource:
    granularity = 8  # small, so that in-memory runs (fuzzing) exercise the same re-read logic as files

    def __init__(self, data):
        self._arr = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        self.size = self._arr.shape[0]

    def window(self, off: int, length: int):
        return self._arr[off : off + length], None

    @staticmethod
    def consumed(pos: int) -> int:
        return pos

    @staticmethod
    def release(_handle):
        pass

    def close(self):
        pass


# ----------------------------------------------------------------------------------------------------------------
# Reader


class CaptureReader:
    """Iterate over the records of one capture as RawBatch chunks.

    `path` is a file path, or bytes-like data read from memory (named "<memory>"). The constructor detects the
    format and raises NotACapture (offset 0) for empty and non-capture files, CaptureError for unreadable ones;
    problems inside the file never raise: they end up in `.errors` / `.fatal` after iteration. Each iteration
    walks the file from the start, or only [start, stop) from frame `first_frame` with pcapng `state` (see the
    module docstring): both bounds must be record boundaries, else the walk stops with a framing error there.
    """

    interface_capacity = _IFACE_CAPACITY  # pcapng interfaces per section kept; higher ids count as undefined

    def __init__(
        self,
        path,
        window_bytes: int = WINDOW_BYTES,
        max_records: int = 65536,
        *,
        start: int | None = None,
        stop: int | None = None,
        first_frame: int = 0,
        state: ReaderState | None = None,
        should_stop=None,
    ):
        if window_bytes < 1 or max_records < 1:
            raise ValueError("window_bytes and max_records must be positive")
        if (start is not None and start < 0) or (stop is not None and stop < (start or 0)) or first_frame < 0:
            raise ValueError(f"bad byte range [{start}, {stop}) or first frame {first_frame}")
        self.start, self.stop, self.first_frame, self.start_state = start, stop, int(first_frame), state
        self._in_memory = isinstance(path, _IN_MEMORY_TYPES)
        self._data = path if self._in_memory else None
        self.path = "<memory>" if self._in_memory else os.fspath(path)
        self.window_bytes = int(window_bytes)
        self.max_records = int(max_records)
        self._should_stop = should_stop
        self.compression: str | None = None  # "gzip" or "zstd"
        self._pipe: PipeReader | None = None  # an open stream, read once
        self._streamed = False
        try:
            if not self._in_memory and is_stream(self.path):
                self._pipe = PipeReader(self.path, should_stop)
                head = read_full(self._pipe.read, _PCAP_HEADER_LEN)
            else:
                head = _head_bytes(path, _PCAP_HEADER_LEN)
            if not self._in_memory:
                head = self._detect_compression(head)
        except OSError as e:
            self.close()
            raise CaptureError(self.path, 0, f"cannot read: {e.strerror or e}") from e
        except BaseException:
            self.close()
            raise
        if not head:
            self.close()
            raise NotACapture(self.path, 0, "empty file")
        self.format = _format_of_head(head)
        if self.format is None:
            self.close()
            raise NotACapture(self.path, 0, f"not a pcap or pcapng file (starts with {head[:4].hex()})")
        if self.format == "pcap" and len(head) < _PCAP_HEADER_LEN:  # nothing of the file is readable
            self.close()
            raise CaptureError(self.path, 0, f"truncated file header: {len(head)} of {_PCAP_HEADER_LEN} bytes")
        self._head = head  # the classic pcap file header, parsed again at each iteration
        self._reset()

    def _detect_compression(self, head: bytes) -> bytes:
        """Note gzip/zstd from the magic; for a stream, wrap it in the decompressor. Returns the capture's head."""
        if head.startswith(GZIP_MAGIC):
            self.compression = "gzip"
        elif head.startswith(ZSTD_MAGIC):
            self.compression = "zstd"
        else:
            return head
        try:
            if self._pipe is not None:
                pipe = self._pipe
                self._stream_read = self._decompressor(Prepend(head, pipe.read)).read
                self._stream_consumed = lambda: pipe.count
                return read_full(self._stream_read, _PCAP_HEADER_LEN)
            with open(self.path, "rb") as raw:
                return read_full(self._decompressor(raw).read, _PCAP_HEADER_LEN)
        except (OSError, EOFError, zlib.error) as e:
            raise CaptureError(self.path, 0, f"{self.compression}-compressed, cannot decompress: {e}") from e

    def _decompressor(self, raw):
        try:
            if self.compression == "gzip":
                return gzip.GzipFile(fileobj=raw, mode="rb")
            try:
                import zstandard
            except ImportError:
                raise CaptureError(
                    self.path, 0, "zstd-compressed: install the optional zstandard package to read it"
                ) from None
            return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        except (OSError, EOFError, zlib.error) as e:
            raise CaptureError(self.path, 0, f"{self.compression}-compressed, cannot decompress: {e}") from e

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def _reset(self):
        self._st = np.zeros(_STATE_LEN, dtype=np.int64)
        self._st[_FRAME] = self.first_frame
        self._ifs = np.zeros((self.interface_capacity, 5), dtype=np.int64) if self.format == "pcapng" else None
        self.records = 0
        self.offset = 0  # file offset of the next record to walk
        self.fatal: CaptureError | None = None

    def state(self) -> ReaderState | None:
        """The pcapng section state at `offset` (None for classic pcap), to start another reader there."""
        if self._ifs is None:
            return None
        n = int(self._st[_N_IF])
        rows = tuple(tuple(int(v) for v in row) for row in self._ifs[: min(n, self.interface_capacity)])
        return ReaderState(bool(self._st[_BIG]), n, rows)

    def _restore_state(self, state: ReaderState) -> None:
        self._st[_BIG] = 1 if state.big_endian else 0
        self._st[_N_IF] = state.n_interfaces
        if state.interfaces:
            self._ifs[: len(state.interfaces)] = np.asarray(state.interfaces, dtype=np.int64)

    @property
    def corrupt_records(self) -> int:
        return int(self._st[_CORRUPT])

    @property
    def ts_overflow(self) -> int:
        """Packet records skipped because their time does not fit int64 nanoseconds since the epoch."""
        return int(self._st[_WARN_BASE + 3 * W_TS_OVERFLOW])

    @property
    def frames(self) -> int:
        """Packet records seen (good, corrupt and with an out-of-range time), counted from `first_frame`: the next
        record's frame number."""
        return int(self._st[_FRAME])

    @property
    def errors(self) -> list[CaptureError]:
        """One CaptureError per kind of skipped record (first offset), then the fatal error if any."""
        out = []
        for kind in range(_N_WARN):
            base = _WARN_BASE + 3 * kind
            count = int(self._st[base])
            if count:
                reason = _warn_reason(kind, int(self._st[base + 2]), count)
                out.append(CaptureError(self.path, int(self._st[base + 1]), reason))
        out.sort(key=lambda e: e.offset)
        if self.fatal is not None:
            out.append(self.fatal)
        return out

    def report(self) -> dict:
        """Per-file summary, JSON-ready."""
        return {
            "path": self.path,
            "format": self.format,
            "records": self.records,
            "corrupt_records": self.corrupt_records,
            "ts_overflow": self.ts_overflow,
            "frames": self.frames,
            "errors": [str(e) for e in self.errors],
            "fatal": None if self.fatal is None else str(self.fatal),
        }

    def __iter__(self):
        self._reset()
        raw = None
        if self._in_memory:
            source = _MemorySource(self._data)
        elif self._pipe is not None:
            pipe = self._pipe
            if self.compression is None:
                source = StreamSource(pipe.read, self._head, lambda: pipe.count)
            else:
                source = StreamSource(self._stream_read, self._head, self._stream_consumed)
        elif self._streamed:
            raise CaptureError(self.path, 0, "a stream can be read only once")
        elif self.compression is not None:
            raw = open(self.path, "rb")  # noqa: SIM115 - closed in the finally below
            read = self._decompressor(raw).read
            source = StreamSource(read, read_full(read, len(self._head)), raw.tell)
        else:
            source = _FileSource(self.path)
        try:
            yield from self._walk(source)
            error = getattr(source, "error", None)
            if error is not None:  # the walk's own complaint (a cut record) follows from this one
                reason = f"{self.compression or 'stream'} data cut short or damaged: {error}"
                offset = source.size if self.fatal is None else self.fatal.offset
                self.fatal = CaptureError(self.path, offset, reason)
        finally:
            source.close()
            if raw is not None:
                raw.close()
            if self._pipe is not None:
                self.close()
                self._streamed = True

    def _walk(self, source):
        st = self._st
        size = source.size
        if size < len(self._head):  # the file shrank since its first bytes were read (in the constructor)
            self._cut_short(size, None)
            return
        if self.stop is not None:
            size = min(size, self.stop)  # a byte range: the walk ends here
        if self.format == "pcap":
            hdr = self._head
            big, nanosecond = _PCAP_MAGICS[int.from_bytes(hdr[:4], "little")]
            link = int.from_bytes(hdr[20:24], "big" if big else "little") & 0xFFFF  # drop FCS and reserved bits
            pos = _PCAP_HEADER_LEN if self.start is None else max(self.start, _PCAP_HEADER_LEN)
        else:
            ifs = self._ifs
            pos = self.start or 0
            if self.start_state is not None:
                self._restore_state(self.start_state)
        self.offset = pos
        need = 0
        gran = source.granularity
        window_bytes = min(self.window_bytes, STREAM_WINDOW) if isinstance(source, StreamSource) else self.window_bytes
        while pos < size:
            map_off = pos - pos % gran
            length = min(size - map_off, (pos - map_off) + max(window_bytes, need))
            buf, handle = source.window(map_off, length)
            if isinstance(source, StreamSource):
                size = source.size  # a stream's size is known once its end was read
            elif buf.shape[0] < length:  # the file was cut short since it was opened: its data ends here
                size = self._cut_short(map_off + buf.shape[0], size)
            bpos = pos - map_off
            while True:
                # each record takes at least 12 bytes, so this bounds what one call can fill
                cap = min(self.max_records, (buf.shape[0] - bpos) // _MIN_RECORD_BYTES + 1)
                pkt_off = np.empty(cap, np.int64)
                caplen = np.empty(cap, np.int32)
                wirelen = np.empty(cap, np.int32)
                ltype = np.empty(cap, np.int32)
                ts_ns = np.empty(cap, np.int64)
                frame = np.empty(cap, np.int64)
                if self.format == "pcap":
                    status, bpos, n = _walk_pcap(
                        buf,
                        bpos,
                        map_off,
                        size,
                        big,
                        nanosecond,
                        link,
                        pkt_off,
                        caplen,
                        wirelen,
                        ltype,
                        ts_ns,
                        frame,
                        st,
                    )
                else:
                    status, bpos, n = _walk_pcapng(
                        buf, bpos, map_off, size, ifs, pkt_off, caplen, wirelen, ltype, ts_ns, frame, st
                    )
                self.offset = map_off + bpos
                if n:
                    self.records += n
                    yield RawBatch(buf, pkt_off[:n], caplen[:n], wirelen[:n], ltype[:n], ts_ns[:n], frame[:n],
                                   map_off, source.consumed(map_off + bpos))  # fmt: skip
                if status != _BATCH_FULL:
                    break
            pos = map_off + bpos
            del buf
            source.release(handle)
            if self.fatal is not None:  # cut short: that, not the record the cut broke, is the file's error
                return
            if status == _FATAL:
                self.fatal = CaptureError(
                    self.path, int(st[_ERR_OFF]), _fatal_reason(int(st[_ERR_CODE]), int(st[_ERR_V1]), int(st[_ERR_V2]))
                )
                return
            if status == _END:
                return
            need = int(st[_NEED])  # _NEED_MORE: the next window starts at pos and holds at least `need` bytes

    def _cut_short(self, end: int, size: int | None) -> int:
        """Record that the file's data ended at `end` (it had `size` bytes when opened); the walk stops there."""
        had = f"it had {size} bytes when opened" if size is not None else f"{len(self._head)} bytes were read before"
        self.fatal = CaptureError(self.path, end, f"file cut short at offset {end} while being read ({had})")
        return end
