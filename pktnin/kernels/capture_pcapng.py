"""pcapng block walk, compiled: several sections, each with its own byte order; several interfaces per section,
each with its own link type and timestamp resolution; EPB, SPB and the obsolete OPB; every other block type
skipped. Timestamps are computed exactly (rounded down to the nanosecond) for every if_tsresol and if_tsoffset.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pktnin.kernels import capture_state
from pktnin.kernels.capture_state import (
    _BATCH_FULL,
    _BIG,
    _BOM_BE,
    _BOM_LE,
    _CORRUPT,
    _END,
    _FRAME,
    _N_IF,
    _NEED,
    _NEED_MORE,
    _SHB_TYPE,
    E_BAD_BOM,
    E_BLOCK_ALIGN,
    E_BLOCK_BEYOND,
    E_BLOCK_SHORT,
    E_BLOCK_TRAILER,
    E_BLOCK_TRUNC_HEADER,
    MAX_RECORD_LEN,
    W_BAD_IFACE,
    W_BIG_BLOCK,
    W_CAPLEN_BLOCK,
    W_SHORT_IDB,
    W_SHORT_PACKET_BLOCK,
    W_TOO_LONG,
    W_TS_OVERFLOW,
    W_ZERO_LEN,
    _clamp_i32,
    _fatal,
    _u16,
    _u32,
    _warn,
)
from pktnin.kernels.disk_cache import cached, source_keyed_cache_class

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


@njit(nogil=True)
def _walk_pcapng(buf, pos, file_off, file_size, max_block, ifs, pkt_off, caplen, wirelen, ltype, ts_ns, frame, st):
    """Walk pcapng blocks from buf[pos]; buf starts at file offset file_off. Returns (status, pos, n); pos may lie
    beyond the window after a block longer than max_block, which is skipped without its bytes being read."""
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
        if blen > max_block:  # only its first 12 bytes were read: keep the numbering, skip the rest unread
            _warn(st, W_BIG_BLOCK, boff, blen)
            if is_shb:
                st[_BIG] = 1 if big else 0
                st[_N_IF] = 0
            elif btype == 1:  # an interface that cannot be read: its packets count as bad-interface records
                if st[_N_IF] < n_table:
                    ifs[st[_N_IF], 0] = -1
                st[_N_IF] += 1
            elif btype == 6 or btype == 3 or btype == 2:
                st[_CORRUPT] += 1
                fr += 1
            pos += blen
            continue
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


# Disk cache keyed on capture_state.py too: the walk compiles in its constants and helpers.
_walk_pcapng = cached(_walk_pcapng, source_keyed_cache_class(capture_state))
