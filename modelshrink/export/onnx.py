"""ONNX export (torch.onnx's torch.export-based exporter) and int8 by ONNX Runtime's own quantizer.

The batch dimension of every input stays dynamic. Static int8 is QDQ with per-channel weights,
calibrated on the recipe's calibration data (ONNX Runtime's `quantize_static` after its
`quant_pre_process`), the configuration issue #14 measured at 4.3x fp32 on ResNet-18; `dynamic`
quantizes weights ahead and activations on the fly. Layers the recipe keeps in float (`exclude`
globs) are found by the module path torch.onnx records on each node (`pkg.torch.onnx.name_scopes`);
a convolution folded with its batch norm carries the batch norm's name, which `export.with_folded_norms` adds.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.errors import UserError, first_line
from modelshrink.export.base import Exported
from modelshrink.export.feeds import dynamic_axes, feeds
from modelshrink.export.onnx_sparse import sparsify
from modelshrink.inputs import Inputs, as_args
from modelshrink.quiet import quiet
from modelshrink.recipe.export_specs import OnnxExport
from modelshrink.registry import register
from modelshrink.runtimes.sessions import onnxruntime_session
from modelshrink.stages.selection import matches_any

# Dynamic int8 covers matrix products and recurrent layers, as PyTorch's dynamic mode does: ONNX Runtime's
# dynamic integer convolutions ran ResNet-18 at 0.27x fp32 here (static int8 is the mode for convolutions).
DYNAMIC_OPS = ["MatMul", "Gemm", "LSTM", "GRU", "Attention"]


@register(OnnxExport)
def export_onnx(model: nn.Module, spec: OnnxExport, data: DataBundle, exclude: list[str], threads: int) -> Exported:
    blob = to_onnx(model, data.example_inputs(2))
    notes = []
    config = transformer_config(model)
    if config is not None:
        blob, fused = optimize_transformer(blob, config)
        notes.append(f"ONNX Runtime's transformer optimizer ({config.model_type}) fused {fused or 'nothing'}")
    if spec.quantize != "none":
        blob = quantize(blob, spec, data, exclude)
    blob, moved = sparsify(blob)
    if moved:
        notes.append(
            f"{moved} weight tensor(s) stored as ONNX sparse initializers (non-zero values and their "
            "positions); ONNX Runtime makes them dense when it opens the file, so only the file is smaller"
        )
    return Exported(spec, {spec.file_name: blob}, OnnxRuntimeModel(blob, threads), notes)


def to_onnx(model: nn.Module, example: Inputs) -> bytes:
    args, kwargs = as_args(example)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims: Any = (
        {name: dynamic_axes(value, batch, sequence) for name, value in kwargs.items()}
        if kwargs
        else tuple(dynamic_axes(value, batch, sequence) for value in args)
    )
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                model.eval(), args, kwargs=kwargs, dynamo=True, dynamic_shapes=dims, verbose=False
            )
    except Exception as exc:  # the exporter raises many types for unsupported code and operators
        raise UserError(f"cannot export the model to ONNX ({first_line(exc)[:300]})") from None
    return program.model_proto.SerializeToString()


def transformer_config(model: nn.Module) -> Any:
    """The Hugging Face config of a transformer inside `model`, if ONNX Runtime's optimizer knows its type."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "model_type", None) in MODEL_TYPES and hasattr(config, "num_attention_heads"):
            return config
    return None


def optimize_transformer(blob: bytes, config: Any) -> tuple[bytes, str]:
    """ONNX Runtime's transformer graph optimizer (fused layer norms, GELU, attention where it matches
    the exported pattern), run before quantizing as ONNX Runtime advises; returns what it fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory(prefix="modelshrink-onnx-") as scratch, working_directory(scratch):
        source = Path(scratch) / "fp32.onnx"
        source.write_bytes(blob)
        with quiet(), contextlib.redirect_stdout(io.StringIO()), onnxruntime_errors("optimize"):
            optimized = optimize_model(
                str(source), config.model_type, config.num_attention_heads, getattr(config, "hidden_size", 0)
            )
        fused = ", ".join(f"{op} {n}" for op, n in optimized.get_fused_operator_statistics().items() if n)
        return optimized.model.SerializeToString(), fused


def quantize(blob: bytes, spec: OnnxExport, data: DataBundle, exclude: list[str]) -> bytes:
    """int8 through ONNX Runtime's quantizer, which works on files: a scratch directory holds them."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="modelshrink-onnx-") as scratch, working_directory(scratch):
        source, prepared, target = (Path(scratch) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(blob)
        # ONNX Runtime's quantizer prints its progress, which would land in `--json`'s stdout; its
        # symbolic shape inference stops at the transformer optimizer's fused operators (plain ONNX
        # shape inference still runs)
        with quiet(), contextlib.redirect_stdout(io.StringIO()), onnxruntime_errors(f"quantize {spec.quantize}"):
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            excluded = excluded_nodes(prepared, exclude)
            if spec.quantize == "dynamic":
                quantize_dynamic(
                    str(prepared),
                    str(target),
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    nodes_to_exclude=excluded,
                    op_types_to_quantize=DYNAMIC_OPS,
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


@contextlib.contextmanager
def working_directory(path: str) -> Iterator[None]:
    """ONNX Runtime's symbolic shape inference saves `sym_shape_infer_temp.onnx` (and its weights) into the
    current directory when it cannot infer every shape: its tools run inside the scratch directory, so
    nothing lands in the user's directory (contextlib.chdir is Python 3.11+)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def onnxruntime_errors(step: str) -> Iterator[None]:
    """ONNX Runtime's tools fail on some graphs; that is a limit of the tool on this model, in one line.
    They also log a warning per weight they skip (e.g. layer norms) on the root logger: muted here."""
    logging.disable(logging.WARNING)
    try:
        yield
    except Exception as exc:  # its tools raise whatever their graph passes trip over
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        raise UserError(f"ONNX Runtime could not {step} the exported model ({reason})") from None
    finally:
        logging.disable(logging.NOTSET)


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


class CalibrationReader:
    """ONNX Runtime's calibration data reader over the recipe's calibration batches."""

    def __init__(self, batches: Iterator[Inputs], names: list[str]):
        self.batches, self.names = batches, names

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self.batches, None)
        return None if batch is None else feeds(self.names, *as_args(batch))


class OnnxRuntimeModel(nn.Module):
    """Runs an ONNX file in ONNX Runtime on the CPU, called like the PyTorch model it came from, so the
    metrics code measures it unchanged; timed in a process of its own (`isolated`). The session is
    kept out of the module tree."""

    def __init__(self, blob: bytes, threads: int):
        super().__init__()
        session = onnxruntime_session(blob, threads)
        self.__dict__["session"] = session
        self.__dict__["blob"] = blob
        self.threads = threads
        self.names = [value.name for value in session.get_inputs()]

    def isolated(self) -> tuple[str, dict[str, Any]]:
        """What a timing worker opens to run this file as here (`modelshrink.runtimes`)."""
        return "onnxruntime", {"blob": self.blob, "threads": self.threads}

    def feeds(self, inputs: Inputs) -> dict[str, Any]:
        return feeds(self.names, *as_args(inputs))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = [torch.from_numpy(out) for out in self.session.run(None, feeds(self.names, args, kwargs))]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
