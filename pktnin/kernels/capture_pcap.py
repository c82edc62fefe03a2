"""Classic pcap record walk (microsecond and nanosecond magics, both byte orders), compiled."""

from __future__ import annotations

from numba import njit

from pktnin.kernels import capture_state
from pktnin.kernels.capture_state import (
    _BATCH_FULL,
    _END,
    _FRAME,
    _NEED,
    _NEED_MORE,
    E_RECORD_TOO_LONG,
    E_TRUNC_HEADER,
    E_TRUNC_RECORD,
    MAX_RECORD_LEN,
    W_ZERO_LEN,
    _clamp_i32,
    _fatal,
    _u32,
    _warn,
)
from pktnin.kernels.disk_cache import cached, source_keyed_cache_class


@njit(nogil=True)
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


# Disk cache keyed on capture_state.py too: the walk compiles in its constants and helpers.
_walk_pcap = cached(_walk_pcap, source_keyed_cache_class(capture_state))
