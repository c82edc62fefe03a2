"""Packet layout v1: CPU kernel == plain-Python reference, hand-checked rows, hypothesis, the real corpus."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import packetgen as pg
import pytest
import reference_layout as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pktnin import layout
from pktnin.kernels import cpu

CATALOG = pg.catalog()
NAMES = [c[0] for c in CATALOG]

# Hand-written expectations: the skip reason of every catalog packet (keep_dns=False).
EXPECTED_SKIP = {name: "kept" for name in NAMES}
EXPECTED_SKIP.update(
    {
        "eth-vlan-truncated": "malformed",
        "eth-arp": "non-ip",
        "eth-short": "malformed",
        "eth-version-mismatch": "malformed",
        "sll-arp": "non-ip",
        "raw-not-ip": "non-ip",
        "raw-empty": "malformed",
        "null-unknown-family": "non-ip",
        "loop-le-family": "non-ip",
        "unsupported-link": "unsupported-link",
        "ipv4-fragment": "fragment",
        "ipv4-ihl-4": "malformed",
        "ipv4-total-below-ihl": "malformed",
        "ipv4-icmp": "non-tcp-udp",
        "ipv4-header-cut": "malformed",
        "ipv4-options-cut": "malformed",
        "ipv6-frag-later": "fragment",
        "ipv6-9-ext": "malformed",
        "ipv6-ext-cut": "malformed",
        "ipv6-header-cut": "malformed",
        "ipv6-icmp": "non-tcp-udp",
        "ipv6-no-next": "non-tcp-udp",
        "tcp-doff-4": "malformed",
        "tcp-doff-past-end": "malformed",
        "tcp-doff-to-end": "no-payload",
        "tcp-header-cut": "malformed",
        "tcp-empty": "no-payload",
        "udp-empty": "no-payload",
        "udp-header-cut": "malformed",
        "dns-dst": "dns",
        "dns-src-tcp": "dns",
        "snaplen-at-payload": "no-payload",
        "vlan-sll-not-unwrapped": "non-ip",
        "caplen-zero": "malformed",
    }
)


def catalog_batch():
    return pg.batch([(data, linktype, caplen) for _, data, linktype, caplen in CATALOG])


def assert_same(rows, meta, ref_rows, ref_meta):
    assert np.array_equal(meta["skip"], ref_meta["skip"])
    assert rows.shape == ref_rows.shape
    bad = np.flatnonzero((rows != ref_rows).any(axis=1))
    assert bad.size == 0, f"rows differ at kept positions {bad[:10]}"
    for key, value in ref_meta.items():
        assert meta[key].dtype == value.dtype, key
        assert np.array_equal(meta[key], value), key


def kept_row(name, mask="paper", keep_dns=False):
    """(row, meta of that packet) of one catalog packet, through the CPU kernel."""
    _, data, linktype, caplen = CATALOG[NAMES.index(name)]
    rows, meta = cpu.transform(pg.batch([(data, linktype, caplen)]), mask, keep_dns)
    assert rows.shape == (1, layout.ROW_LEN), name
    return rows[0], {key: value[0] for key, value in meta.items() if key not in ("skip", "skip_counts")}


def test_catalog_skip_reasons():
    _, meta = cpu.transform(catalog_batch())
    got = {name: layout.SKIP_REASONS[code] for name, code in zip(NAMES, meta["skip"])}
    assert got == EXPECTED_SKIP
    assert meta["skip_counts"].sum() == len(CATALOG)
    assert meta["skip_counts"][layout.KEPT] == sum(v == "kept" for v in EXPECTED_SKIP.values())


@pytest.mark.parametrize("mask", ["paper", "strict"])
@pytest.mark.parametrize("keep_dns", [False, True])
def test_catalog_matches_reference(mask, keep_dns):
    raw = catalog_batch()
    rows, meta = cpu.transform(raw, mask, keep_dns)
    assert_same(rows, meta, *ref.reference_batch(raw, mask, keep_dns))


def test_keep_dns_keeps_dns():
    _, meta = cpu.transform(catalog_batch(), keep_dns=True)
    for name in ("dns-dst", "dns-src-tcp"):
        assert meta["skip"][NAMES.index(name)] == layout.KEPT


def test_ipv4_tcp_row_by_hand():
    row, meta = kept_row("eth-ipv4-tcp")
    payload = pg.payload_bytes(100)
    total = 20 + 20 + 100
    expected_net = bytes([0x45, 0, total >> 8, total & 255, 0x42, 0x42, 0x40, 0, 64, 6, 0xBE, 0xEF]) + bytes(8)
    expected_tcp = struct.pack("!HHIIBBHHH", 40000, 443, 0x01020304, 0x05060708, 0x50, 0x18, 0xFFFF, 0xC5C5, 0)
    assert row[:20].tobytes() == expected_net
    assert row[20:40].tobytes() == expected_tcp
    assert row[40:140].tobytes() == payload
    assert not row[140:].any()
    assert meta["ip_version"] == 4 and meta["proto"] == 6
    assert meta["src_addr"].tobytes() == bytes([192, 0, 2, 1]) + bytes(12)
    assert meta["dst_addr"].tobytes() == bytes([198, 51, 100, 2]) + bytes(12)
    assert (meta["src_port"], meta["dst_port"], meta["vlan"]) == (40000, 443, 0)
    assert meta["frame"] == 7 + 0 and meta["index"] == 0


def test_ipv4_tcp_row_strict_by_hand():
    row, _ = kept_row("eth-ipv4-tcp", mask="strict")
    total = 140
    assert row[:20].tobytes() == bytes([0x45, 0, total >> 8, total & 255, 0, 0, 0x40, 0, 0, 6, 0, 0]) + bytes(8)
    assert row[20:40].tobytes() == bytes(12) + bytes([0x50, 0x18, 0xFF, 0xFF, 0, 0, 0, 0])
    assert row[40:140].tobytes() == pg.payload_bytes(100)


def test_ipv6_udp_row_by_hand():
    row, meta = kept_row("eth-ipv6-udp")
    # version 6, traffic class 0x28, flow label 0xABCDE, payload length 108, next header 17, hop limit 64
    assert row[:8].tobytes() == bytes([0x62, 0x8A, 0xBC, 0xDE, 0, 108, 17, 64])
    assert not row[8:20].any()
    assert row[20:28].tobytes() == struct.pack("!HHHH", 5000, 6000, 108, 0xD7D7)
    assert not row[28:40].any()
    assert row[40:140].tobytes() == pg.payload_bytes(100)
    assert meta["src_addr"].tobytes() == bytes.fromhex("20010db8000000000000000000000001")
    strict, _ = kept_row("eth-ipv6-udp", mask="strict")
    assert strict[:8].tobytes() == bytes([0x62, 0x8A, 0xBC, 0xDE, 0, 108, 17, 0])
    assert strict[20:28].tobytes() == bytes([0, 0, 0, 0, 0, 108, 0, 0])


def test_payload_bounds_by_hand():
    row, _ = kept_row("eth-padding")  # 3 payload bytes, then Ethernet padding 0xEE that must not leak
    assert row[40:43].tobytes() == b"abc" and not row[43:].any()
    row, _ = kept_row("payload-1600")
    assert row[40:].tobytes() == pg.payload_bytes(1600)[:1460]
    row, _ = kept_row("snaplen-payload")  # caplen ends 60 bytes into the payload
    assert row[40:100].tobytes() == pg.payload_bytes(60) and not row[100:].any()
    row, _ = kept_row("ipv4-total-short")  # total length says 10 payload bytes
    assert row[40:50].tobytes() == pg.payload_bytes(10) and not row[50:].any()
    row, _ = kept_row("ipv6-payload-length-short")  # payload length says 20 TCP + 30 payload bytes
    assert row[40:70].tobytes() == pg.payload_bytes(30) and not row[70:].any()
    row, _ = kept_row("ipv6-payload-length-0")  # 0: up to the captured end
    assert row[40:140].tobytes() == pg.payload_bytes(100)


def test_options_and_extension_headers_by_hand():
    row, _ = kept_row("ipv4-options")
    assert row[0] == 0x47  # IHL 7 kept as captured, options dropped
    assert row[20:22].tobytes() == struct.pack("!H", 40000) and row[40:140].tobytes() == pg.payload_bytes(100)
    row, _ = kept_row("tcp-options")
    assert row[32] == 0x90  # data offset 9
    assert row[40:140].tobytes() == pg.payload_bytes(100)
    row, meta = kept_row("ipv6-hbh-routing-dst")
    assert row[6] == 0 and meta["proto"] == 6  # next header field as captured (hop-by-hop)
    assert row[40:140].tobytes() == pg.payload_bytes(100)


def test_vlan_ids():
    assert kept_row("eth-vlan")[1]["vlan"] == 42
    assert kept_row("eth-qinq")[1]["vlan"] == 100
    assert kept_row("eth-qinq-old")[1]["vlan"] == 7


def test_flow_key_is_bidirectional():
    forward = pg.ethernet(pg.ipv4(pg.tcp(1111, 443, b"x"), src="10.0.0.1", dst="10.0.0.2"))
    backward = pg.ethernet(pg.ipv4(pg.tcp(443, 1111, b"y"), src="10.0.0.2", dst="10.0.0.1"))
    other_port = pg.ethernet(pg.ipv4(pg.tcp(1112, 443, b"x"), src="10.0.0.1", dst="10.0.0.2"))
    other_vlan = pg.ethernet(pg.ipv4(pg.tcp(1111, 443, b"x"), src="10.0.0.1", dst="10.0.0.2"), vlans=[(0x8100, 5)])
    as_udp = pg.ethernet(pg.ipv4(pg.udp(1111, 443, b"x"), proto=17, src="10.0.0.1", dst="10.0.0.2"))
    v6_fwd = pg.ethernet(pg.ipv6(pg.udp(9, 10, b"x"), next_header=17, src="::1", dst="::2"))
    v6_back = pg.ethernet(pg.ipv6(pg.udp(10, 9, b"x"), next_header=17, src="::2", dst="::1"))
    same_addr_fwd = pg.ethernet(pg.ipv4(pg.tcp(5, 6, b"x"), src="10.0.0.1", dst="10.0.0.1"))
    same_addr_back = pg.ethernet(pg.ipv4(pg.tcp(6, 5, b"x"), src="10.0.0.1", dst="10.0.0.1"))
    packets = [forward, backward, other_port, other_vlan, as_udp, v6_fwd, v6_back, same_addr_fwd, same_addr_back]
    _, meta = cpu.transform(pg.batch([(p, 1) for p in packets]))
    keys = meta["flow_key"]
    assert len(keys) == len(packets)
    assert keys[0] == keys[1] and keys[5] == keys[6] and keys[7] == keys[8]
    assert len({int(keys[i]) for i in (0, 2, 3, 4, 5, 7)}) == 6


def test_mask_names_and_codes_agree():
    raw = catalog_batch()
    assert np.array_equal(cpu.transform(raw, "strict")[0], cpu.transform(raw, layout.MASK_STRICT)[0])
    assert not np.array_equal(cpu.transform(raw, "strict")[0], cpu.transform(raw, "paper")[0])
    with pytest.raises(ValueError, match="mask"):
        cpu.transform(raw, "loose")


def test_transform_into_preallocated_buffer():
    raw = catalog_batch()
    rows, meta = cpu.transform(raw)
    k = rows.shape[0]
    out = np.full((len(CATALOG), layout.ROW_LEN), 0xAB, dtype=np.uint8)  # dirty: every byte must be written
    meta_into = cpu.transform_into(raw, out)
    assert np.array_equal(out[:k], rows) and (out[k:] == 0xAB).all()
    for key in meta:
        assert np.array_equal(meta_into[key], meta[key]), key
    # The kept count is known only after the one pass: the buffer must hold every record of the batch.
    with pytest.raises(ValueError, match="records"):
        cpu.transform_into(raw, np.zeros((len(CATALOG) - 1, layout.ROW_LEN), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        cpu.transform_into(raw, np.zeros((k, layout.ROW_LEN), dtype=np.float32))


def test_empty_batch_and_bad_offsets():
    rows, meta = cpu.transform(pg.batch([]))
    assert rows.shape == (0, layout.ROW_LEN) and meta["skip_counts"].sum() == 0
    raw = pg.batch([(CATALOG[0][1], 1)] * 4)
    raw["pkt_off"][1] = raw["buf"].shape[0] - 10  # record runs past the end of buf
    raw["caplen"][2] = -1
    raw["pkt_off"][3] = -5
    _, meta = cpu.transform(raw)
    assert meta["skip"].tolist() == [0, layout.SKIP_MALFORMED, layout.SKIP_MALFORMED, layout.SKIP_MALFORMED]
    raw["caplen"] = raw["caplen"][:2]
    with pytest.raises(ValueError, match="caplen"):
        cpu.transform(raw)


# ---------------------------------------------------------------------------------------------------------
# Random well-formed-ish packets built from random fields.

_LINKS = [1, 113, 276, 101, 12, 14, 228, 229, 0, 108]


@st.composite
def random_packet(draw):
    version = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from([6, 17, 6, 17, 1]))
    sport = draw(st.sampled_from([443, 80, 40000, 5353, draw(st.integers(0, 65535)), 53]))
    dport = draw(st.integers(0, 65535))
    payload = draw(st.binary(max_size=1600))
    if proto == 6:
        options = draw(st.binary(max_size=40))
        l4 = pg.tcp(sport, dport, payload, seq=draw(st.integers(0, 2**32 - 1)), options=options)
    elif proto == 17:
        l4 = pg.udp(sport, dport, payload)
    else:
        l4 = payload
    if version == 4:
        ip = pg.ipv4(
            l4,
            proto=proto,
            src=draw(st.ip_addresses(v=4)).exploded,
            dst=draw(st.ip_addresses(v=4)).exploded,
            ttl=draw(st.integers(0, 255)),
            options=draw(st.binary(max_size=40)),
            frag_offset=draw(st.sampled_from([0, 0, 0, 0, 0, 1, 8191])),
            total_length=draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, 65535))),
        )
    else:
        max_ext = draw(st.sampled_from([2, 9]))
        kinds = draw(st.lists(st.sampled_from(["hbh", "rt", "dst", "ah", "frag"]), max_size=max_ext))
        builders = {
            "hbh": lambda: pg.ext_options(0, draw(st.integers(0, 3))),
            "rt": lambda: pg.ext_options(43, draw(st.integers(0, 3))),
            "dst": lambda: pg.ext_options(60, draw(st.integers(0, 3))),
            "ah": lambda: pg.ext_ah(draw(st.integers(1, 6))),
            "frag": lambda: pg.ext_fragment(draw(st.sampled_from([0, 0, 0, 3]))),
        }
        ip = pg.ipv6(
            l4,
            next_header=proto if proto != 1 else 58,
            src=draw(st.ip_addresses(v=6)).exploded,
            dst=draw(st.ip_addresses(v=6)).exploded,
            ext=[builders[kind]() for kind in kinds],
            payload_length=draw(st.one_of(st.none(), st.none(), st.integers(0, 65535))),
        )
    link = draw(st.sampled_from(_LINKS))
    if link == 1:
        tpids = draw(st.lists(st.sampled_from([0x8100, 0x88A8, 0x9100]), max_size=3))
        data = pg.ethernet(ip, vlans=[(t, draw(st.integers(0, 4095))) for t in tpids])
    elif link == 113:
        data = pg.sll(ip)
    elif link == 276:
        data = pg.sll2(ip)
    elif link == 0:
        data = pg.null(ip, byteorder=draw(st.sampled_from(["little", "big"])))
    elif link == 108:
        data = pg.loop(ip)
    else:
        data = ip
    caplen = draw(st.one_of(st.just(len(data)), st.just(len(data)), st.integers(0, len(data))))
    return data, link, caplen


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=st.lists(random_packet(), min_size=1, max_size=8), mask=st.sampled_from(["paper", "strict"]),
       keep_dns=st.booleans())  # fmt: skip
def test_random_packets_match_reference(packets, mask, keep_dns):
    raw = pg.batch(packets)
    rows, meta = cpu.transform(raw, mask, keep_dns)
    assert_same(rows, meta, *ref.reference_batch(raw, mask, keep_dns))


# ---------------------------------------------------------------------------------------------------------
# The real capture corpus (classic pcap files), when present.

CLASSIC_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"}


def _read_classic(path: Path):
    """Records of a classic pcap file via dpkt (test oracle only); None if not classic pcap."""
    import dpkt

    with open(path, "rb") as fh:
        if fh.read(4) not in CLASSIC_MAGICS:
            return None
        fh.seek(0)
        try:
            reader = dpkt.pcap.Reader(fh)
            linktype = reader.datalink() & 0xFFFF
            records = []
            for _, data in reader:
                records.append((bytes(data), linktype))
        except (ValueError, dpkt.NeedData, dpkt.UnpackError):
            pass  # broken files in the corpus: compare the records read before the damage
    return records


def test_corpus_matches_reference(corpus_pcaps):
    files = packets = kept = 0
    for path in sorted(corpus_pcaps.rglob("*")):
        records = _read_classic(path) if path.is_file() else None
        if not records:
            continue
        raw = pg.batch(records)
        rows, meta = cpu.transform(raw)
        ref_rows, ref_meta = ref.reference_batch(raw)
        try:
            assert_same(rows, meta, ref_rows, ref_meta)
        except AssertionError as err:
            raise AssertionError(f"{path.name}: {err}") from err
        files += 1
        packets += len(records)
        kept += rows.shape[0]
    assert files > 0 and kept > 0
