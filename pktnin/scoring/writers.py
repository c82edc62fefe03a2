"""Arrow tables for scored packets, per-file Parquet parts, and the final streamed Parquet/CSV output.

Every column is built with numpy or Arrow compute on whole batches; the only per-row Python is the text form
of IPv6 addresses (rare, and RFC 5952 compression is not worth re-implementing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pktnin.atomic import atomic_path
from pktnin.errors import OptionError
from pktnin.names import name_text
from pktnin.schema import meta_dtype
from pktnin.storage import Location, Upload, is_uri

FORMATS = ("parquet", "csv")
ROW_GROUP_ROWS = 65536
TIMESTAMP = pa.timestamp("ns", tz="UTC")


# How a row's label was decided: "packet" (the row alone) or "flow" (its flow's first rows), and from how many rows.
DECISION_FIELDS = (("decided_by", pa.string()), ("decision_packets", pa.int32()))


def decision_columns(meta: dict[str, np.ndarray], n: int) -> list[pa.Array]:
    """decided_by and decision_packets of n rows: flow mode puts `decision_packets` in the rows' metadata."""
    used = meta.get("decision_packets")
    if used is None:
        return [pa.repeat("packet", n).cast(pa.string()), pa.array(np.ones(n, np.int32))]
    return [pa.repeat("flow", n).cast(pa.string()), pa.array(used.astype(np.int32, copy=False))]


def meta_type(name: str) -> pa.DataType:
    """The Arrow type of a packet metadata column (pktnin.schema)."""
    return pa.from_numpy_dtype(meta_dtype(name))


def prob_columns(classes: Iterable[str]) -> list[str]:
    return [f"p_{c}" for c in classes]


def packet_schema(classes: list[str], with_probs: bool) -> pa.Schema:
    fields = [
        ("file", pa.string()),
        ("frame", meta_type("frame")),
        ("timestamp", TIMESTAMP),
        ("src_addr", pa.string()),
        ("src_port", meta_type("src_port")),
        ("dst_addr", pa.string()),
        ("dst_port", meta_type("dst_port")),
        ("proto", meta_type("proto")),
        ("vlan", meta_type("vlan")),
        ("flow_id", meta_type("flow_key")),  # joins the flow table's flow_id (with file)
        ("label", pa.string()),
        ("prob", pa.float32()),
        *DECISION_FIELDS,
    ]
    if with_probs:
        fields += [(name, pa.float32()) for name in prob_columns(classes)]
    return pa.schema(fields)


def format_addresses(addrs: np.ndarray, ip_version: np.ndarray) -> pa.Array:
    """Text form of [n,16] addresses (IPv4 in the first 4 bytes).

    Each distinct address is formatted once (a batch holds few: packets come in flows), IPv4 with Arrow
    compute, IPv6 with ipaddress; the rows then take their text from that small dictionary.
    """
    is_v4 = ip_version == 4
    v4 = np.ascontiguousarray(addrs[is_v4, :4]).view(">u4")[:, 0]
    uniq4, inv4 = np.unique(v4, return_inverse=True)
    octets = [pa.array(((uniq4 >> shift) & 0xFF).astype(np.uint8)).cast(pa.string()) for shift in (24, 16, 8, 0)]
    text4 = pc.binary_join_element_wise(*octets, ".") if len(uniq4) else pa.array([], type=pa.string())
    v6 = np.ascontiguousarray(addrs[~is_v4]).view(np.dtype((np.void, 16)))[:, 0]
    uniq6, inv6 = np.unique(v6, return_inverse=True)
    text6 = pa.array([str(ipaddress.IPv6Address(bytes(a))) for a in uniq6], type=pa.string())
    indices = np.empty(len(addrs), dtype=np.int32)
    indices[is_v4] = inv4.reshape(-1)
    indices[~is_v4] = len(uniq4) + inv6.reshape(-1)
    return pa.concat_arrays([text4, text6]).take(pa.array(indices))


def labels_of(probs: np.ndarray, classes: pa.Array) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """(class index, label text, probability of that class) for each row of probs [n,C]."""
    idx = probs.argmax(axis=1)
    prob = np.take_along_axis(probs, idx[:, None], axis=1)[:, 0]
    return idx, classes.take(pa.array(idx)), prob


