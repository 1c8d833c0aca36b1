"""Static int8 through torch.export and torchao's PT2E, for models torch.fx cannot trace.

torch.fx traces symbolically, so a `forward` with Python control flow on input shapes or sizes
(`if x.shape[-2:] != (224, 224): raise`, timm's TF-style padding) stops it; torch.export specializes
such code for the example shape and goes through. Strict export is tried first (it handles modules
called at two places, such as a shared `self.relu`, which non-strict export splits into a graph
torchao cannot partition: torchao issues 4478/4482), then non-strict. torchao's X86InductorQuantizer
places the observers (histogram activations, per-channel weights, its x86 defaults).

A checkpoint rebuilds by replaying the same export and prepare on the float architecture, loading
the recorded observer state (activation scales are written into the converted graph as constants,
so they must come from the same observers) and converting; the state_dict then fills the int8
weights and their scales. Measured (issue #12): cosine to fp32 0.9987-0.9998 on third-party CNNs.
In eager mode the converted graph runs quantize/dequantize around float kernels, slower than fp32;
its speed comes with torch.compile (inductor, freezing), so it runs compiled by default
(`compile: auto`, see `modelshrink.compiled`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelshrink.errors import UserError, first_line
from modelshrink.inputs import Inputs, as_args, signature, zeros
from modelshrink.lineage import Transform
from modelshrink.quiet import quiet


@dataclass(frozen=True)
class QuantizePt2e(Transform, kind="quantize_pt2e", keeps_float=False):
    """Exported (strictly or not), observed, converted; `observers` holds the calibrated observer state."""

    exclude: list[str]
    input_shape: list[int]  # of the first input (older checkpoints record no `inputs`)
    input_dtype: str  # token ids export with integer inputs
    strict: bool
    observers: dict[str, torch.Tensor]  # observers (static) or fake-quantization modules (qat)
    qat: bool = False
    inputs: dict[str, Any] | None = None  # every input's shape and dtype (`modelshrink.inputs.signature`)

    def replay(self, model: nn.Module) -> nn.Module:
        if self.inputs is not None:
            example = zeros(self.inputs, 2)
        else:
            example = torch.zeros(2, *self.input_shape, dtype=getattr(torch, self.input_dtype))
        prepared, _ = prepare(model, example, self.exclude, strict=self.strict, qat=self.qat)
        load_observers(prepared, self.observers)
        if self.qat:
            move_to_eval(prepared)
        return convert(prepared)


def export(model: nn.Module, example: Inputs, strict: bool | None = None) -> tuple[nn.Module, bool]:
    """The exported module (batch size dynamic) and whether strict export made it; `strict=None` tries
    strict first, then non-strict. Failing both is a UserError naming each reason."""
    reasons = []
    args, kwargs = as_args(example)
    batch = {0: torch.export.Dim.AUTO}
    dims: Any = {name: batch for name in kwargs} if kwargs else tuple(batch for _ in args)
    for attempt in (True, False) if strict is None else (strict,):
        try:
            with quiet():
                program = torch.export.export(model, args, kwargs, dynamic_shapes=dims, strict=attempt)
            return program.module(), attempt
        except Exception as exc:  # export reports unsupported code in many exception types
            reasons.append(f"{'strict' if attempt else 'non-strict'}: {first_line(exc)[:300]}")
    raise UserError(f"cannot export the model with torch.export ({'; '.join(reasons)})")


def prepare(
    model: nn.Module, example: Inputs, exclude: list[str], strict: bool | None = None, qat: bool = False
) -> tuple[nn.Module, bool]:
    """Export (in train mode for QAT) and insert torchao's x86 observers or fake quantization; `exclude`
    names modules kept in float."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    exported, strict_used = export(model.train(qat), example, strict)
    config = xiq.get_default_x86_inductor_quantization_config(is_qat=qat)
    quantizer = xiq.X86InductorQuantizer().set_global(config)
    for name in exclude:
        quantizer.set_module_name_qconfig(name, None)
    with torchao_errors("prepare_pt2e"), quiet():
        return (prepare_qat_pt2e if qat else prepare_pt2e)(exported, quantizer), strict_used


@contextmanager
def torchao_errors(step: str) -> Iterator[None]:
    """torchao's quantizer fails on some exported graphs (e.g. transformers' attention: an IndexError in
    X86InductorQuantizer); that is a limit of the backend on this model, said in one line, not a crash."""
    try:
        yield
    except Exception as exc:  # torchao raises whatever its pattern matching trips over
        reason = f"{step}: {type(exc).__name__}: {first_line(exc, default='')}"
        raise UserError(
            f"torchao PT2E could not quantize this model ({reason}); use mode: dynamic or weight_only"
        ) from None


