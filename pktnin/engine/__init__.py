"""Inference engines: ONNX export, quantization, runners (ONNX Runtime and OpenVINO on the CPU, TensorRT on the
GPU), engine choice and build.

Modules, lowest first (each imports only modules above it in this list):
    errors.py          EngineUnavailableError, ModelMismatchError
    cache.py           the cache folder, content hashes, the CPU model name
    model_file.py      the ONNX model file: tensor names, metadata keys, ModelInfo, int8 companion, agreement record
    bundled.py         the models shipped in pktnin/models, model option name -> file
    ort_session.py     ONNX Runtime import (telemetry off) and its errors
    runner_base.py     Runner (infer checks, then the backend's _infer), EngineChoice
    protocols.py       ModelRunner and DeviceRunner, what the scoring stages use
    ort_runner.py      OnnxRuntimeRunner (IO binding into preallocated outputs)
    workers.py         SessionPoolRunner (several single-thread ONNX Runtime sessions)
    openvino_runner.py OpenVinoRunner (fp32, bf16, int8 on the CPU; the `openvino` extra)
    flow_runner.py     FlowModelRunner: a flow model (first K rows of a flow) on ONNX Runtime, float32
    graph_rewrite.py   Conv1D rewrites; port_table.py: the port-table branch fused into a model
    name_table.py      the server-name table of a flow model and its fusion into the graph
    output_branch.py   a branch appended behind a model's output (how both tables are fused in)
    export.py          checkpoint -> one ONNX graph; the checkpoint export cache
    fp16.py            float16 ONNX for strongly typed TensorRT; gpu_env.py, sidecar.py: GPU imports, plan metadata
    quantize.py        static int8 (QDQ) models checked against float32 on held-out rows
    trt_build.py       TensorRT plan + sidecar; trt_runner.py: TensorRTRunner (pycuda, pinned buffers, two slots)
    precision.py       which CPU engine runs (auto: the fastest that agrees with float32), engine timings
    runners.py         open_runner / open_runner_with_choice: any model file -> a loaded runner
    catalog.py         what `pktnin models` shows: bundled models' metadata, agreement, recorded speeds
Optional libraries (onnx, openvino, tensorrt, pycuda, numba.cuda, tensorflow) are imported inside the functions
that need them.
"""

from pktnin.engine.bundled import default_model_path, default_packet_model_path
from pktnin.engine.errors import EngineUnavailableError, ModelMismatchError
from pktnin.engine.model_file import ModelInfo
from pktnin.engine.runner_base import EngineChoice, Runner
from pktnin.engine.runners import open_runner, open_runner_with_choice

__all__ = [
    "EngineChoice",
    "EngineUnavailableError",
    "ModelInfo",
    "ModelMismatchError",
    "Runner",
    "default_model_path",
    "default_packet_model_path",
    "open_runner",
    "open_runner_with_choice",
]
