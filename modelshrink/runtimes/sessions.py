"""How each runtime is opened for inference, in one place for the parent (quality, validation) and
the timing worker, so both run the file with the same options. Imports no torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds], list[np.ndarray]]


def onnxruntime_session(blob: bytes, threads: int) -> Any:
    """An ONNX Runtime session on the CPU with `threads` intra-op threads that sleep when idle: idle
    threads spin for work by default, taking the cores from whatever runs next (PyTorch eager ResNet-18
    at batch 1 ran 2.7x slower beside a spinning session). Its C++ warnings (e.g. unused initializers)
    are not shown: errors still raise."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def openvino_config(threads: int, precision: str, sparse_rate: float | None = None) -> dict[str, Any]:
    """The CPU plugin's properties; `sparse_rate`: pack int8 MatMul weights with at least this share of
    zeros (sparse weight decompression, AMX kernels), None: dense."""
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if sparse_rate is not None:
        # a string: OpenVINO 2024's Python binding refuses a float here ("Expected only float numbers");
        # every version parses the string
        config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = str(sparse_rate)
    return config


def openvino_compiled(model: Any, threads: int, precision: str, sparse_rate: float | None = None) -> Any:
    """`model` (an openvino.Model) compiled for the CPU plugin with the latency hint on `threads` threads."""
    import openvino

    return openvino.Core().compile_model(model, "CPU", openvino_config(threads, precision, sparse_rate))


def onnxruntime_runner(blob: bytes, threads: int) -> Runner:
    session = onnxruntime_session(blob, threads)
    return lambda feeds: session.run(None, feeds)


def openvino_runner(
    xml: bytes, weights: bytes, threads: int, precision: str, sparse_rate: float | None = None
) -> Runner:
    import openvino

    model = openvino.Core().read_model(model=xml, weights=openvino.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    compiled = openvino_compiled(model, threads, precision, sparse_rate)
    request = compiled.create_infer_request()
    return lambda feeds: list(request.infer(feeds).values())


# the runtimes a worker can open, by the name a runtime module gives (`Isolated.runtime`)
RUNNERS: dict[str, Callable[..., Runner]] = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}
