"""ONNX export (torch.onnx's torch.export-based exporter) and int8 by ONNX Runtime's own quantizer.

The batch dimension of every input stays dynamic. Static int8 is QDQ with per-channel weights,
calibrated on the recipe's calibration data (ONNX Runtime's `quantize_static` after its
`quant_pre_process`), the configuration issue #14 measured at 4.3x fp32 on ResNet-18; `dynamic`
quantizes weights ahead and activations on the fly. Layers the recipe keeps in float (`exclude`
globs) are found by the module path torch.onnx records on each node (`pkg.torch.onnx.name_scopes`);
a convolution folded with its batch norm carries the batch norm's name.
"""

from __future__ import annotations

import ast
import contextlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.errors import UserError, first_line
from modelshrink.export.base import Exported, register
from modelshrink.inputs import Inputs, as_args
from modelshrink.quiet import quiet
from modelshrink.recipe.export_specs import OnnxExport
from modelshrink.stages.selection import matches_any


@register(OnnxExport)
def export_onnx(model: nn.Module, spec: OnnxExport, data: DataBundle, exclude: list[str], threads: int) -> Exported:
    blob = to_onnx(model, data.example_inputs(2))
    if spec.quantize != "none":
        blob = quantize(blob, spec, data, exclude)
    return Exported(spec, blob, OnnxRuntimeModel(blob, threads))


def to_onnx(model: nn.Module, example: Inputs) -> bytes:
    args, kwargs = as_args(example)
    batch = torch.export.Dim("batch")
    dims: Any = {name: {0: batch} for name in kwargs} if kwargs else tuple({0: batch} for _ in args)
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                model.eval(), args, kwargs=kwargs, dynamo=True, dynamic_shapes=dims, verbose=False
            )
    except Exception as exc:  # the exporter raises many types for unsupported code and operators
        raise UserError(f"cannot export the model to ONNX ({first_line(exc)[:300]})") from None
    return program.model_proto.SerializeToString()


def quantize(blob: bytes, spec: OnnxExport, data: DataBundle, exclude: list[str]) -> bytes:
    """int8 through ONNX Runtime's quantizer, which works on files: a scratch directory holds them."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="modelshrink-onnx-") as scratch:
        source, prepared, target = (Path(scratch) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(blob)
        # ONNX Runtime's quantizer prints its progress, which would land in `--json`'s stdout
        with quiet(), contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(source), str(prepared))
            excluded = excluded_nodes(prepared, exclude)
            if spec.quantize == "dynamic":
                quantize_dynamic(
                    str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=excluded
                )
            else:
                reader = CalibrationReader(data.calibration_inputs(spec.calibration_batches), input_names(prepared))
                quantize_static(
                    str(prepared),
                    str(target),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                )
        return target.read_bytes()


def excluded_nodes(path: Path, exclude: list[str]) -> list[str]:
    """Nodes whose module path (any enclosing module) matches a glob the recipe keeps in float."""
    if not exclude:
        return []
    import onnx

    names = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]")
        if any(matches_any(scope, exclude) for scope in ast.literal_eval(scopes) if scope):
            names.append(node.name)
    return names


def input_names(path: Path) -> list[str]:
    import onnx

    return [value.name for value in onnx.load(str(path), load_external_data=False).graph.input]


def feeds(names: list[str], inputs: tuple[Any, ...], named: dict[str, Any]) -> dict[str, Any]:
    """ONNX inputs from a call's arguments: in order, or by name for keyword inputs (token ids, masks)."""
    if named and all(name in named for name in names):
        return {name: named[name].detach().cpu().numpy() for name in names}
    values = [*inputs, *named.values()]
    return {name: value.detach().cpu().numpy() for name, value in zip(names, values, strict=False)}


class CalibrationReader:
    """ONNX Runtime's calibration data reader over the recipe's calibration batches."""

    def __init__(self, batches: Iterator[Inputs], names: list[str]):
        self.batches, self.names = batches, names

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self.batches, None)
        return None if batch is None else feeds(self.names, *as_args(batch))


class OnnxRuntimeModel(nn.Module):
    """Runs an ONNX file in ONNX Runtime on the CPU, called like the PyTorch model it came from, so the
    metrics and latency code measure it unchanged. The session is kept out of the module tree."""

    def __init__(self, blob: bytes, threads: int):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        self.__dict__["session"] = session
        self.names = [value.name for value in session.get_inputs()]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = [torch.from_numpy(out) for out in self.session.run(None, feeds(self.names, args, kwargs))]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
