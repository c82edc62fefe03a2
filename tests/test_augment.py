"""header-jitter augmentation: which row bytes it may change, on rows the real kernel made (numpy only)."""

from __future__ import annotations

import numpy as np
import packetgen as pg
import pytest

from pktnin import layout
from pktnin.kernels import cpu
from pktnin.trainer.augment import jitter_capture_fields

PAYLOAD = pg.payload_bytes(64)
# (name, raw IP packet, row byte offsets of its capture fields, written out by hand from RFC 791/793/768/8200)
PACKETS = [
    ("ipv4-tcp", pg.ipv4(pg.tcp(payload=PAYLOAD)), [4, 5, 8, 10, 11, *range(24, 32), 36, 37]),
    ("ipv4-udp", pg.ipv4(pg.udp(payload=PAYLOAD), proto=17), [4, 5, 8, 10, 11, 26, 27]),
    ("ipv6-tcp", pg.ipv6(pg.tcp(payload=PAYLOAD)), [7, *range(24, 32), 36, 37]),
    ("ipv6-udp", pg.ipv6(pg.udp(payload=PAYLOAD), next_header=17), [7, 26, 27]),
    ("ipv6-ext-tcp", pg.ipv6(pg.tcp(payload=PAYLOAD), ext=[pg.ext_options()]), []),  # transport not in the row
]


def kernel_rows() -> np.ndarray:
    rows, meta = cpu.transform(pg.batch([(pg.ethernet(ip), layout.LINK_ETHERNET) for _, ip, _ in PACKETS]))
    assert rows.shape[0] == len(PACKETS)
    return rows


@pytest.mark.parametrize("index", range(len(PACKETS)), ids=[p[0] for p in PACKETS])
def test_only_the_capture_fields_change(index):
    rows = kernel_rows()
    fields = PACKETS[index][2]
    before = np.repeat(rows[index : index + 1], 64, axis=0)
    after = jitter_capture_fields(before, np.random.default_rng(index))
    changed = np.flatnonzero((after != before).any(axis=0))
    assert sorted(changed) == sorted(fields)  # 64 draws: every field byte changes at least once
    assert np.array_equal(before, np.repeat(rows[index : index + 1], 64, axis=0))  # the input is not modified


def test_ports_and_payload_survive_and_draws_differ():
    rows = kernel_rows()
    rng = np.random.default_rng(0)
    first, second = jitter_capture_fields(rows, rng), jitter_capture_fields(rows, rng)
    np.testing.assert_array_equal(first[:, 20:24], rows[:, 20:24])  # ports name applications
    np.testing.assert_array_equal(first[:, 40:], rows[:, 40:])
    assert not np.array_equal(first[:4, :40], second[:4, :40])
    assert first.dtype == np.uint8 and first.shape == rows.shape


# CAPTURE_FIELDS row (2 * IPv6 + UDP) -> its row offsets, written out by hand: IPv4 identification 4-5, TTL 8,
# checksum 10-11; IPv6 hop limit 7; TCP sequence 24-27, acknowledgement 28-31, checksum 36-37; UDP checksum 26-27.
HAND_LISTED_FIELDS = {
    0: [4, 5, 8, 10, 11, *range(24, 32), 36, 37],
    1: [4, 5, 8, 10, 11, 26, 27],
    2: [7, *range(24, 32), 36, 37],
    3: [7, 26, 27],
}


def test_capture_fields_table_holds_the_hand_listed_offsets():
    assert layout.CAPTURE_FIELDS.shape == (4, layout.HEADER_LEN) and layout.CAPTURE_FIELDS.dtype == np.uint8
    for kind, offsets in HAND_LISTED_FIELDS.items():
        assert np.flatnonzero(layout.CAPTURE_FIELDS[kind]).tolist() == offsets, kind
        # The paper profile keeps these bytes (else there is nothing to jitter) and the strict one zeroes them.
        ipv6, udp = divmod(kind, 2)
        paper = layout.HEADER_KEEP[4 * ipv6 + 2 * udp]
        strict = layout.HEADER_KEEP[4 * ipv6 + 2 * udp + layout.MASK_STRICT]
        assert paper[offsets].all() and not strict[offsets].any(), kind
