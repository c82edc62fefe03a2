"""The GPU path of `pktnin score` (raw records -> CUDA prep kernel writing the engine's input -> engine) under
numba's CUDA simulator, against the CPU path on the same captures.

The simulator must be switched on before numba.cuda is first imported and must not leak into other tests, so
the GPU side runs in a child process (this file run as a script with NUMBA_ENABLE_CUDASIM=1). Its runner is a
stand-in with TensorRTRunner's DeviceRunner face (device_input(slot) as device arrays, prep_stream(),
submit/collect over two slots); its "engine" is ONNX Runtime on a host copy of the slot's device input.
Rows the prep did not write are poisoned (NaN / 0xEE), so a stage submitting stale rows gives wrong output.
The child only needs numba.cuda: run without NUMBA_ENABLE_CUDASIM on a machine with a GPU, it exercises the
real kernels, streams and device buffers (TensorRT and pycuda excepted).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from onnx_fixtures import tiny_model
from packetgen import mixed_traffic
from pcapgen import write_pcap, write_pcapng

from pktnin.layout import ROW_LEN

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
CLASSES = ["Web", "VoIP", "Chat", "Video"]
BATCH = 8  # engine batch: several batches per file, and small files sharing one batch
# (model input dtype, mask, keep_dns) per case; the engine input dtype follows the model's
CASES = {"f32": ("float32", "paper", False), "u8": ("uint8", "strict", True)}


# -- inputs ------------------------------------------------------------------------------------------------
def make_captures(root: Path) -> Path:
    """Five captures (pcap and pcapng, one of 3 packets, one cut short) and a text file: 62 records."""
    root.mkdir(parents=True, exist_ok=True)
    write_pcap(root / "a.pcap", mixed_traffic(1, 20), nanosecond=True)
    write_pcapng(
        root / "b.pcapng", [{"interfaces": [(1, 9)], "records": [("epb", 0, ts, d) for ts, d in mixed_traffic(2, 13)]}]
    )
    write_pcap(root / "c_tiny.pcap", mixed_traffic(3, 3), nanosecond=True)
    write_pcap(root / "d.pcap", mixed_traffic(4, 17), nanosecond=True)
    whole = write_pcap(root / "e_cut.pcap", mixed_traffic(5, 9), nanosecond=True).read_bytes()
    (root / "e_cut.pcap").write_bytes(whole[:-20])  # the last record is cut short
    (root / "notes.txt").write_text("not a capture\n")
    return root


def _options(out_dir: Path, case: str, name: str | None = None):
    from pktnin.scoring import ScoreOptions

    _, mask, keep_dns = CASES[case]
    name = name or case
    return ScoreOptions(out=out_dir / f"{name}.parquet", flows_out=out_dir / f"{name}.flows.parquet", probs=True,
                        mask=mask, keep_dns=keep_dns, batch=BATCH, model_id=case)  # fmt: skip


# -- the child: GPU path under the simulator ---------------------------------------------------------------
class SimDeviceRunner:
    """TensorRTRunner's device-side interface on numba device arrays; the engine is ONNX Runtime on the host."""

    backend = "tensorrt"
    num_slots = 2

    def __init__(self, onnx_path: Path, max_batch: int, fail_at_submit: int | None = None) -> None:
        from numba import cuda

        from pktnin.engine.ort_runner import OnnxRuntimeRunner

        self.ort = OnnxRuntimeRunner(onnx_path, intra_threads=1, max_batch=max_batch).load()
        self.classes = self.ort.classes
        self.max_batch = max_batch
        self.engine_input_dtype = np.dtype(np.float32 if self.ort.input_dtype == "float32" else np.uint8)
        self._inputs = [cuda.device_array((max_batch, ROW_LEN), self.engine_input_dtype) for _ in range(2)]
        self._outputs = [np.empty((max_batch, len(self.classes)), np.float32) for _ in range(2)]
        self._n = [0, 0]
        self._prep_stream = cuda.stream()
        self.fail_at_submit = fail_at_submit
        self.submits: list[tuple[int, int, int]] = []  # (slot, rows, slots in flight after this submit)
        for slot in range(2):
            self._poison(slot)

    def _poison(self, slot: int) -> None:
        fill = np.nan if self.engine_input_dtype == np.float32 else 0xEE
        self._inputs[slot].copy_to_device(np.full((self.max_batch, ROW_LEN), fill, self.engine_input_dtype))

    def prep_stream(self):
        return self._prep_stream

    def device_context(self):
        return contextlib.nullcontext()

    def device_input(self, slot: int):
        if self._n[slot]:
            raise RuntimeError(f"slot {slot} is still in flight: collect() it first")
        return self._inputs[slot]

    def submit(self, slot: int, n: int, rows=None) -> None:
        if self._n[slot]:
            raise RuntimeError(f"slot {slot} is still in flight: collect() it first")
        if rows is not None or not 1 <= n <= self.max_batch:
            raise ValueError(f"bad submit: rows={type(rows).__name__}, n={n}")
        if self.fail_at_submit is not None and len(self.submits) == self.fail_at_submit:
            raise RuntimeError("engine failed on purpose")
        self.ort.infer(self._inputs[slot].copy_to_host()[:n], self._outputs[slot])
        self._n[slot] = n
        self.submits.append((slot, n, sum(1 for k in self._n if k)))

    def collect(self, slot: int, out: np.ndarray) -> np.ndarray:
        n = self._n[slot]
        if not n:
            raise RuntimeError(f"slot {slot} has nothing in flight")
        out[:n] = self._outputs[slot][:n]
        self._n[slot] = 0
        self._poison(slot)  # the next batch in this slot must write every row it submits
        return out[:n]

    def close(self) -> None:
        self.ort.close()


