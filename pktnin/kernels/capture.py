"""Capture reading: format detection and a compiled record walk over windows of the file read into a buffer.

The parts: pktnin.kernels.capture_state (constants, the walk state, errors, batches, messages),
capture_pcap and capture_pcapng (the compiled walks), streams (stream window sources) and this module (the
reader and its file and memory window sources).

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
    reader.records, reader.corrupt_records, reader.zero_length, reader.ts_overflow, reader.errors, reader.fatal

A reader can also walk one byte range [start, stop) of a file whose bounds are record boundaries found by an
earlier walk: it then starts at frame number `first_frame` with the pcapng section state saved there
(`reader.state()` after a batch, a ReaderState), and `reader.offset` says where the next record starts.
Offsets in batches (`base + pkt_off`), errors and `offset` are absolute file offsets.

Bad input never crashes the walk: a record or block whose framing is lost (truncated, beyond the file, above
256 KiB in classic pcap, impossible pcapng block lengths) stops the file with one fatal CaptureError, keeping the
good records before it; a damaged record whose framing is intact (a pcapng packet longer than its block, an
undefined interface) is skipped, counted in `corrupt_records` and reported once per kind with the offset of its
first occurrence. A record with captured length 0 is legal: skipped and counted in `zero_length`, no error. A
pcapng block longer than `max_block_bytes` (MAX_BLOCK_LEN by default) is skipped without being read, so memory is
bounded by the window and the bound, not by the input; it is reported with its offset (a packet block counts as
corrupt). A damaged gzip stream gives every record decoded before the damage, then a fatal error naming the
damage and its compressed offset. pcapng timestamps are computed exactly (rounded down to the nanosecond) for
every if_tsresol and if_tsoffset; a record whose time does not fit int64 nanoseconds since the epoch is skipped
and counted in `ts_overflow` (never a wrapped, wrong date).

Each CaptureError carries a typed `issue` (capture_state.Issue: kind, offset, count, bare description): reports
keep those, and their text is made only for people (`Issue.line`).
"""

from __future__ import annotations

import os
import sys
import zlib
from typing import Protocol

import numpy as np

from pktnin.kernels.capture_pcap import _walk_pcap
from pktnin.kernels.capture_pcapng import _walk_pcapng
from pktnin.kernels.capture_state import (
    _BATCH_FULL,
    _BIG,
    _CORRUPT,
    _END,
    _ERR_CODE,
    _ERR_OFF,
    _ERR_V1,
    _ERR_V2,
    _FATAL,
    _FRAME,
    _IFACE_CAPACITY,
    _IN_MEMORY_TYPES,
    _KEPT_BUFFERS,
    _MIN_RECORD_BYTES,
    _N_IF,
    _N_WARN,
    _NEED,
    _PCAP_HEADER_LEN,
    _PCAP_MAGICS,
    _STATE_LEN,
    _WARN_BASE,
    MAX_BLOCK_LEN,
    MAX_RECORD_LEN,
    W_TS_OVERFLOW,
    W_ZERO_LEN,
    WINDOW_BYTES,
    CaptureError,
    Issue,
    NotACapture,
    RawBatch,
    ReaderState,
    _fatal_error,
    _format_of_head,
    _head_bytes,
    _skipped_kind,
    detect_format,
)
from pktnin.kernels.streams import (
    GZIP_MAGIC,
    ZSTD_MAGIC,
    ZSTD_PIECE,
    DamagedStream,
    GzipStream,
    PipeReader,
    Prepend,
    ReadStopped,
    SmallReads,
    StreamSource,
    is_stream,
    read_full,
)
from pktnin.storage import is_uri, open_input

__all__ = [
    "MAX_BLOCK_LEN",
    "MAX_RECORD_LEN",
    "WINDOW_BYTES",
    "CaptureError",
    "CaptureReader",
    "Issue",
    "NotACapture",
    "RawBatch",
    "ReadStopped",
    "ReaderState",
    "WindowSource",
    "detect_format",
    "is_stream",
]


# ----------------------------------------------------------------------------------------------------------------
# Window sources


class WindowSource(Protocol):
    """Where the reader's windows come from: a file (pread), bytes in memory, or a stream (StreamSource)."""

    size: int  # bytes of input; a stream's is streams.UNKNOWN_SIZE until its end is read
    granularity: int  # windows start at multiples of this
    sized: bool  # size known when opened: a window shorter than asked for means the input was cut short since
    window_limit: int  # most bytes a window holds beyond what one record needs
    error: str | None  # why a stream ended early (damaged compressed data), else None

    def window(self, off: int, length: int) -> np.ndarray:
        """Up to `length` bytes from input offset `off`; fewer only at the end of the input."""
        ...

    def consumed(self, pos: int) -> int:
        """Bytes of the input as stored (compressed bytes for .gz) read up to offset `pos`."""
        ...

    def close(self) -> None: ...