def observer_state(prepared: nn.Module) -> dict[str, torch.Tensor]:
    """The observers' (or fake-quantization modules') state, keyed by the graph edge each one watches.

    The modules' own names (`activation_post_process_<N>`) are not stable: torchao numbers them in an
    order that can change from one prepare to the next (it iterates sets of nodes), so squeeze-and-
    excitation models such as RegNet and MobileNetV3 got each other's ranges. The exported graph's
    node names are stable, so an observer is known by the node it watches and the nodes that read it."""
    return {
        f"{edge}|{name}": value.detach().clone()
        for target, edge in _observed_edges(prepared).items()
        for name, value in prepared.get_submodule(target).state_dict().items()
    }


def load_observers(prepared: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for target, edge in _observed_edges(prepared).items():
        observer = prepared.get_submodule(target)
        own = OrderedDict((n.partition("|")[2], v) for n, v in state.items() if n.partition("|")[0] == edge)
        # without a version, torch.ao's observers take the state for their oldest format and reset `eps`
        own._metadata = OrderedDict(  # type: ignore[attr-defined]
            (name, {"version": getattr(module, "_version", 1)}) for name, module in observer.named_modules()
        )
        observer.load_state_dict(own, strict=True)


def _observed_edges(prepared: nn.Module) -> dict[str, str]:
    """observer module name -> 'watched node->reading nodes'."""
    edges = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and "activation_post_process" in str(node.target):
            source = getattr(node.args[0], "name", "") if node.args else ""
            edges[str(node.target)] = f"{source}->{','.join(sorted(user.name for user in node.users))}"
    return edges


def convert(prepared: nn.Module) -> nn.Module:
    """Convert, then drop the float weights the int8 graph no longer reads (they would double the file)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with torchao_errors("convert_pt2e"), quiet():
        converted = convert_pt2e(prepared)
    read = {node.target for node in converted.graph.nodes if node.op == "get_attr"}
    for name in [k for k in converted.state_dict() if k not in read]:
        owner, _, attribute = name.rpartition(".")
        delattr(converted.get_submodule(owner) if owner else converted, attribute)
    return ExportedInt8(converted)


class ExportedGraph(nn.Module):
    """Holds an exported graph, which refuses .train()/.eval() of its own (subclasses say what they do)."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph(*args, **kwargs)


class ExportedInt8(ExportedGraph):
    """The converted graph. Its mode was fixed when it was exported (eval); this wrapper lets the
    pipeline and a user's code call .train()/.eval() on it like on any module. In eager mode it runs
    float kernels between quantize and dequantize: it pays off compiled (`modelshrink.compiled`)."""

    needs_compiler = True

    def train(self, mode: bool = True) -> ExportedInt8:
        self.training = mode  # the graph computes in eval mode whatever this flag says: it is not trainable
        return self


def quantize(
    model: nn.Module, example: Inputs, exclude: list[str], observe: Callable[[nn.Module], nn.Module], *, qat: bool
) -> tuple[nn.Module, QuantizePt2e]:
    """Prepare (for QAT when `qat`), let `observe` calibrate or train the prepared model, convert.
    Returns the int8 model and the transform that rebuilds it; `example` (a batch of two) fixes the
    input's shape and dtype."""
    prepared, strict = prepare(model, example, exclude, qat=qat)
    if qat:
        prepared = observe(Trainable(prepared)).graph
        move_to_eval(prepared)
    else:
        prepared = observe(prepared)
    shape, dtype = signature(example)["args"][0] if not isinstance(example, dict) else ([], "float32")
    transform = QuantizePt2e(exclude, shape, dtype, strict, observer_state(prepared), qat, signature(example))
    return convert(prepared), transform


class Trainable(ExportedGraph):
    """A prepared QAT graph the training loop can switch: torchao moves exported graphs between train
    and eval (batch norm, fake quantization) with its own calls, which .train()/.eval() make here."""

    def train(self, mode: bool = True) -> Trainable:
        from torchao.quantization.pt2e import move_exported_model_to_train

        if mode:
            move_exported_model_to_train(self.graph)
        else:
            move_to_eval(self.graph)
        self.training = mode
        return self


def move_to_eval(graph: nn.Module) -> None:
    from torchao.quantization.pt2e import move_exported_model_to_eval

    move_exported_model_to_eval(graph)
