"""Window sources for inputs that cannot be memory-mapped: stdin ("-"), pipes, FIFOs, process substitution
(/dev/fd/N) and compressed captures (gzip; zstd with the optional `zstandard` package).

The capture reader walks their bytes with the same compiled record walk as a mapped file; only where the
windows come from differs. Windows move forward only, each a fresh buffer of at most STREAM_WINDOW bytes (plus
one record), so memory stays bounded. Reads on a pipe wait in short polls so that a `stop` callable can end a
wait on a pipe that is never written, and a FIFO is opened without blocking until its writer appears.
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

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
UNKNOWN_SIZE = 1 << 62  # a stream's size until its end is seen
STREAM_WINDOW = 8 << 20  # bytes per window of a stream
STREAM_READ = 256 << 10  # bytes per read call: a decompression error loses at most the records of one read
POLL_S = 0.1


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
        keep = self._buf[off - self._start :]
        chunks, have = [keep], len(keep)
        self._start = off
        while have < length and self.size == UNKNOWN_SIZE:
            try:
                data = self._read(min(length - have, STREAM_READ))
            except (EOFError, OSError, zlib.error) as e:  # a damaged or cut compressed stream
                self.error = str(e) or type(e).__name__
                data = b""
            if not data:
                self.size = off + have
                break
            chunks.append(data)
            have += len(data)
        self._buf = b"".join(chunks) if len(chunks) > 1 else keep
        return np.frombuffer(self._buf, dtype=np.uint8)[:length]

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
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
