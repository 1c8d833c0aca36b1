"""Exports of the compressed model for other runtimes, each validated and measured like a stage.

As with stages, a handler is registered per spec type (`modelshrink.registry.register`); it turns the
model into the file's bytes and a module that runs the file on its runtime (an nn.Module, so that the
one metrics and latency code measures it). Nothing here writes files: the file-writing run
(`recipe_run`) writes the bytes with every other output, atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec

from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.errors import UserError
from modelshrink.export.base import Exported
from modelshrink.recipe.export_specs import ExportSpec
from modelshrink.registry import EXPORTS
from modelshrink.stages.fold import conv_bn_pairs
from modelshrink.stages.selection import matches_any

__all__ = ["EXTRAS", "Exported", "check_extras", "export"]

# the modules each optional dependency group provides
EXTRAS = {"onnx": ("onnx", "onnxruntime", "onnxscript"), "openvino": ("openvino", "nncf")}


def check_extras(specs: Sequence[ExportSpec]) -> None:
    """One line naming the missing extra, before any work."""
    for spec in specs:
        if spec.extra is None:
            continue
        missing = [module for module in EXTRAS[spec.extra] if find_spec(module) is None]
        if missing:
            raise UserError(
                f"export format {spec.format} needs the [{spec.extra}] extra ({', '.join(missing)} missing): "
                f"pip install 'modelshrink[{spec.extra}]'"
            )


def export(model: nn.Module, spec: ExportSpec, data: DataBundle, exclude: list[str], threads: int) -> Exported:
    """The file for `spec` and its runtime (on `threads` threads); `exclude`: module name globs the
    recipe keeps in float."""
    from modelshrink.export import onnx, openvino, pt2  # noqa: F401  (register their exporters)

    return EXPORTS.handler_for(spec)(model, spec, data, with_folded_norms(model, exclude, data), threads)


def with_folded_norms(model: nn.Module, exclude: list[str], data: DataBundle) -> list[str]:
    """`exclude` plus the batch norm after each excluded convolution: ONNX's and OpenVINO's converters
    fold a batch norm into the convolution before it, and the folded operation carries the batch
    norm's module name, not the convolution's."""
    if not exclude:
        return []
    try:
        pairs = conv_bn_pairs(model, data.example_inputs(2))
    except Exception:  # a model torch.export cannot capture: the converters' own names are all there is
        return list(exclude)
    return [*exclude, *(norm for conv, norm in pairs if matches_any(conv, exclude))]