class _FileSource:
    """Windows of a file read into one buffer with pread. A window shorter than asked for means the file was cut
    short since it was opened; the caller reports it. Nothing is mapped, so a shrinking file cannot fault."""

    granularity = 1
    sized = True
    window_limit = 1 << 62
    error = None

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
        return buf[:got]

    def close(self):
        self._f.close()


OBJECT_READ = 8 << 20  # bytes per ranged read of an object: each request has a fixed cost, so fewer, larger ones


class _ObjectSource:
    """Windows of an object in a store (pktnin.storage), cut from ranged reads of OBJECT_READ bytes (or a
    window's length when larger): the walk's windows go forward, so one request serves several of them. Each
    read fills a new buffer, never reused: a batch may keep its window while the next is read. The object is
    never downloaded whole."""

    granularity = 1
    sized = True
    window_limit = 1 << 62
    error = None

    def __init__(self, uri: str) -> None:
        self._f = open_input(uri)
        self.size = self._f.size()
        self._chunk = np.empty(0, dtype=np.uint8)
        self._chunk_off = 0

    @staticmethod
    def consumed(pos: int) -> int:
        return pos

    def window(self, off: int, length: int):
        start = off - self._chunk_off
        if start < 0 or start + length > self._chunk.shape[0]:
            self._chunk, self._chunk_off, start = self._read(off, max(length, OBJECT_READ)), off, 0
        return self._chunk[start : start + length]  # shorter only where the object ends

    def _read(self, off: int, length: int) -> np.ndarray:
        buf = np.empty(max(0, min(length, self.size - off)), dtype=np.uint8)
        self._f.seek(off)
        got = 0
        while got < buf.shape[0]:  # a short read only where the object ends (it was cut since it was opened)
            n = self._f.readinto(memoryview(buf)[got:])  # type: ignore[arg-type]  # numpy's stub: no __buffer__
            if not n:
                break
            got += n
        return buf[:got]

    def close(self):
        self._f.close()


