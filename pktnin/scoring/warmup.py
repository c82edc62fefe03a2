"""The packet kernels compiled (or loaded from numba's cache) before a run, so that their cost is known apart
from the scoring's (the summary's start-up time) and paid once per Ray actor."""

from __future__ import annotations

import struct

from pktnin.kernels.capture import CaptureReader
from pktnin.kernels.cpu import transform


def warm_kernels() -> None:
    """Compile (or load from numba's cache) the record walks and the CPU prep kernel on a tiny capture.
    numba caches in the package's __pycache__, or in a user-wide folder when that is read-only (an image);
    NUMBA_CACHE_DIR in the workers' environment chooses another (read when numba is first imported)."""
    frame = bytes(12) + b"\x08\x00" + bytes([0x45, 0, 0, 40]) + bytes(4) + bytes([64, 6, 0, 0]) + bytes(8) + bytes(20)
    pcap = (
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        + struct.pack("<IIII", 0, 0, len(frame), len(frame))
        + frame
    )
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 0) + struct.pack("<I", 20)
    body = struct.pack("<IIIII", 0, 0, 0, len(frame), len(frame)) + frame
    epb = struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    for data in (pcap, shb + idb + epb):  # bytes: read-only buffers, like the file windows (one specialization)
        for raw in CaptureReader(data):
            transform(raw)
