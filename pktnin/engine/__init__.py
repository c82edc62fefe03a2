"""Inference engines: ONNX export, runners (ONNX Runtime on the CPU, TensorRT on the GPU), engine build.

    export.py       checkpoint -> one ONNX graph (row [batch,1500] -> probs [batch,C]) with pktnin metadata
    protocols.py    ModelRunner (classes, infer) and DeviceRunner (TensorRT's prep-on-device face) as Protocols
    runner_base.py  Runner, the base class of the runners; ModelInfo, the engine error types
    ort_runner.py   OnnxRuntimeRunner (IO binding into preallocated outputs)
    trt_build.py    TensorRT plan + sidecar JSON; fp16.py: float16 ONNX for strongly typed TensorRT
    trt_runner.py   TensorRTRunner (pycuda in the primary context, pinned buffers, two slots, zero-copy prep)
    runners.py      open_runner(model, backend) and the bundled default model
    cache.py        content-hash cache of derived files; sidecar.py, gpu_env.py: plan metadata, GPU imports
GPU libraries are imported only inside the functions that need them.
"""

from pktnin.engine.runner_base import EngineUnavailableError, ModelInfo, ModelMismatchError, Runner
from pktnin.engine.runners import default_model_path, open_runner

__all__ = ["EngineUnavailableError", "ModelInfo", "ModelMismatchError", "Runner", "default_model_path", "open_runner"]
