"""OpenVINO IR export (`openvino.convert_model`) and int8 by NNCF's post-training quantization.

The IR keeps the batch dimension dynamic (and the sequence dimension of token inputs), as the ONNX
export does; every other dimension is fixed to the recipe's inputs so that OpenVINO plans for them.
int8 is `nncf.quantize` on the recipe's calibration batches; layers the recipe keeps in float
(`exclude` globs) are found by the module path OpenVINO's PyTorch frontend writes into an
operation's name (`__module.15/aten::linear/MatMul`). A convolution folded with its batch norm while
converting loses that name (`Multiply_3128`), so excluded convolutions are also found by their
weights: the converter's folded constant equals `fuse_conv_bn_weights` of the PyTorch modules.
Transformers get NNCF's transformer preset, which keeps the operations int8 hurts most in float.
A sparse int8 model may compile with OpenVINO's sparse weight decompression (`openvino_sparse`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_weights

from modelshrink.data.bundle import DataBundle
from modelshrink.errors import UserError, first_line
from modelshrink.export.base import Exported
from modelshrink.export.feeds import dynamic_axes, feeds, is_transformer
from modelshrink.export.openvino_sparse import sparse_rate
from modelshrink.inputs import Inputs, as_args
from modelshrink.quiet import quiet
from modelshrink.recipe.export_specs import OpenVinoExport
from modelshrink.registry import register
from modelshrink.runtimes.sessions import openvino_compiled
from modelshrink.stages.fold import conv_bn_pairs
from modelshrink.stages.selection import matches_any

_MODULE_PATH = re.compile(r"^__module\.([^/]+)/")


@register(OpenVinoExport)
def export_openvino(
    model: nn.Module, spec: OpenVinoExport, data: DataBundle, exclude: list[str], threads: int
) -> Exported:
    converted = to_openvino(model, data)
    notes = []
    if spec.quantize == "int8":
        kept = excluded_operations(converted, exclude, excluded_weights(model, data, exclude))
        converted = quantize(converted, spec, data, kept, transformer=is_transformer(model))
        if kept:
            notes.append(f"NNCF kept {len(kept)} operations float as the recipe's exclude asks")
    files = serialize(converted, spec)
    written = (files[spec.file_names[0]], files[spec.file_names[1]])

    @functools.cache  # auto compiles dense and sparse to time them: the winner is not compiled again
    def compiled(rate: float | None) -> OpenVinoModel:
        return OpenVinoModel(converted, threads, spec.precision, written, rate)

    rate, sparse_notes = sparse_rate(model, spec, data, compiled)
    runtime = compiled(rate)
    notes.append(f"OpenVINO computes float parts in {runtime.precision}")
    notes += sparse_notes
    return Exported(spec, files, runtime, notes)


@contextlib.contextmanager
def openvino_errors(step: str) -> Iterator[None]:
    """OpenVINO and NNCF fail on some graphs; that is a limit of the tool on this model, in one line.
    NNCF logs its progress (and draws progress bars) on its own: muted here, as `--json` owns stdout."""
    logging.disable(logging.WARNING)
    try:
        with quiet(), contextlib.redirect_stdout(io.StringIO()):
            yield
    except Exception as exc:  # OpenVINO's frontends and NNCF's passes raise many types
        reason = f"{type(exc).__name__}: {first_line(exc)[:300]}"
        raise UserError(f"OpenVINO could not {step} the model ({reason})") from None
    finally:
        logging.disable(logging.NOTSET)


def to_openvino(model: nn.Module, data: DataBundle) -> Any:
    import openvino

    example = data.example_inputs(2)
    args, kwargs = as_args(example)
    with openvino_errors("convert"), torch.no_grad():
        converted = openvino.convert_model(model.eval(), example_input=kwargs or (args[0] if len(args) == 1 else args))
        values = list(kwargs.values()) or list(args)
        shapes = {}
        for port, value in zip(converted.inputs, values, strict=False):
            dynamic = dynamic_axes(value, -1, -1)
            shapes[port] = openvino.PartialShape([dynamic.get(i, size) for i, size in enumerate(value.shape)])
        converted.reshape(shapes)
    return converted


@contextlib.contextmanager
def propagating(name: str) -> Iterator[None]:
    """A library logger that prints through a handler of its own (NNCF's, to stdout, set up when it is first
    imported) sends its records up to the root instead, where `quiet.collected` counts them: on stdout they
    would break `run --json`."""
    logger = logging.getLogger(name)
    handlers, propagate = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [], True
    try:
        yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate


def quantize(converted: Any, spec: OpenVinoExport, data: DataBundle, kept: list[str], transformer: bool) -> Any:
    """int8 by NNCF on the calibration batches; `kept`: operations that stay float."""
    import nncf

    names = [port.get_any_name() for port in converted.inputs]
    samples = [feeds(names, *as_args(batch)) for batch in data.calibration_inputs(spec.calibration_batches)]
    with openvino_errors("quantize"), propagating("nncf"):
        quantized = nncf.quantize(
            converted,
            nncf.Dataset(samples),
            subset_size=len(samples),
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            ignored_scope=nncf.IgnoredScope(names=kept, validate=False),
        )
    return quantized


def excluded_weights(model: nn.Module, data: DataBundle, exclude: Sequence[str]) -> list[np.ndarray]:
    """The weights of the excluded convolutions as the converter leaves them: folded with the batch
    norm after them, where there is one."""
    if not exclude:
        return []
    try:
        folds = dict(conv_bn_pairs(model, data.example_inputs(2)))
    except Exception:  # torch.export cannot capture the model: unfolded weights are all there is to match
        folds = {}
    weights = []
    for name, conv in model.named_modules():
        if isinstance(conv, _ConvNd) and matches_any(name, exclude):
            weight = conv.weight
            if name in folds:
                norm = model.get_submodule(folds[name])
                weight, _ = fuse_conv_bn_weights(
                    weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
                )
            weights.append(weight.detach().float().numpy())
    return weights


def excluded_operations(converted: Any, exclude: Sequence[str], weights: Sequence[np.ndarray]) -> list[str]:
    """Operations whose module path (or any enclosing module) matches a glob the recipe keeps in float,
    and convolutions whose weights are those of an excluded one."""
    names = []
    for operation in converted.get_ops() if exclude else ():
        name = operation.get_friendly_name()
        found = _MODULE_PATH.match(name)
        if found is not None:
            parts = found.group(1).split(".")
            if any(matches_any(".".join(parts[:n]), exclude) for n in range(1, len(parts) + 1)):
                names.append(name)
        elif "Convolution" in operation.get_type_name() and _has_weights(operation, weights):
            names.append(name)
    return names


def _has_weights(operation: Any, weights: Sequence[np.ndarray]) -> bool:
    source = operation.input(1).get_source_output().get_node()
    if source.get_type_name() != "Constant":
        return False
    value = source.get_data().astype(np.float32)
    return any(
        w.size == value.size and np.allclose(w.reshape(value.shape), value, rtol=1e-4, atol=1e-6) for w in weights
    )


def serialize(converted: Any, spec: OpenVinoExport) -> dict[str, bytes]:
    """The `.xml`/`.bin` pair, named so that the `.xml` finds its weights beside it."""
    import openvino

    xml_name, bin_name = spec.file_names
    with tempfile.TemporaryDirectory(prefix="modelshrink-openvino-") as scratch:
        openvino.save_model(converted, str(Path(scratch) / xml_name), compress_to_fp16=False)
        return {name: (Path(scratch) / name).read_bytes() for name in (xml_name, bin_name)}


class OpenVinoModel(nn.Module):
    """Runs an OpenVINO model on its CPU plugin, called like the PyTorch model it came from, so the
    metrics code measures it unchanged; timed in a process of its own (`isolated`), from `files`
    (the `.xml` and `.bin` written). The compiled model is kept out of the module tree."""

    def __init__(
        self, converted: Any, threads: int, precision: str, files: tuple[bytes, bytes], sparse_rate: float | None
    ):
        super().__init__()
        compiled = openvino_compiled(converted, threads, precision, sparse_rate)
        self.__dict__["compiled"] = compiled
        self.__dict__["files"] = files
        self.threads, self.precision_hint, self.sparse_rate = threads, precision, sparse_rate
        self.precision = str(compiled.get_property("INFERENCE_PRECISION_HINT")).removeprefix("<Type: '").rstrip("'>")
        self.names = [port.get_any_name() for port in compiled.inputs]

    def isolated(self) -> tuple[str, dict[str, Any]]:
        """What a timing worker opens to run this model as here (`modelshrink.runtimes`)."""
        xml, weights = self.files
        return "openvino", {
            "xml": xml,
            "weights": weights,
            "threads": self.threads,
            "precision": self.precision_hint,
            "sparse_rate": self.sparse_rate,
        }

    def feeds(self, inputs: Inputs) -> dict[str, Any]:
        return feeds(self.names, *as_args(inputs))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        results = self.compiled(feeds(self.names, args, kwargs))
        outputs = [torch.from_numpy(results[port].copy()) for port in self.compiled.outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
