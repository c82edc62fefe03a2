"""Fuzz the CPU transform: >= 100,000 random and mutated packets in a few big batches, no crash, and the
output agrees with the plain-Python reference on a random sample of the records."""

from __future__ import annotations

import numpy as np
import packetgen as pg
import pytest
import reference_layout as ref

from pktnin import layout
from pktnin.kernels import cpu

N_PER_BATCH = 60_000
LINKS = np.array([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 105, 9, 65535], dtype=np.int32)
SAMPLE = 1500


def templates():
    """Valid and near-valid packets to mutate: the catalog plus packets with random payload sizes."""
    out = [(data, linktype) for _, data, linktype, _ in pg.catalog()]
    rng = np.random.default_rng(1)
    for size in rng.integers(0, 1600, 40):
        payload = pg.payload_bytes(int(size))
        out.append((pg.ethernet(pg.ipv4(pg.tcp(payload=payload, options=b"\x01" * int(size % 13)))), 1))
        out.append((pg.sll(pg.ipv6(pg.udp(payload=payload), next_header=17, ext=[pg.ext_options(60, 1)])), 113))
    return out


def fuzz_batch(seed: int) -> dict:
    """N_PER_BATCH records: mutated templates (bit flips, truncations, wrong link types) and random bytes."""
    rng = np.random.default_rng(seed)
    base = templates()
    choice = rng.integers(0, len(base), N_PER_BATCH)
    random_bytes = rng.random(N_PER_BATCH) < 0.1
    parts, linktypes = [], []
    for i, c in enumerate(choice):
        if random_bytes[i]:
            parts.append(rng.integers(0, 256, int(rng.integers(0, 120)), dtype=np.uint8).tobytes())
            linktypes.append(int(rng.choice(LINKS)))
        else:
            parts.append(base[c][0])
            linktypes.append(base[c][1])
    raw = pg.batch(list(zip(parts, linktypes)), gap=4, seed=seed)
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    # Bit flips, mostly in the headers (first 96 bytes), up to 6 per packet.
    flips = rng.integers(0, 7, N_PER_BATCH)
    owner = np.repeat(np.arange(N_PER_BATCH), flips)
    span = np.maximum(np.minimum(lengths[owner], 96), 1)
    pos = raw["pkt_off"][owner] + rng.integers(0, 1 << 30, owner.size) % span
    ok = lengths[owner] > 0
    np.bitwise_xor.at(raw["buf"], pos[ok], (1 << rng.integers(0, 8, owner.size)).astype(np.uint8)[ok])
    # Truncations (snaplen) for a third of the records, wrong link types for a tenth.
    cut = rng.random(N_PER_BATCH) < 0.33
    raw["caplen"][cut] = (rng.random(cut.sum()) * (lengths[cut] + 1)).astype(np.int32)
    wrong = rng.random(N_PER_BATCH) < 0.1
    raw["linktype"][wrong] = rng.choice(LINKS, wrong.sum())
    return raw


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_fuzz_no_crash_and_matches_reference_on_sample(seed):
    raw = fuzz_batch(seed)
    n = raw["pkt_off"].shape[0]
    rng = np.random.default_rng(seed + 100)
    buf = raw["buf"].tobytes()
    for mask, keep_dns in (("paper", False), ("strict", True)):
        rows, meta = cpu.transform(raw, mask, keep_dns)
        counts = meta["skip_counts"]
        assert counts.sum() == n and counts[layout.KEPT] == rows.shape[0]
        assert np.array_equal(np.bincount(meta["skip"], minlength=len(counts)), counts)
        # Mutations must hit many skip reasons, and still leave plenty of rows.
        assert (counts > 0).sum() >= 7 and rows.shape[0] > n // 10
        position = np.full(n, -1)
        position[meta["index"]] = np.arange(rows.shape[0])
        for i in rng.choice(n, SAMPLE, replace=False):
            off, caplen = int(raw["pkt_off"][i]), int(raw["caplen"][i])
            code, row, fields = ref.reference_packet(buf[off : off + caplen], int(raw["linktype"][i]), mask, keep_dns)
            assert meta["skip"][i] == code, f"record {i}"
            if code == 0:
                r = position[i]
                assert rows[r].tobytes() == row, f"record {i}"
                assert int(meta["flow_key"][r]) == fields["flow_key"], f"record {i}"
                assert meta["src_addr"][r].tobytes() == fields["src_addr"], f"record {i}"
                assert (int(meta["src_port"][r]), int(meta["dst_port"][r])) == (fields["src_port"], fields["dst_port"])