def run_child(spec_path: str) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # uint64 wrap-around in the flow hash
    from pktnin.engine.protocols import DeviceRunner
    from pktnin.packets import find_captures
    from pktnin.scoring import manifest as mf
    from pktnin.scoring import score_files

    spec = json.loads(Path(spec_path).read_text())
    files = find_captures([spec["captures"]])
    out_dir = Path(spec["out_dir"])
    summary = {}
    for case, model in spec["models"].items():
        runner = SimDeviceRunner(Path(model), BATCH)
        result = score_files(files, runner, _options(out_dir, case))
        summary[case] = {
            "device_runner": isinstance(runner, DeviceRunner),
            "submits": runner.submits,
            "reports": [mf.report_to_dict(r) for r in result.reports],
            "packets": result.packets,
            "records": result.records,
        }
    failing = SimDeviceRunner(Path(spec["models"]["f32"]), BATCH, fail_at_submit=2)
    try:
        score_files(files, failing, _options(out_dir, "f32", name="fail"))
        summary["fail"] = None
    except RuntimeError as exc:
        summary["fail"] = str(exc)
    (out_dir / "summary.json").write_text(json.dumps(summary))


# -- the tests ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """CPU path here, GPU path in the simulator child, on the same captures and models."""
    from pktnin.engine.ort_runner import OnnxRuntimeRunner
    from pktnin.packets import find_captures
    from pktnin.scoring import manifest as mf
    from pktnin.scoring import score_files

    base = tmp_path_factory.mktemp("gpu_sim")
    captures = make_captures(base / "in")
    models = {case: str(tiny_model(base / f"{case}.onnx", CLASSES, seed=5, input_dtype=dtype))
              for case, (dtype, _, _) in CASES.items()}  # fmt: skip
    cpu_dir, gpu_dir = base / "cpu", base / "gpu"
    cpu_dir.mkdir()
    gpu_dir.mkdir()
    files = find_captures([captures])
    cpu = {}
    for case, model in models.items():
        with OnnxRuntimeRunner(model, intra_threads=1, max_batch=BATCH) as runner:
            result = score_files(files, runner, _options(cpu_dir, case))
        cpu[case] = {"reports": [mf.report_to_dict(r) for r in result.reports], "packets": result.packets,
                     "records": result.records}  # fmt: skip

    spec = base / "spec.json"
    spec.write_text(json.dumps({"captures": str(captures), "out_dir": str(gpu_dir), "models": models}))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, __file__, spec], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=240, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    gpu = json.loads((gpu_dir / "summary.json").read_text())
    return {"cpu": cpu, "gpu": gpu, "cpu_dir": cpu_dir, "gpu_dir": gpu_dir}


