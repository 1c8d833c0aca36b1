"""A `.pt2` package: the final model through torch.export and AOTInductor, run without a compiler.

`torch.compile` (the `Compiled` deployed form) needs a C++ compiler on the serving machine and
compiles on the first call; AOTInductor compiles once here and packages the shared library with the
weights, which `torch._inductor.aoti_load_package` loads in any process with the same torch. Inductor's
freezing is on, as for `Compiled`, so PT2E int8 lowers to the same fused int8 kernels.

The batch dimension stays dynamic. A model whose code fixes it is refused in one line: its package
would serve one batch size, and an AOTInductor package does not check the shapes it is given (fed
another batch size, it returned outputs of the size it was built for).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from modelshrink.compiled import Compiled
from modelshrink.data.bundle import DataBundle
from modelshrink.errors import UserError, first_line
from modelshrink.export.base import Exported
from modelshrink.inputs import Inputs, as_args, output_matrix, output_widths
from modelshrink.metrics.similarity import worst_output_cosine
from modelshrink.quiet import quiet
from modelshrink.recipe.export_specs import Pt2Export
from modelshrink.registry import register
from modelshrink.stages.quantize.pt2e import ExportedGraph

# a package whose outputs are further than this from the model's (mean cosine over a batch) is wrong,
# not rounded: int8 compiled with or without freezing stays above 0.9999 of the eager graph
SAME_OUTPUTS = 0.999


@register(Pt2Export)
def export_pt2(model: nn.Module, spec: Pt2Export, data: DataBundle, exclude: list[str], threads: int) -> Exported:
    with tempfile.TemporaryDirectory(prefix="modelshrink-pt2-") as scratch:
        path = str(Path(scratch) / spec.file_name)
        runtime, notes = package_model(model, data.example_inputs(2), path)
        blob = Path(path).read_bytes()
    return Exported(spec, {spec.file_name: blob}, runtime, notes)


def packaged(model: nn.Module, example: Inputs) -> bytes:
    """The package's bytes alone (a compiled checkpoint's reusable artifact, `compiled_artifact`)."""
    with tempfile.TemporaryDirectory(prefix="modelshrink-pt2-") as scratch:
        path = str(Path(scratch) / "model.pt2")
        package_model(model, example, path)
        return Path(path).read_bytes()


def package_model(model: nn.Module, example: Inputs, path: str) -> tuple[Pt2Model, list[str]]:
    """Package `model` (unwrapped from `Compiled`) at `path`, checked against the model's own outputs."""
    inner = (model.inner if isinstance(model, Compiled) else model).eval()
    inner = inner.graph if isinstance(inner, ExportedGraph) else inner  # its forward takes *args
    args, kwargs = as_args(example)
    notes = []
    with torch.no_grad(), aoti_errors():
        program = export_program(inner, args, kwargs)
        expected = inner(*args, **kwargs)
        runtime = package(program, path, freezing=True)
        agreement = cosine(runtime(*args, **kwargs), expected)
        if agreement < SAME_OUTPUTS:
            # seen on a channel-pruned int8 CNN: AOTInductor's freezing passes changed its outputs while
            # torch.compile's did not; the package without them is right but slower
            runtime = package(program, path, freezing=False)
            notes.append(f"packaged without inductor's freezing: with it, outputs had cosine {agreement:.3f}")
    return runtime, notes


@contextlib.contextmanager
def aoti_errors() -> Iterator[None]:
    """torch.export and AOTInductor refuse some code; that is a limit on this model, in one line."""
    try:
        with quiet():
            yield
    except UserError:
        raise
    except Exception as exc:  # they raise many types for unsupported code
        reason = first_line(exc)[:300]
        raise UserError(f"cannot package the model with torch.export and AOTInductor ({reason})") from None


def export_program(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.export.ExportedProgram:
    auto = {0: torch.export.Dim.AUTO}
    dims: Any = {name: auto for name in kwargs} if kwargs else tuple(auto for _ in args)
    program = torch.export.export(model, args, kwargs, dynamic_shapes=dims)
    if fixed_batch(program) is not None:
        raise UserError("cannot package the model as .pt2: its code fixes the batch size, so it would serve one only")
    return program


def package(program: torch.export.ExportedProgram, path: str, freezing: bool) -> Pt2Model:
    torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs={"freezing": freezing})
    return Pt2Model(path)


def cosine(outputs: Any, expected: Any) -> float:
    """Mean cosine of the samples, the worst output's for a model with several."""
    pair = [(output_matrix(outputs), output_matrix(expected))]
    return worst_output_cosine(pair, output_widths(expected))


def fixed_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size the exported graph was specialized to, or None where it stayed dynamic."""
    for spec in program.graph_signature.input_specs:
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            node = next(n for n in program.graph.nodes if n.name == spec.arg.name)
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dim():
                size = value.shape[0]
                return int(size) if is_concrete_int(size) else None
    return None


class Pt2Model(nn.Module):
    """Runs a `.pt2` package, called like the PyTorch model it came from (the loaded package is kept
    out of the module tree). Loaded from the file, as a serving process would."""

    def __init__(self, path: str):
        super().__init__()
        self.__dict__["package"] = torch._inductor.aoti_load_package(path)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.package(*args, **kwargs)