@pytest.mark.slow
def test_fuzz_pure_random_records():
    """Random offsets/lengths/link types over random bytes, including records that run past the buffer."""
    rng = np.random.default_rng(5)
    n = 20_000
    raw = {
        "buf": rng.integers(0, 256, 200_000, dtype=np.uint8),
        "pkt_off": rng.integers(-100, 200_100, n),
        "caplen": rng.integers(-10, 2000, n).astype(np.int32),
        "linktype": rng.choice(LINKS, n),
        "ts_ns": np.arange(n),
        "frame": np.arange(n),
    }
    raw["buf"][::7] = 0x45  # make IPv4-looking starts common
    _, meta = cpu.transform(raw, "paper", True)
    assert meta["skip_counts"].sum() == n
    outside = (raw["pkt_off"] < 0) | (raw["caplen"] < 0) | (raw["pkt_off"] + raw["caplen"] > raw["buf"].shape[0])
    assert (meta["skip"][outside] == layout.SKIP_MALFORMED).all()


def test_fuzz_timestamps_and_frames_pass_through():
    """Every int64 timestamp (the reader's exact values reach both ends of the range) and frame number reaches the
    kept rows unchanged; the transform itself never gives the reader's ts-overflow reason."""
    raw = fuzz_batch(13)
    n = raw["pkt_off"].shape[0]
    rng = np.random.default_rng(14)
    ends = np.array(
        [np.iinfo(np.int64).min, np.iinfo(np.int64).min + 1, -1, 0, 1, np.iinfo(np.int64).max], dtype=np.int64
    )
    raw["ts_ns"] = np.where(
        rng.random(n) < 0.3,
        rng.choice(ends, n),
        rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64),
    )
    raw["frame"] = np.sort(rng.choice(10 * n, n, replace=False)).astype(np.int64)
    rows, meta = cpu.transform(raw, "paper", False)
    kept = meta["index"]
    assert rows.shape[0] == kept.shape[0] > n // 10
    assert np.array_equal(meta["ts_ns"], raw["ts_ns"][kept]) and np.array_equal(meta["frame"], raw["frame"][kept])
    assert set(ends.tolist()) <= set(meta["ts_ns"].tolist())
    assert meta["skip_counts"][layout.SKIP_TS_OVERFLOW] == 0


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_range_prep_matches_transform_with_reused_buffers(threads):
    """Record ranges on several threads, rows written over the rows of earlier batches (of other sizes, longer
    payloads, another mask), flow keys on and off: the same rows and metadata as one transform of the batch."""
    batches = [fuzz_batch(seed) for seed in (21, 22)]
    small = {k: (v if k == "buf" else v[:5000]) for k, v in batches[1].items()}
    for flow_keys in (True, False):
        with cpu.RangePrep(threads=threads, reuse=True, flow_keys=flow_keys, min_range=1000) as prep:
            for raw, mask in ((batches[0], "paper"), (small, "strict"), (batches[1], "paper"), (small, "paper")):
                prep.mask = layout.mask_code(mask)
                rows, meta = cpu.transform(raw, mask)
                got = prep(raw)
                assert len(got.parts) == min(threads, raw["pkt_off"].shape[0] // 1000)
                assert np.array_equal(got.skip, meta["skip"]) and np.array_equal(got.skip_counts, meta["skip_counts"])
                got_rows = np.concatenate([r for r, _ in got.parts])
                assert np.array_equal(got_rows, rows)
                for key in meta:
                    if key in ("skip", "skip_counts") or (key == "flow_key" and not flow_keys):
                        continue
                    assert np.array_equal(np.concatenate([m[key] for _, m in got.parts]), meta[key]), key
                assert all(("flow_key" in m) == flow_keys for _, m in got.parts)


def test_range_prep_does_a_range_itself_when_no_worker_is_free():
    """With its only worker busy, a two-thread RangePrep still finishes the batch, on the calling thread."""
    import threading

    raw = fuzz_batch(23)
    rows, meta = cpu.transform(raw)
    release = threading.Event()
    with cpu.RangePrep(threads=2, min_range=1000) as prep:
        blocker = prep._pool.submit(release.wait, 60)
        got = prep(raw)
        assert not blocker.done()
        release.set()
    assert len(got.parts) == 2
    assert np.array_equal(np.concatenate([r for r, _ in got.parts]), rows)
    assert np.array_equal(np.concatenate([m["index"] for _, m in got.parts]), meta["index"])


@pytest.mark.parametrize("threads", [1, 2])
def test_range_prep_pieces_match_transform(threads):
    """A batch in pieces, each overwriting the buffers of the one before: the same rows, metadata and skips."""
    raw = fuzz_batch(24)
    rows, meta = cpu.transform(raw, "strict")
    got_rows, got_index, skips, counts = [], [], [], np.zeros_like(meta["skip_counts"])
    with cpu.RangePrep("strict", threads=threads, reuse=True, min_range=700) as prep:
        for piece in prep.pieces(raw, 1500 * threads):
            got_rows += [r.copy() for r, _ in piece.parts]  # the next piece reuses the buffers
            got_index += [m["index"].copy() for _, m in piece.parts]
            skips.append(piece.skip.copy())
            counts += piece.skip_counts
    assert np.array_equal(np.concatenate(got_rows), rows)
    assert np.array_equal(np.concatenate(got_index), meta["index"])
    assert np.array_equal(np.concatenate(skips), meta["skip"]) and np.array_equal(counts, meta["skip_counts"])