class _MemorySource:
    granularity = 8  # small, so that in-memory runs (fuzzing) exercise the same re-read logic as files
    sized = True
    window_limit = 1 << 62
    error = None

    def __init__(self, data):
        self._arr = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        self.size = self._arr.shape[0]

    def window(self, off: int, length: int):
        return self._arr[off : off + length]

    @staticmethod
    def consumed(pos: int) -> int:
        return pos

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
        max_block_bytes: int = MAX_BLOCK_LEN,
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
        if max_block_bytes < 12:
            raise ValueError("max_block_bytes must be at least 12")
        self.max_block_bytes = int(max_block_bytes)
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
            raise CaptureError(self.path, "unreadable", 0, f"cannot read: {e.strerror or e}") from e
        except BaseException:
            self.close()
            raise
        if not head:
            self.close()
            raise NotACapture(self.path, "empty-file", 0, "empty file")
        self.format = _format_of_head(head)
        if self.format is None:
            self.close()
            raise NotACapture(
                self.path, "not-a-capture", 0, f"not a pcap or pcapng file (starts with {head[:4].hex()})"
            )
        if self.format == "pcap" and len(head) < _PCAP_HEADER_LEN:  # nothing of the file is readable
            self.close()
            raise CaptureError(
                self.path, "truncated-file-header", 0, f"truncated file header: {len(head)} of {_PCAP_HEADER_LEN} bytes"
            )
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
            with open_input(self.path) as raw:
                return read_full(self._decompressor(raw).read, _PCAP_HEADER_LEN)
        except (OSError, EOFError, zlib.error, DamagedStream) as e:
            raise CaptureError(
                self.path, "cannot-decompress", 0, f"{self.compression}-compressed, cannot decompress: {e}"
            ) from e

    def _decompressor(self, raw):
        try:
            if self.compression == "gzip":  # not gzip.GzipFile: it drops what it decoded in a read that fails
                return GzipStream(raw.read)
            try:
                import zstandard
            except ImportError:
                raise CaptureError(
                    self.path,
                    "cannot-decompress",
                    0,
                    "zstd-compressed: install the optional zstandard package to read it",
                ) from None
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            return SmallReads(reader.read, ZSTD_PIECE, zstandard.ZstdError)
        except (OSError, EOFError, zlib.error, DamagedStream) as e:
            raise CaptureError(
                self.path, "cannot-decompress", 0, f"{self.compression}-compressed, cannot decompress: {e}"
            ) from e

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
    def zero_length(self) -> int:
        """Packet records with captured length 0 (legal, nothing to score): skipped, neither corrupt nor errors."""
        return int(self._st[_WARN_BASE + 3 * W_ZERO_LEN])

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
            if kind == W_ZERO_LEN:
                continue
            base = _WARN_BASE + 3 * kind
            count = int(self._st[base])
            if count:
                first, value = int(self._st[base + 1]), int(self._st[base + 2])
                out.append(_skipped_kind(self.path, kind, first, value, count, self.max_block_bytes))
        out.sort(key=lambda e: e.offset)
        if self.fatal is not None:
            out.append(self.fatal)
        return out

    def __iter__(self):
        self._reset()
        raw = None
        source: WindowSource
        if self._in_memory:
            source = _MemorySource(self._data)
        elif self._pipe is not None:
            pipe = self._pipe
            if self.compression is None:
                source = StreamSource(pipe.read, self._head, lambda: pipe.count)
            else:
                source = StreamSource(self._stream_read, self._head, self._stream_consumed)
        elif self._streamed:
            raise CaptureError(self.path, "read-twice", 0, "a stream can be read only once")
        elif self.compression is not None:
            raw = open_input(self.path)  # closed in the finally below
            read = self._decompressor(raw).read
            source = StreamSource(read, read_full(read, len(self._head)), raw.tell)
        elif is_uri(self.path):
            source = _ObjectSource(self.path)
        else:
            source = _FileSource(self.path)
        try:
            yield from self._walk(source)
            error = source.error
            if error is not None:  # the walk's own complaint (a cut record) follows from this one
                reason = f"{self.compression or 'stream'} data cut short or damaged: {error}"
                offset = source.size if self.fatal is None else self.fatal.offset
                self.fatal = CaptureError(self.path, "damaged-stream", offset, reason)
        finally:
            source.close()
            if raw is not None:
                raw.close()
            if self._pipe is not None:
                self.close()
                self._streamed = True

    def _walk(self, source: WindowSource):
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
        window_bytes = min(self.window_bytes, source.window_limit)
        while pos < size:
            map_off = pos - pos % gran
            length = min(size - map_off, (pos - map_off) + max(window_bytes, need))
            buf = source.window(map_off, length)
            if not source.sized:
                size = source.size  # a stream's size is known once its end was read
                if size < pos:  # it ended inside a block skipped unread
                    self.fatal = CaptureError(
                        self.path,
                        "ends-in-skipped-block",
                        size,
                        f"data ends at offset {size}, inside the block skipped before it",
                    )
                    return
            elif buf.shape[0] < length:  # the file was cut short since it was opened: its data ends here
                size = self._cut_short(map_off + buf.shape[0], size)
            bpos = pos - map_off
            while True:
                # each record takes at least 12 bytes, so this bounds what one call can fill
                cap = max(1, min(self.max_records, (buf.shape[0] - bpos) // _MIN_RECORD_BYTES + 1))
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
                        buf,
                        bpos,
                        map_off,
                        size,
                        self.max_block_bytes,
                        ifs,
                        pkt_off,
                        caplen,
                        wirelen,
                        ltype,
                        ts_ns,
                        frame,
                        st,
                    )
                self.offset = map_off + bpos
                if n:
                    self.records += n
                    yield RawBatch(buf, pkt_off[:n], caplen[:n], wirelen[:n], ltype[:n], ts_ns[:n], frame[:n],
                                   map_off, source.consumed(map_off + bpos))  # fmt: skip
                if status != _BATCH_FULL:
                    break
            pos = map_off + bpos
            del buf  # unreferenced, so that the source can reuse its buffer for the next window
            if self.fatal is not None:  # cut short: that, not the record the cut broke, is the file's error
                return
            if status == _FATAL:
                code, v1, v2 = int(st[_ERR_CODE]), int(st[_ERR_V1]), int(st[_ERR_V2])
                self.fatal = _fatal_error(self.path, code, int(st[_ERR_OFF]), v1, v2)
                return
            if status == _END:
                return
            need = int(st[_NEED])  # _NEED_MORE: the next window starts at pos and holds at least `need` bytes

    def _cut_short(self, end: int, size: int | None) -> int:
        """Record that the file's data ended at `end` (it had `size` bytes when opened); the walk stops there."""
        had = f"it had {size} bytes when opened" if size is not None else f"{len(self._head)} bytes were read before"
        self.fatal = CaptureError(
            self.path, "cut-short", end, f"file cut short at offset {end} while being read ({had})"
        )
        return end
