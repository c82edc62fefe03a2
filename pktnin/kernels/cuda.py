"""CUDA transform: RawBatch -> normalized rows written straight into a caller's device buffer (numba-CUDA).

The same parse logic as the CPU kernel (pktnin.layout's functions, compiled here as CUDA device functions).
numba.cuda is imported on first use only, so importing this module costs nothing on a machine without a GPU.

Per batch, three kernels and one host step:
  1. parse kernel: one thread per packet -> descriptor int64[n, DESC_LEN] and skip reason uint8[n];
  2. host: the skip array (n bytes) comes back, the kept positions are a numpy flatnonzero, and go back up;
  3. rows kernel: one block per output row, its threads stride over the row's bytes, so consecutive threads
     store consecutive bytes (coalesced); each value goes through a 256-entry table of the output dtype, so
     the same kernel writes float32/float16 (byte/255) or uint8 (the byte itself);
  4. meta kernel: one thread per kept packet gathers frame, timestamp, addresses, ports, vlan and the flow
     key; these small arrays are copied back to the host.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pktnin import layout
from pktnin.kernels.cpu import RAW_DTYPES, RAW_FIELDS
from pktnin.schema import META_COLUMNS, empty_meta, meta_dtype

_THREADS = 256
_MAX_BLOCKS = 65535
_SIM_THREADS = 16  # the simulator runs each thread as a Python thread: keep few and let them loop
# The scalar metadata the meta kernel gathers into one int64 [k, 7] array, in its column order.
_META64 = ("frame", "ts_ns", "ip_version", "proto", "src_port", "dst_port", "vlan")

_compiled = None
cuda = None  # numba.cuda, bound on first use by _kernels()


def _cuda():
    from numba import cuda

    return cuda


def _kernels():
    """Compile the device functions and kernels once (lazily: needs numba.cuda)."""
    global _compiled, cuda
    if _compiled is not None:
        return _compiled
    # A module global (not a local): the simulator swaps the numba.cuda module it finds in a kernel's globals.
    from numba import cuda

    parse_packet = cuda.jit(device=True)(layout.parse_packet)
    row_byte = cuda.jit(device=True)(layout.row_byte)
    copy_addresses = cuda.jit(device=True)(layout.copy_addresses)
    flow_key = cuda.jit(device=True)(layout.flow_key)
    row_len = layout.ROW_LEN
    d_ip_version = layout.D_IP_VERSION
    d_proto = layout.D_PROTO
    d_src_port = layout.D_SRC_PORT
    d_dst_port = layout.D_DST_PORT
    d_vlan = layout.D_VLAN

    @cuda.jit
    def parse_kernel(buf, pkt_off, caplen, linktype, keep_dns, desc, skip):
        for i in range(cuda.grid(1), pkt_off.shape[0], cuda.gridsize(1)):
            skip[i] = parse_packet(buf, pkt_off[i], caplen[i], linktype[i], keep_dns, desc[i])

    @cuda.jit
    def rows_kernel(buf, desc, kept, mask, table, out):
        for r in range(cuda.blockIdx.x, kept.shape[0], cuda.gridDim.x):
            d = desc[kept[r]]
            for j in range(cuda.threadIdx.x, row_len, cuda.blockDim.x):
                out[r, j] = table[row_byte(buf, d, j, mask)]

    @cuda.jit
    def meta_kernel(buf, desc, kept, frame_in, ts_in, meta, src_addr, dst_addr, keys):
        for r in range(cuda.grid(1), kept.shape[0], cuda.gridsize(1)):
            i = kept[r]
            d = desc[i]
            meta[r, 0] = frame_in[i]
            meta[r, 1] = ts_in[i]
            meta[r, 2] = d[d_ip_version]
            meta[r, 3] = d[d_proto]
            meta[r, 4] = d[d_src_port]
            meta[r, 5] = d[d_dst_port]
            meta[r, 6] = d[d_vlan]
            copy_addresses(buf, d, src_addr[r], dst_addr[r])
            keys[r] = flow_key(buf, d)

    _compiled = (parse_kernel, rows_kernel, meta_kernel)
    return _compiled


def _launch_shape(items: int, per_block: int = _THREADS) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride kernel over `items`, each block taking `per_block` of them."""
    from numba import config

    if getattr(config, "ENABLE_CUDASIM"):  # set at run time from the environment, unknown to a type checker
        return 1, _SIM_THREADS
    blocks = max(1, min(_MAX_BLOCKS, (items + per_block - 1) // per_block))
    return blocks, _THREADS


def _stream(stream):
    cuda = _cuda()
    if stream is None or (isinstance(stream, int) and stream == 0):
        return 0  # numba's default stream
    if isinstance(stream, int):
        return cuda.external_stream(stream)  # a raw cudaStream_t handle from another library
    return stream


def _sync(stream) -> None:
    if stream == 0:
        _cuda().synchronize()
    else:
        stream.synchronize()


def _device_array_or_none(value):
    """value as a numba device array if it lives on the GPU, else None."""
    if hasattr(value, "copy_to_host"):  # a numba device array (the simulator's too)
        return value
    if hasattr(value, "__cuda_array_interface__"):  # CuPy, PyTorch, PyCUDA, ...
        return _cuda().as_cuda_array(value)
    return None


def _device_raw(raw, stream) -> dict:
    """RawBatch fields as device arrays; host arrays are copied, device arrays (any __cuda_array_interface__) used."""
    cuda = _cuda()
    out = {}
    for name in RAW_FIELDS:
        value = raw[name] if isinstance(raw, Mapping) else getattr(raw, name)
        device_value = _device_array_or_none(value)
        if device_value is not None:
            value = device_value
            if value.dtype != np.dtype(RAW_DTYPES[name]) or value.ndim != 1:
                raise ValueError(f"device RawBatch field {name} must be 1-D {np.dtype(RAW_DTYPES[name])}")
        else:
            value = cuda.to_device(np.ascontiguousarray(value, dtype=RAW_DTYPES[name]).reshape(-1), stream=stream)
        out[name] = value
    n = out["pkt_off"].shape[0]
    for name in RAW_FIELDS[2:]:
        if out[name].shape[0] != n:
            raise ValueError(f"RawBatch field {name} has {out[name].shape[0]} entries, pkt_off has {n}")
    return out


def _parse_on_device(raw, keep_dns, stream):
    """Kernel 1 and the host-side scan: (device raw, device desc, skip, kept, skip_counts)."""
    cuda = _cuda()
    parse_kernel = _kernels()[0]
    dev = _device_raw(raw, stream)
    n = dev["pkt_off"].shape[0]
    desc = cuda.device_array((max(n, 1), layout.DESC_LEN), dtype=np.int64, stream=stream)
    skip_dev = cuda.device_array(max(n, 1), dtype=np.uint8, stream=stream)
    if n:
        blocks, threads = _launch_shape(n)
        parse_kernel[blocks, threads, stream](
            dev["buf"], dev["pkt_off"], dev["caplen"], dev["linktype"], bool(keep_dns), desc, skip_dev
        )
    skip = skip_dev.copy_to_host(stream=stream)[:n]
    _sync(stream)
    skip_counts = np.bincount(skip, minlength=len(layout.SKIP_REASONS)).astype(np.int64)
    kept = np.flatnonzero(skip == layout.KEPT).astype(np.int64)
    return dev, desc, skip, kept, skip_counts


def _write_on_device(dev, desc, kept, mask, out_rows, stream) -> dict:
    """Kernels 2 and 3: rows into out_rows[:k], then the metadata of the kept packets back to the host."""
    cuda = _cuda()
    _, rows_kernel, meta_kernel = _kernels()
    if out_rows.dtype == np.uint8:
        table = np.arange(256, dtype=np.uint8)
    elif out_rows.dtype in (np.float32, np.float16):
        table = (np.arange(256, dtype=np.float64) / 255.0).astype(out_rows.dtype)
    else:
        raise ValueError(f"out_rows dtype must be float32, float16 or uint8, got {out_rows.dtype}")
    k = kept.shape[0]
    if out_rows.shape[0] < k:
        raise ValueError(f"out_rows has {out_rows.shape[0]} rows, the batch keeps {k} packets")
    meta64 = np.zeros((k, len(_META64)), dtype=np.int64)
    host = empty_meta(k, zero=True)
    src_addr, dst_addr, keys = host["src_addr"], host["dst_addr"], host["flow_key"]
    if k:
        kept_dev = cuda.to_device(kept, stream=stream)
        table_dev = cuda.to_device(table, stream=stream)
        blocks, threads = _launch_shape(k, per_block=1)  # one row per block
        rows_kernel[blocks, threads, stream](dev["buf"], desc, kept_dev, mask, table_dev, out_rows)
        meta64_dev = cuda.device_array((k, len(_META64)), dtype=np.int64, stream=stream)
        src_dev = cuda.device_array((k, 16), dtype=np.uint8, stream=stream)
        dst_dev = cuda.device_array((k, 16), dtype=np.uint8, stream=stream)
        keys_dev = cuda.device_array(k, dtype=np.uint64, stream=stream)
        blocks, threads = _launch_shape(k)
        meta_kernel[blocks, threads, stream](
            dev["buf"], desc, kept_dev, dev["frame"], dev["ts_ns"], meta64_dev, src_dev, dst_dev, keys_dev
        )
        meta64_dev.copy_to_host(meta64, stream=stream)
        src_dev.copy_to_host(src_addr, stream=stream)
        dst_dev.copy_to_host(dst_addr, stream=stream)
        keys_dev.copy_to_host(keys, stream=stream)
        _sync(stream)
    columns = {name: meta64[:, c].astype(meta_dtype(name)) for c, name in enumerate(_META64)}
    columns.update(src_addr=src_addr, dst_addr=dst_addr, flow_key=keys)
    return {"index": kept, **{name: columns[name] for name in META_COLUMNS}}


def transform_to_device(raw, out_rows, mask=layout.MASK_PAPER, keep_dns: bool = False, stream=0) -> dict:
    """Transform a batch on the GPU, writing the k kept rows into out_rows[:k].

    raw: RawBatch or dict of its fields, host or device arrays. out_rows: a device array (or any object with
    __cuda_array_interface__) of shape [>=k, ROW_LEN] and dtype float32 or float16 (written as byte/255) or
    uint8 (written as the bytes). stream: 0 (default stream), a numba stream, or a raw cudaStream_t handle.
    Returns the metadata dict of pktnin.kernels.cpu (host arrays; k = len(meta["index"])) once the stream
    has finished writing the rows. A buffer of len(batch) rows never runs out of space.
    """
    mask = layout.mask_code(mask)
    stream = _stream(stream)
    device_rows = _device_array_or_none(out_rows)
    if device_rows is None:
        raise ValueError("out_rows must be a device array (or expose __cuda_array_interface__)")
    out_rows = device_rows
    if out_rows.ndim != 2 or out_rows.shape[1] != layout.ROW_LEN:
        raise ValueError(f"out_rows must be [rows, {layout.ROW_LEN}], got {out_rows.shape}")
    dev, desc, skip, kept, skip_counts = _parse_on_device(raw, keep_dns, stream)
    meta = _write_on_device(dev, desc, kept, mask, out_rows, stream)
    meta["skip"] = skip
    meta["skip_counts"] = skip_counts
    return meta


def transform_uint8_device(raw, mask=layout.MASK_PAPER, keep_dns: bool = False, stream=0):
    """Transform a batch on the GPU into new uint8 rows: (device array uint8[k, ROW_LEN], metadata dict).

    Byte for byte the CPU kernel's output; meant for checks and for callers that normalize later.
    """
    cuda = _cuda()
    mask = layout.mask_code(mask)
    stream = _stream(stream)
    dev, desc, skip, kept, skip_counts = _parse_on_device(raw, keep_dns, stream)
    rows = cuda.device_array((max(kept.shape[0], 1), layout.ROW_LEN), dtype=np.uint8, stream=stream)
    meta = _write_on_device(dev, desc, kept, mask, rows, stream)
    meta["skip"] = skip
    meta["skip_counts"] = skip_counts
    return rows[: kept.shape[0]], meta
