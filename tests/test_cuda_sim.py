"""CUDA kernels (numba's CUDA simulator) == CPU kernel, on the packet catalog; and the real kernels compile.

The simulator must be switched on before numba.cuda is first imported, and doing that in this pytest process
would change numba.cuda for every other test module; so the CUDA side runs in a child process (this file run
as a script with NUMBA_ENABLE_CUDASIM=1), which saves its outputs to an .npz that the tests compare here.

The simulator runs the kernels as Python, so it cannot catch what only the CUDA compiler rejects; a second
child compiles every kernel to PTX (typing + code generation for the real target, no GPU needed) where
numba finds the NVVM library, and the test skips where it does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import packetgen as pg
import pytest

from pktnin import layout
from pktnin.kernels import cpu

ROOT = Path(__file__).resolve().parents[1]
META_KEYS = ("index", "frame", "ts_ns", "ip_version", "proto", "src_addr", "dst_addr", "src_port", "dst_port",
             "vlan", "flow_key", "skip", "skip_counts")  # fmt: skip


def catalog_batch():
    return pg.batch([(data, linktype, caplen) for _, data, linktype, caplen in pg.catalog()])


def run_child(out_path: str) -> None:
    """Child process: every CUDA variant on the catalog batch, outputs saved to out_path."""
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # uint64 wrap-around in the flow hash
    from numba import cuda

    from pktnin.kernels import cuda as kcuda

    raw = catalog_batch()
    n = raw["pkt_off"].shape[0]
    saved = {}

    def save(prefix, rows, meta):
        saved[prefix + "rows"] = rows
        for key in META_KEYS:
            saved[prefix + key] = meta[key]

    for mask in ("paper", "strict"):
        for keep_dns in (False, True):
            rows_dev, meta = kcuda.transform_uint8_device(raw, mask, keep_dns)
            save(f"u8_{mask}_{int(keep_dns)}_", rows_dev.copy_to_host(), meta)
    for dtype in ("float32", "float16"):
        out = cuda.device_array((n + 3, layout.ROW_LEN), dtype=dtype)
        out.copy_to_device(np.full((n + 3, layout.ROW_LEN), 7, dtype=dtype))  # rows past k must stay untouched
        meta = kcuda.transform_to_device(raw, out, "strict", False)
        save(f"{dtype}_", out.copy_to_host(), meta)
    device_raw = {key: cuda.to_device(value) for key, value in raw.items()}
    rows_dev, meta = kcuda.transform_uint8_device(device_raw, "paper", False)
    save("devraw_", rows_dev.copy_to_host(), meta)
    rows_dev, meta = kcuda.transform_uint8_device(pg.batch([]))
    save("empty_", rows_dev.copy_to_host(), meta)
    try:
        kcuda.transform_to_device(raw, cuda.device_array((2, layout.ROW_LEN), dtype=np.float32))
        saved["small_error"] = np.array("")
    except ValueError as err:
        saved["small_error"] = np.array(str(err))
    np.savez(out_path, **saved)


def compile_ptx_child() -> None:
    """Child process: compile every kernel for compute capability 8.0 without a GPU; print one line per kernel."""
    import types as pytypes

    import numba.cuda.dispatcher
    from numba import types
    from numba.cuda.cudadrv.error import CudaSupportError, NvvmSupportError

    # Device functions ask the current GPU for its compute capability while compiling; there is none here.
    numba.cuda.dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(8, 0))
    from numba import cuda

    from pktnin.kernels import cuda as kcuda

    parse_kernel, rows_kernel, meta_kernel = kcuda._kernels()

    def arr(dtype, ndim=1):
        return types.Array(dtype, ndim, "C")

    u8, i64, i32, desc = arr(types.uint8), arr(types.int64), arr(types.int32), arr(types.int64, 2)
    kernels = [("parse", parse_kernel, (u8, i64, i32, i32, types.boolean, desc, u8))]
    for dtype in (types.float32, types.float16, types.uint8):
        kernels.append((f"rows-{dtype}", rows_kernel, (u8, desc, i64, types.int64, arr(dtype), arr(dtype, 2))))
    kernels.append(
        ("meta", meta_kernel, (u8, desc, i64, i64, i64, arr(types.int64, 2), arr(types.uint8, 2),
                               arr(types.uint8, 2), arr(types.uint64)))
    )  # fmt: skip
    for name, kernel, sig in kernels:
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))
        except (NvvmSupportError, CudaSupportError) as err:
            print(f"NO-NVVM {err}".replace("\n", " "))
            return
        print(f"PTX {name} {len(ptx)}")


def test_kernels_compile_to_ptx():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, __file__, "--ptx"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    if proc.stdout.startswith("NO-NVVM"):
        pytest.skip(f"numba cannot find NVVM here: {proc.stdout[:200]}")
    compiled = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PTX ")]
    assert compiled == ["parse", "rows-float32", "rows-float16", "rows-uint8", "meta"], proc.stdout


@pytest.fixture(scope="module")
def cuda_out(tmp_path_factory):
    out_path = tmp_path_factory.mktemp("cudasim") / "out.npz"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, __file__, str(out_path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out_path) as data:
        return dict(data)


def assert_meta_equal(cuda_out, prefix, meta):
    for key in META_KEYS:
        got = cuda_out[prefix + key]
        assert got.dtype == meta[key].dtype, key
        assert np.array_equal(got, meta[key]), key


@pytest.mark.parametrize("mask", ["paper", "strict"])
@pytest.mark.parametrize("keep_dns", [False, True])
def test_uint8_rows_equal_cpu(cuda_out, mask, keep_dns):
    rows, meta = cpu.transform(catalog_batch(), mask, keep_dns)
    assert rows.shape[0] > 30
    prefix = f"u8_{mask}_{int(keep_dns)}_"
    assert np.array_equal(cuda_out[prefix + "rows"], rows)
    assert_meta_equal(cuda_out, prefix, meta)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_normalized_rows_equal_cpu_over_255(cuda_out, dtype):
    rows, meta = cpu.transform(catalog_batch(), "strict", False)
    k = rows.shape[0]
    got = cuda_out[f"{dtype}_rows"]
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(got[:k], (rows / 255.0).astype(dtype))
    assert (got[k:] == 7).all()
    assert got[:k].max() == 1.0  # some 0xFF byte maps to exactly 1
    assert_meta_equal(cuda_out, f"{dtype}_", meta)


def test_device_resident_input(cuda_out):
    rows, meta = cpu.transform(catalog_batch(), "paper", False)
    assert np.array_equal(cuda_out["devraw_rows"], rows)
    assert_meta_equal(cuda_out, "devraw_", meta)


def test_metadata_dtypes_follow_the_schema_empty_or_not(cuda_out):
    from pktnin.schema import PACKET_META

    full_rows, full = cpu.transform(catalog_batch(), "paper", False)
    empty_rows, empty = cpu.transform(pg.batch([]))
    assert full_rows.shape[0] > 0 and empty_rows.shape[0] == 0
    for name, (dtype, shape) in PACKET_META.items():
        for got in (full[name], empty[name], cuda_out["u8_paper_0_" + name], cuda_out["empty_" + name]):
            assert got.dtype == dtype and got.shape[1:] == shape, name


def test_empty_batch_and_small_buffer(cuda_out):
    assert cuda_out["empty_rows"].shape == (0, layout.ROW_LEN)
    assert cuda_out["empty_skip_counts"].sum() == 0
    assert "keeps" in str(cuda_out["small_error"])


if __name__ == "__main__":
    if sys.argv[1] == "--ptx":
        compile_ptx_child()
    else:
        run_child(sys.argv[1])