def _assert_same_table(cpu_path: Path, gpu_path: Path) -> int:
    cpu, gpu = pq.read_table(cpu_path), pq.read_table(gpu_path)
    assert cpu.schema == gpu.schema
    assert cpu.num_rows == gpu.num_rows
    prob_cols = [c for c in cpu.column_names if c == "prob" or c == "confidence" or c.startswith("p_")]
    for name in cpu.column_names:
        if name in prob_cols:
            a, b = cpu[name].to_numpy(), gpu[name].to_numpy()
            assert np.isfinite(b).all(), name
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, err_msg=name)
        else:
            assert gpu[name].equals(cpu[name]), name  # same rows, same order, same metadata and labels
    return cpu.num_rows


@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_path_packets_and_flows_equal_cpu_path(runs, case):
    rows = _assert_same_table(runs["cpu_dir"] / f"{case}.parquet", runs["gpu_dir"] / f"{case}.parquet")
    flows = _assert_same_table(runs["cpu_dir"] / f"{case}.flows.parquet", runs["gpu_dir"] / f"{case}.flows.parquet")
    assert rows >= 30 and flows >= 6
    cpu, gpu = runs["cpu"][case], runs["gpu"][case]
    assert gpu["reports"] == cpu["reports"]  # records, kept, skips by reason, errors, failed files
    assert (gpu["packets"], gpu["records"]) == (cpu["packets"], cpu["records"]) == (rows, 62 - 1)
    assert any(r["skip_counts"] for r in gpu["reports"])
    assert any(r["failed"] for r in gpu["reports"]) and any(r["stopped_early"] for r in gpu["reports"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_path_uses_both_slots_and_fills_batches(runs, case):
    assert runs["gpu"][case]["device_runner"]  # the stand-in shows the whole DeviceRunner face
    submits = runs["gpu"][case]["submits"]
    assert sum(n for _, n, _ in submits) == runs["gpu"][case]["packets"]
    assert all(1 <= n <= BATCH for _, n, _ in submits)
    assert {slot for slot, _, _ in submits} == {0, 1}
    assert max(in_flight for _, _, in_flight in submits) == 2  # prep of k+1 happened while k was in flight
    chunks = sum(-(-r["records"] // BATCH) for r in runs["gpu"][case]["reports"])
    assert len(submits) < chunks  # small files' chunks share a batch


def test_gpu_path_engine_error_reaches_caller(runs):
    assert runs["gpu"]["fail"] == "engine failed on purpose"
    assert not (runs["gpu_dir"] / "fail.parquet").exists()


def test_own_raw_keeps_only_the_records_and_transforms_the_same(tmp_path):
    from pktnin.kernels import cpu
    from pktnin.kernels.capture import CaptureReader
    from pktnin.scoring.gpu_stages import own_raw

    path = make_captures(tmp_path / "in") / "a.pcap"
    chunks = 0
    for raw in CaptureReader(path, max_records=6):
        owned = own_raw(raw)
        assert owned.buf.base is None and owned.buf.nbytes < 6 * 400
        rows_a, meta_a = cpu.transform(raw)
        rows_b, meta_b = cpu.transform(owned)
        assert np.array_equal(rows_a, rows_b)
        for key in meta_a:
            assert np.array_equal(meta_a[key], meta_b[key]), key
        chunks += 1
    assert chunks == 4


def test_device_batch_size_is_capped_by_the_engine():
    from types import SimpleNamespace

    from pktnin.scoring.gpu_stages import device_batch_size

    assert device_batch_size(SimpleNamespace(max_batch=64), 512) == 64
    assert device_batch_size(SimpleNamespace(max_batch=4096), 512) == 512


if __name__ == "__main__":
    run_child(sys.argv[1])