def packet_batch(
    file_name: str, meta: dict[str, np.ndarray], probs: np.ndarray, classes: pa.Array, schema: pa.Schema
) -> tuple[pa.RecordBatch, np.ndarray]:
    """One record batch of per-packet output and the predicted class index of each packet."""
    n = probs.shape[0]
    idx, label, prob = labels_of(probs, classes)
    columns = [
        pa.repeat(name_text(file_name), n).cast(pa.string()),
        pa.array(meta["frame"], type=meta_type("frame")),
        pa.array(meta["ts_ns"].astype(np.int64, copy=False), type=pa.int64()).cast(TIMESTAMP),
        format_addresses(meta["src_addr"], meta["ip_version"]),
        pa.array(meta["src_port"], type=meta_type("src_port")),
        format_addresses(meta["dst_addr"], meta["ip_version"]),
        pa.array(meta["dst_port"], type=meta_type("dst_port")),
        pa.array(meta["proto"], type=meta_type("proto")),
        pa.array(meta["vlan"], type=meta_type("vlan")),
        pa.array(meta["flow_key"], type=meta_type("flow_key")),
        label,
        pa.array(prob, type=pa.float32()),
        *decision_columns(meta, n),
    ]
    if len(schema) > len(columns):
        columns += [pa.array(np.ascontiguousarray(probs[:, c]), type=pa.float32()) for c in range(probs.shape[1])]
    return pa.RecordBatch.from_arrays(columns, schema=schema), idx


class PartWriter:
    """A Parquet file written under a temporary name and renamed into place by close(); abort() removes it.
    In a store (a URI): an object uploaded under a temporary key and copied onto the target by close().

    Batches are buffered into row groups of about ROW_GROUP_ROWS rows so tiny batches do not make tiny groups.
    """

    def __init__(self, target: Location, schema: pa.Schema, compression: str = "snappy") -> None:
        self.target = target
        self.schema = schema
        self.rows = 0
        self._stack = ExitStack()
        self._upload = Upload(str(target)) if is_uri(target) else None
        sink = self._upload.stream if self._upload is not None else self._stack.enter_context(atomic_path(target))
        self._writer = pq.ParquetWriter(sink, schema, compression=compression)
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if isinstance(batch, pa.Table):
            self._buffer.extend(batch.to_batches())
        else:
            self._buffer.append(batch)
        self._buffered += batch.num_rows
        self.rows += batch.num_rows
        if self._buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_batches(self._buffer, schema=self.schema))
            self._buffer.clear()
            self._buffered = 0

    def close(self) -> Location:
        self._flush()
        self._writer.close()
        if self._upload is not None:
            self._upload.commit()
        self._stack.close()  # renames the temporary file onto the target
        return self.target

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            if self._upload is not None:
                self._upload.discard()
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes the temporary file


def write_batches_to(
    sink: str | Path | BinaryIO,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    fmt: str,
    metadata: dict | None = None,
) -> int:
    """Record batches, in order, into `sink` (a path or an open binary file) as Parquet or CSV, in row groups
    of ROW_GROUP_ROWS; returns the row count. `metadata`: key-value metadata of a Parquet output."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    rows = 0
    if fmt == "parquet":
        writer = pq.ParquetWriter(sink, schema.with_metadata(metadata or {}), compression="zstd")
    else:
        writer = pcsv.CSVWriter(sink, schema)
    try:
        buffer: list[pa.RecordBatch] = []
        buffered = 0
        for batch in batches:
            buffer.append(batch)
            buffered += batch.num_rows
            if buffered >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(buffer, schema=schema))
                rows += buffered
                buffer, buffered = [], 0
        if buffer:
            writer.write_table(pa.Table.from_batches(buffer, schema=schema))
            rows += buffered
    finally:
        writer.close()
    return rows


def format_for(out: Location | None, fmt: str | None) -> str:
    """The output format: `fmt` when given, else from the suffix of `out` (.csv or .parquet), else parquet."""
    if fmt is not None:
        return fmt
    suffix = "" if out is None else Path(out).suffix.lower().lstrip(".")
    if suffix and suffix not in FORMATS:  # out.txt would hold Parquet under a name that says otherwise
        raise OptionError(f"--out {out}: .{suffix} is neither .parquet nor .csv: rename it, or give --format")
    return suffix or "parquet"
