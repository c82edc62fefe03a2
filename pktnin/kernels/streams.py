"""Window sources for inputs that cannot be memory-mapped: stdin ("-"), pipes, FIFOs, process substitution
(/dev/fd/N) and compressed captures (gzip; zstd with the optional `zstandard` package).

The capture reader walks their bytes with the same compiled record walk as a mapped file; only where the
windows come from differs. Windows move forward only, each a fresh buffer of at most STREAM_WINDOW bytes (plus
one record), so memory stays bounded. Reads on a pipe wait in short polls so that a `stop` callable can end a
wait on a pipe that is never written, and a FIFO is opened without blocking until its writer appears. A window
asked for past the bytes read (after a block the walk skips unread) reads and drops the bytes between, a bounded
read at a time. gzip is inflated here (GzipStream) rather than by gzip.GzipFile, so that damage loses nothing
decoded before it.
"""

from __future__ import annotations

import io
import os
import select
import stat
import sys
import zlib
from typing import Any

import numpy as np

from pktnin.storage import is_uri

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
UNKNOWN_SIZE = 1 << 62  # a stream's size until its end is seen
STREAM_WINDOW = 8 << 20  # bytes per window of a stream
STREAM_READ = 256 << 10  # bytes per read call: a decompression error loses at most the records of one read
POLL_S = 0.1


class DamagedStream(Exception):
    """Compressed data that cannot be decoded further (a decompressor's own error, named)."""


class ReadStopped(Exception):
    """A wait on a stream was ended by the reader's `stop` callable."""


class StreamSource:
    """Forward-only windows over a byte stream: `read(n)` returns up to n bytes, b"" at the end.

    Each window is a new buffer holding the bytes kept from the previous one (a record that straddled its end)
    and fresh reads, so a batch may keep its window while the next is read. `size` is UNKNOWN_SIZE until the
    stream ends. A decompression error ends the stream; its message is kept in `error`.
    """

    granularity = 1
    sized = False
    window_limit = STREAM_WINDOW

    def __init__(self, read, head: bytes, consumed) -> None:
        self._read = read
        self._buf = head  # stream bytes from offset self._start on
        self._start = 0
        self._consumed = consumed
        self.size = UNKNOWN_SIZE
        self.error: str | None = None

    def window(self, off: int, length: int):
        skip = off - self._start - len(self._buf)
        if skip > 0:  # past a block the walk skips unread: read and drop its bytes, a bounded read at a time
            self._buf, self._start = b"", off
            if not self._discard(skip):
                return np.empty(0, dtype=np.uint8)
        keep = self._buf[off - self._start :]
        chunks, have = [keep], len(keep)
        self._start = off
        while have < length and self.size == UNKNOWN_SIZE:
            try:
                data = self._read(min(length - have, STREAM_READ))
            except (EOFError, OSError, zlib.error, DamagedStream) as e:  # a damaged or cut compressed stream
                self.error = str(e) or type(e).__name__
                data = b""
            if not data:
                self.size = off + have
                break
            chunks.append(data)
            have += len(data)
        self._buf = b"".join(chunks) if len(chunks) > 1 else keep
        return np.frombuffer(self._buf, dtype=np.uint8)[:length]

    def _discard(self, n: int) -> bool:
        """Read and drop n bytes; False (and `size` set) when the stream ends first."""
        while n > 0:
            try:
                data = self._read(min(n, STREAM_READ))
            except (EOFError, OSError, zlib.error, DamagedStream) as e:
                self.error = str(e) or type(e).__name__
                data = b""
            if not data:
                self.size = self._start - n
                return False
            n -= len(data)
        return True

    def consumed(self, _pos: int) -> int:
        return self._consumed()

    def close(self):
        pass


class PipeReader:
    """read(n) on a pipe, FIFO or character device: waits in short polls (so `stop` can end the wait), and a
    FIFO is opened without blocking until a writer appears."""

    def __init__(self, path: str, stop) -> None:
        self._stop = stop
        self._own = True
        if path == "-":
            stdin = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
            try:
                self._fd = stdin.fileno()
                self._own = False
            except (AttributeError, OSError, ValueError):  # a replaced stdin (tests, notebooks): plain reads
                self._fd = None
                self._file: Any = stdin  # a binary stream (sys.stdin.buffer or its stand-in)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO's open() would wait for a writer
            os.set_blocking(fd, True)
            self._fd = fd
        self.count = 0

    def read(self, n: int) -> bytes:
        data: bytes
        if self._fd is None:
            data = self._file.read(n)
        else:
            while not select.select([self._fd], [], [], POLL_S)[0]:
                if self._stop is not None and self._stop():
                    raise ReadStopped(self)
            data = os.read(self._fd, n)
        self.count += len(data)
        return data

    def close(self) -> None:
        if self._fd is not None and self._own:
            os.close(self._fd)


class Prepend(io.RawIOBase):
    """The bytes already read for format detection, then the rest of the stream (for a decompressor)."""

    def __init__(self, head: bytes, read) -> None:
        self._head, self._read = head, read

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._read(len(b))
        b[: len(data)] = data
        return len(data)


GZIP_IN = 64 << 10  # compressed bytes fed to the inflater at a time
GZIP_OUT = 1 << 20  # most decoded bytes one inflate call may give (a bomb stays bounded)
GZIP_HEADER_MAX = 64 << 10  # a member header longer than this (name, comment, extra field) is refused
_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16


