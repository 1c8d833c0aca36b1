"""Issue #27's sparse speed targets, which need particular hardware, each measured side by side in one run.

    python scripts/bench_sparse_speed.py --openvino-ir DIR [--sweep 0.5 0.7 0.9] [--static] [--threads 1 4]

An int8 OpenVINO IR (DIR/model.xml, model.bin and inputs.npy, as `bench_sparse.py --minilm --save DIR`
writes them) compiled dense and with sparse weight decompression, timed at batch 1 round-robin, each in
a worker process of its own (modelshrink's own export timing). `--sweep` also zeroes the smallest int8
weights of every MatMul to each share and times that IR the same way: the curve of the speed-up against
sparsity (a probe of OpenVINO's kernels: quality is not measured there); `--static` also times each IR
reshaped to the input's fixed shape. After each IR comes the kernel every FullyConnected layer ran, dense
and sparse, from OpenVINO's profiling. OpenVINO packs sparse weights only on CPUs with AMX; elsewhere both
compile dense, which the output says. Target: >= 1.2x at batch 1.

    python scripts/bench_sparse_speed.py --semi-structured [--batches 1 8 64 256]

On a CUDA GPU, fp16, 128 tokens a sequence: single Linear layers (BERT-base's shapes and the 3072->10240 of
PyTorch's 2:4 tutorial), then MiniLM- and BERT-base-shaped encoders (random weights: speed does not depend
on their values), with every Linear weight pruned 2:4 by modelshrink's own `nm_mask` and stored by
`torch.sparse.to_sparse_semi_structured`, against the same pruned model dense, timed with CUDA events,
interleaved. Without CUDA it says so: on a CPU 2:4 brings only the size benefit.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelshrink.environment import cpu_summary, environment, has_cpu_feature
from modelshrink.export.openvino_sparse import AMX, DEFAULT_RATE

SEQUENCE = 128
SHAPES = {  # hidden size, layers, heads, intermediate size
    "MiniLM-L6 (384)": (384, 6, 12, 1536),
    "BERT-base (768)": (768, 12, 12, 3072),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openvino-ir", type=Path, help="folder holding model.xml, model.bin, inputs.npy")
    parser.add_argument("--sweep", type=float, nargs="*", default=[], help="also time the IR this sparse")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="OpenVINO inference threads")
    parser.add_argument("--static", action="store_true", help="also time each IR reshaped to the input's shape")
    parser.add_argument("--semi-structured", action="store_true", help="2:4 on a CUDA GPU")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(f"CPU: {cpu_summary(environment())}")
    if args.openvino_ir:
        ir_sweep(args.openvino_ir, args.sweep, args.threads, args.static)
    if args.semi_structured:
        semi_structured(args.batches, args.repeats)


def ir_sweep(folder: Path, sweep: list[float], threads: list[int], static: bool) -> None:
    import openvino
    import torch

    xml, weights = (folder / "model.xml").read_bytes(), (folder / "model.bin").read_bytes()
    inputs = torch.from_numpy(np.load(folder / "inputs.npy"))
    irs = {"as pruned": (xml, weights)}
    for share in sweep:
        irs[f"zeroed to {share:.0%}"] = with_zeros(read(xml, weights), share)
    if static:  # OpenVINO's own sparse BERT tutorial benchmarks fixed input shapes
        irs |= {f"{label}, static": saved(reshaped(read(*ir), inputs.shape)) for label, ir in irs.items()}
    if not has_cpu_feature(AMX):
        print(f"this CPU lacks AMX ({AMX}): OpenVINO compiles both dense, so the ratios below are noise")
    print(f"OpenVINO {openvino.__version__}, batch 1, rate {DEFAULT_RATE}: Linear layers at least that sparse packed")
    print(f"{'IR':>24s} {'zeros':>6s} {'threads':>7s} {'dense ms':>9s} {'sparse ms':>9s} {'speed-up':>8s}")
    for label, (ir_xml, ir_weights) in irs.items():
        zeros = int8_zero_fraction(read(ir_xml, ir_weights))
        for count in threads:
            dense_ms, sparse_ms = openvino_ir(ir_xml, ir_weights, inputs, count)
            print(f"{label:>24s} {zeros:6.1%} {count:7d} {dense_ms:9.2f} {sparse_ms:9.2f} "
                  f"{dense_ms / sparse_ms:7.2f}x", flush=True)  # fmt: skip
        print(f"{'':>24s} Linear kernels: " + "; ".join(
            f"{kind} {fully_connected_kernels(read(ir_xml, ir_weights), rate, inputs)}"
            for kind, rate in (("dense", None), ("sparse", DEFAULT_RATE))))  # fmt: skip


def openvino_ir(xml: bytes, weights: bytes, inputs: Any, threads: int) -> tuple[float, float]:
    """Median batch-1 milliseconds of the IR compiled dense and with sparse weight decompression, each
    in its own worker process, round-robin (`metrics.latency.time_round_robin`)."""
    from modelshrink.export.openvino import OpenVinoModel
    from modelshrink.metrics.latency import time_round_robin

    ir = read(xml, weights)
    models = [OpenVinoModel(ir, threads, "f32", (xml, weights), rate) for rate in (None, DEFAULT_RATE)]
    dense, sparse = (statistics.median(times) for times in time_round_robin(models, inputs, 10, 200))
    return dense, sparse


def fully_connected_kernels(ir: Any, rate: float | None, inputs: Any) -> dict[str, int]:
    """How many FullyConnected (Linear) layers ran with each kernel in one inference, by OpenVINO's
    profiling: whether any ran sparse."""
    import openvino

    from modelshrink.runtimes.sessions import openvino_config

    compiled = openvino.Core().compile_model(ir, "CPU", {**openvino_config(1, "f32", rate), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer({0: inputs.numpy()})
    return dict(Counter(layer.exec_type for layer in request.profiling_info if layer.node_type == "FullyConnected"))


def reshaped(ir: Any, shape: tuple[int, ...]) -> Any:
    ir.reshape({ir.inputs[0].get_any_name(): list(shape)})
    return ir


def read(xml: bytes, weights: bytes) -> Any:
    import openvino

    return openvino.Core().read_model(model=xml, weights=openvino.Tensor(np.frombuffer(weights, dtype=np.uint8)))


def int8_weights(model: Any) -> list[Any]:
    """The int8 constants that feed a MatMul (through NNCF's Convert and scale Multiply): the quantized
    Linear weights, the ones OpenVINO packs; int8 embedding tables feed a Gather and are left out."""
    import openvino

    return [
        op
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type() == openvino.Type.i8 and feeds_matmul(op, 3)
    ]


def feeds_matmul(op: Any, hops: int) -> bool:
    consumers = [target.get_node() for output in op.outputs() for target in output.get_target_inputs()]
    return any(c.get_type_name() == "MatMul" or (hops > 1 and feeds_matmul(c, hops - 1)) for c in consumers)


def int8_zero_fraction(model: Any) -> float:
    arrays = [op.get_data() for op in int8_weights(model)]
    return sum(int((a == 0).sum()) for a in arrays) / max(1, sum(a.size for a in arrays))


def with_zeros(model: Any, share: float) -> tuple[bytes, bytes]:
    """The IR with the `share` smallest-magnitude int8 weights of each MatMul set to zero (a symmetric
    int8 zero is a float zero), serialized as the export writes it."""

    try:
        from openvino import op as ops
    except ImportError:  # OpenVINO 2024 keeps them under runtime
        from openvino.runtime import op as ops

    for constant in int8_weights(model):
        values = constant.get_data().copy()
        magnitudes = np.abs(values.astype(np.int16)).ravel()
        values.ravel()[np.argsort(magnitudes, kind="stable")[: int(share * values.size)]] = 0
        constant.output(0).replace(ops.Constant(values).output(0))
    return saved(model)


def saved(model: Any) -> tuple[bytes, bytes]:
    """The IR's .xml and .bin, as the export writes them."""
    import openvino

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.xml"
        openvino.save_model(model, str(path), compress_to_fp16=False)
        return path.read_bytes(), path.with_suffix(".bin").read_bytes()


def semi_structured(batches: list[int], repeats: int) -> None:
    import torch
    from torch.sparse import SparseSemiStructuredTensor

    if not torch.cuda.is_available():
        print("no CUDA GPU: 2:4 sparsity brings only the size benefit here")
        return
    print(f"GPU: {torch.cuda.get_device_name()} · torch {torch.__version__}; fp16, {SEQUENCE} tokens a sequence")
    backends = (["cuSPARSELt"] if torch.backends.cusparselt.is_available() else []) + ["CUTLASS"]
    print(f"{'layer or encoder':>22s} {'kernels':>10s} {'batch':>6s} {'dense ms':>9s} {'2:4 ms':>8s} {'speed-up':>8s} "
          f"{'max |diff|':>10s}")  # fmt: skip
    for backend in backends:
        SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "CUTLASS"  # read by to_sparse_semi_structured
        for name, (dense, sparse), batch, inputs in cases(batches):
            try:
                with torch.no_grad():
                    diff = (output(dense(inputs)) - output(sparse(inputs))).abs().max().item()
                dense_ms, sparse_ms = cuda_times([dense, sparse], inputs, repeats)
            except (RuntimeError, NotImplementedError) as exc:  # a GPU or build without these kernels
                print(f"{name:>22s} {backend:>10s}: failed, so the rest of {backend} is skipped: {exc}".splitlines()[0])
                break
            print(f"{name:>22s} {backend:>10s} {batch:6d} {dense_ms:9.3f} {sparse_ms:8.3f} "
                  f"{dense_ms / sparse_ms:7.2f}x {diff:10.2e}", flush=True)  # fmt: skip


def cases(batches: list[int]) -> Iterator[tuple[str, tuple[Any, Any], int, Any]]:
    """(label, (dense, 2:4) models, batch, inputs): single Linear layers of BERT-base's shapes on the
    tokens of `batch` sequences (the kernels alone), then whole encoders (as deployed, eager)."""
    import torch
    from torch import nn

    for inputs, outputs in ((768, 3072), (3072, 768), (3072, 10240)):  # the last: torch's 2:4 tutorial
        models = pruned_pair(nn.Linear(inputs, outputs).half().cuda().eval())
        for batch in batches:
            tokens = torch.randn(batch * SEQUENCE, inputs, dtype=torch.half, device="cuda")
            yield f"Linear {inputs}->{outputs}", models, batch, tokens
    for name, shape in SHAPES.items():
        models = pruned_pair(encoder(*shape))
        for batch in batches:
            yield name, models, batch, torch.randint(1000, 30000, (batch, SEQUENCE), device="cuda")


def output(result: Any) -> Any:
    return getattr(result, "last_hidden_state", result)


def encoder(hidden: int, layers: int, heads: int, intermediate: int) -> Any:
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate)  # fmt: skip
    return BertModel(config).half().cuda().eval()


def pruned_pair(model: Any) -> tuple[Any, Any]:
    """`model` with its Linear weights pruned 2:4 by modelshrink's `nm_mask`, stored dense; and a copy
    storing them as `to_sparse_semi_structured` tensors."""
    import torch
    from torch import nn
    from torch.sparse import to_sparse_semi_structured

    from modelshrink.stages.prune.nm import nm_mask

    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.shape[0] >= 64]
    with torch.no_grad():
        for module in linears:
            module.weight.mul_(nm_mask(module.weight, 2, 4))
    sparse = copy.deepcopy(model)
    for module in sparse.modules():
        if isinstance(module, nn.Linear) and module.weight.shape[0] >= 64:  # the smallest 2:4 kernels
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight), requires_grad=False)
    return model, sparse


def cuda_times(models: list[Any], ids: Any, repeats: int) -> list[float]:
    """Median milliseconds of one forward pass of each model, interleaved, after a warm-up."""
    import torch

    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for _ in range(5):
            for model in models:
                model(ids)
        for _ in range(repeats):
            for model, samples in zip(models, times, strict=True):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(ids)
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end))
    return [statistics.median(samples) for samples in times]


if __name__ == "__main__":
    sys.exit(main())
