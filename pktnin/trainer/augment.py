"""Training-time augmentation of rows (beyond the paper).

header-jitter: the header bytes that identify a capture rather than an application (layout.CAPTURE_FIELDS) get
random bytes in every training batch, so that a network cannot learn a training capture's TTLs, IP ids or sequence
numbers; inference sees the real bytes. Measured on the corpus in docs/results.md ("Input variants").
"""

from __future__ import annotations

import numpy as np

from pktnin.layout import (
    CAPTURE_FIELDS,
    HEADER_LEN,
    ROW_IPV4_PROTOCOL_BYTE,
    ROW_IPV6_NEXT_HEADER_BYTE,
    ROW_VERSION_BYTE,
)

AUGMENTATIONS = ("none", "header-jitter")


def jitter_capture_fields(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of uint8 rows [n, 1500] with random bytes in each row's capture fields.

    A row's fields depend on its IP version and transport; rows whose transport cannot be read from the row
    (an IPv6 extension header before TCP/UDP) are left as they are.
    """
    rows = np.array(rows, dtype=np.uint8, copy=True)
    header = rows[:, :HEADER_LEN]
    ipv6 = (header[:, ROW_VERSION_BYTE] >> 4) == 6
    proto = np.where(ipv6, header[:, ROW_IPV6_NEXT_HEADER_BYTE], header[:, ROW_IPV4_PROTOCOL_BYTE])
    known = (proto == 6) | (proto == 17)
    fields = CAPTURE_FIELDS[2 * ipv6.astype(np.int64) + (proto == 17)].astype(bool) & known[:, None]
    noise = rng.integers(0, 256, size=header.shape, dtype=np.uint8)
    rows[:, :HEADER_LEN] = np.where(fields, noise, header)
    return rows