class GzipStream:
    """read(n) over the members of a gzip stream, inflating raw deflate and checking each member's trailer here,
    so that every byte decoded before damage (the data cut short, a bad CRC or length, junk after a member) is
    delivered first; the next read then raises zlib.error naming the damage and its compressed offset. Zero bytes
    after the last member (padding) end the stream cleanly, as gzip(1) allows."""

    def __init__(self, read) -> None:
        self._read = read
        self._in = b""  # compressed bytes read and not yet used
        self._pos = 0  # compressed offset of self._in[0]
        self._raw_end = False
        self._out: list[bytes] = []
        self._have = 0
        self._inflater: Any = None  # the current member's, None between members
        self._crc = 0
        self._size = 0
        self._members = 0
        self._error: zlib.error | None = None
        self._done = False

    def read(self, n: int) -> bytes:
        while self._have < n and not self._done:
            try:
                self._step()
            except zlib.error as e:
                self._error, self._done = e, True
        if not self._have and self._error is not None:
            raise self._error
        data = b"".join(self._out)
        self._out = [data[n:]] if len(data) > n else []
        self._have = len(data) - min(n, len(data))
        return data[:n]

    def _fill(self, k: int) -> bool:
        """At least k bytes in self._in, unless the input ends first (False)."""
        while len(self._in) < k and not self._raw_end:
            data = self._read(max(GZIP_IN, k - len(self._in)))
            if not data:
                self._raw_end = True
            self._in += data
        return len(self._in) >= k

    def _use(self, k: int) -> None:
        self._in = self._in[k:]
        self._pos += k

    def _damage(self, what: str) -> zlib.error:
        return zlib.error(f"{what} at compressed offset {self._pos}")

    def _step(self) -> None:
        if self._inflater is None:
            self._header()
            return
        if not self._in and not self._fill(1):
            raise self._damage("compressed data cut short")
        d = self._inflater
        try:
            out = d.decompress(self._in, GZIP_OUT)
        except zlib.error as e:
            raise self._damage(f"invalid compressed data ({e})") from None
        rest = d.unused_data if d.eof else d.unconsumed_tail
        self._use(len(self._in) - len(rest))
        if out:
            self._crc = zlib.crc32(out, self._crc)
            self._size += len(out)
            self._out.append(out)
            self._have += len(out)
        if d.eof:
            if not self._fill(8):
                raise self._damage("member trailer cut short")
            crc = int.from_bytes(self._in[:4], "little")
            size = int.from_bytes(self._in[4:8], "little")
            if crc != self._crc:
                raise self._damage("CRC check failed")
            if size != self._size & 0xFFFFFFFF:
                raise self._damage("length check failed")
            self._use(8)
            self._inflater = None
            self._members += 1

    def _header(self) -> None:
        if not self._fill(1):
            self._done = True  # a clean end between members
            return
        if self._members and self._in[0] == 0:  # padding after the last member: zeros to the end
            while not self._in.strip(b"\0"):
                self._use(len(self._in))
                if not self._fill(1):
                    self._done = True
                    return
            raise self._damage("junk after a gzip member")
        if not self._fill(10) or self._in[:2] != GZIP_MAGIC or self._in[2] != 8:
            raise self._damage("not a gzip member header" if self._members == 0 else "junk after a gzip member")
        flags = self._in[3]
        k = 10
        if flags & _FEXTRA:
            if not self._fill(k + 2):
                raise self._damage("member header cut short")
            k += 2 + int.from_bytes(self._in[k : k + 2], "little")
        for flag in (_FNAME, _FCOMMENT):
            if flags & flag:
                while (end := self._in.find(b"\0", k)) < 0:
                    if len(self._in) > GZIP_HEADER_MAX or not self._fill(len(self._in) + 1):
                        raise self._damage("member header cut short or too long")
                k = end + 1
        if flags & _FHCRC:
            k += 2
        if k > GZIP_HEADER_MAX or not self._fill(k):
            raise self._damage("member header cut short or too long")
        self._use(k)
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._crc = self._size = 0


ZSTD_PIECE = 16 << 10  # decoded bytes per zstd read: what an error in the middle of a read can lose


class SmallReads:
    """read(n) made of reads of at most `piece` bytes of `read`: an `errors` exception (a decompressor's) loses
    at most one piece; the bytes read before it are returned, and DamagedStream is raised by the next call."""

    def __init__(self, read, piece: int, errors: type[Exception] | tuple[type[Exception], ...]) -> None:
        self._read, self._piece, self._errors = read, piece, errors
        self._error: DamagedStream | None = None

    def read(self, n: int) -> bytes:
        if self._error is not None:
            raise self._error
        chunks, have = [], 0
        while have < n:
            try:
                data = self._read(min(n - have, self._piece))
            except self._errors as e:
                self._error = DamagedStream(str(e) or type(e).__name__)
                if not have:
                    raise self._error from e
                break
            if not data:
                break
            chunks.append(data)
            have += len(data)
        return b"".join(chunks)


def read_full(read, n: int) -> bytes:
    """Up to n bytes, fewer only at the end of the stream."""
    chunks, have = [], 0
    while have < n:
        data = read(n - have)
        if not data:
            break
        chunks.append(data)
        have += len(data)
    return b"".join(chunks)


def is_stream(path) -> bool:
    """True for "-" (stdin) and anything that is not a regular file: pipes, FIFOs, /dev/fd/N, devices."""
    if os.fspath(path) == "-":
        return True
    if is_uri(path):  # an object in a store: read by ranges
        return False
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
