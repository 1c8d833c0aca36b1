"""Per-layer sensitivity: how much the model's outputs move when one layer alone is compressed.

Each probe is a real stage (`apply_stage` on a copy of the model): channel pruning at a few ratios
with `include` naming the layer and the layers Torch-Pruning must prune with it (its dependency group:
a depthwise convolution's channels are those of the convolution before it, so naming the depthwise one
alone pruned nothing and every probe of a MobileNet was skipped), unstructured pruning of that layer
alone, int8 (and for Linear layers int4) weight-only quantization, and static int8 (weights and the
layer's input activations) with every other layer excluded: what explains a static-int8 drop. So
what is measured is what the recipe's stages would do, and a layer a method cannot touch says why.

The time budget covers the whole model coarsely first (the middle ratio and the quantization probes of
every layer), then refines (the other ratios) while time is left; what was not measured or not refined
is listed, never cut silently.

The drop is measured on calibration batches (never the validation split that reports quality and
gates runs) against the original model's outputs, without labels: top-1 agreement for classifiers,
mean cosine otherwise; drop = 1 - that.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.errors import UserError, first_line
from modelshrink.inputs import Inputs, call
from modelshrink.lineage import Lineage
from modelshrink.metrics.drop import OutputDrop, is_classifier
from modelshrink.quiet import quiet
from modelshrink.recipe.recipe import Recipe
from modelshrink.stages import StageContext, apply_stage
from modelshrink.stages.prune.channel import PRUNABLE

RATIOS = (0.25, 0.5, 0.75)
STATIC_BATCHES = 2  # calibration batches of the static int8 probe


@dataclass(frozen=True)
class Probe:
    """One way of compressing one layer: a label for tables and the stage that does it (or, where no
    stage can touch one layer alone, the function that does)."""

    label: str
    stage: dict[str, Any] | None = None
    run: Callable[[nn.Module, StageContext], nn.Module] | None = None


def static_int8_of(name: str) -> Callable[[nn.Module, StageContext], nn.Module]:
    """Static int8 of one layer's weights and input activations, nothing else: a static stage's `exclude`
    still quantizes the model's functional ops (residual adds, a head's sigmoid), which showed the same
    drop for every layer of a MobileNet. torch.ao FX, as the static stage's fx backend."""

    def run(model: nn.Module, ctx: StageContext) -> nn.Module:
        from modelshrink.stages.quantize.fx import QuantizeFx, convert, prepare

        prepared = prepare(model, QuantizeFx("static", "histogram", True, [], list(ctx.data.input_shape), only=[name]))
        with torch.no_grad():
            for inputs in ctx.calibration_inputs(STATIC_BATCHES):
                call(prepared, inputs)
        return convert(prepared)

    return run


@dataclass
class LayerSensitivity:
    name: str
    type: str
    params: int
    drops: dict[str, float] = field(default_factory=dict)  # probe label -> drop
    skipped: dict[str, str] = field(default_factory=dict)  # probe label -> why it could not run


def coarse_ratio(ratios: Sequence[float]) -> float:
    """The ratio every layer gets in the first pass: the middle one."""
    return sorted(ratios)[len(ratios) // 2]


def probes(name: str, ratios: Sequence[float], coupled: Sequence[str] = ()) -> list[Probe]:
    """The pruning tried on layer `name` at `ratios`; `coupled`: the layers Torch-Pruning prunes together
    with it (`pruning_groups`)."""
    group = [name, *coupled]
    found = [Probe(f"channel {r:g}", {"kind": "prune", "method": "channel", "amount": r, "include": group})
             for r in ratios]  # fmt: skip
    found += [
        Probe(f"unstructured {r:g}", {"kind": "prune", "amount": r, "scope": "layer", "include": [name]})
        for r in ratios
    ]
    return found


def quantization_probes(name: str, layer: nn.Module, others: list[str]) -> list[Probe]:
    """The quantization tried on layer `name`; `others`: every other layer's name (excluded)."""
    found = [
        Probe("int8", {"kind": "quantize", "mode": "weight_only", "bits": 8, "exclude": others}),
        Probe("static int8", run=static_int8_of(name)),
    ]
    if isinstance(layer, nn.Linear):
        found.append(Probe("int4", {"kind": "quantize", "mode": "weight_only", "bits": 4, "exclude": others}))
    return found


def pruning_groups(model: nn.Module, example: Any) -> dict[str, list[str]]:
    """For each layer, the other prunable layers whose channels Torch-Pruning removes with its output
    channels (a depthwise convolution and the convolution feeding it); empty where the graph cannot be
    traced (each layer is then probed alone)."""
    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules() if isinstance(module, PRUNABLE)}
    try:
        with quiet():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception:  # Torch-Pruning traces the model; where it cannot, the channel probes say why
        return {}
    groups: dict[str, list[str]] = {}
    for module, name in names.items():
        prune = (
            tp.prune_conv_out_channels if isinstance(module, nn.modules.conv._ConvNd) else tp.prune_linear_out_channels
        )
        try:
            group = graph.get_pruning_group(module, prune, idxs=[0])
        except Exception:  # a layer outside the traced graph
            continue
        # the layers whose *output* channels go with it (a depthwise convolution's); not the layers after it,
        # whose input channels follow: naming those would prune their outputs too
        coupled = {
            names[dep.target.module]
            for dep, _ in group
            if dep.target.module in names and graph.is_out_channel_pruning_fn(dep.handler)
        }
        groups[name] = sorted(coupled - {name})
    return groups


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE)]


def sensitivities(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    *,
    probe_batches: list[Inputs],
    ratios: Sequence[float],
    budget_s: float,
) -> Iterator[tuple[LayerSensitivity, str, float]]:
    """Each layer's sensitivity as it is measured, with the pass (`coarse`, then `refined`) and the seconds
    spent so far. The coarse pass probes every layer at the middle ratio and with each quantization; the
    refining pass adds the other ratios. A new layer starts only while `budget_s` is not spent (the first
    layer is always measured); the same row object comes back refined."""
    drop = OutputDrop(model, probe_batches, is_classifier(model, probe_batches[0], recipe.evaluate.task, data))
    named = layers(model)
    groups = pruning_groups(model, data.example_inputs(2))
    start = time.perf_counter()
    rows: dict[str, LayerSensitivity] = {}
    middle = coarse_ratio(ratios)
    passes = (("coarse", [middle]), ("refined", [r for r in ratios if r != middle]))
    for label, pass_ratios in passes:
        if label == "refined" and not pass_ratios:
            return
        for index, (name, layer) in enumerate(named):
            if (index or label != "coarse") and time.perf_counter() - start > budget_s:
                return
            others = [other for other, _ in named if other != name]
            row = rows.setdefault(
                name, LayerSensitivity(name, type(layer).__name__, sum(p.numel() for p in layer.parameters()))
            )
            found = probes(name, pass_ratios, groups.get(name, ()))
            if label == "coarse":
                found += quantization_probes(name, layer, others)
            for probe in found:
                _measure(model, probe, row, data, recipe, drop)
            yield row, label, time.perf_counter() - start


def _measure(
    model: nn.Module, probe: Probe, row: LayerSensitivity, data: DataBundle, recipe: Recipe, drop: OutputDrop
) -> None:
    ctx = StageContext(data=data, original_model=model, lineage=Lineage({}), evaluate=recipe.evaluate, seed=recipe.seed)
    try:
        with quiet():
            if probe.run is not None:
                changed = probe.run(copy.deepcopy(model), ctx)
            else:
                changed = apply_stage(copy.deepcopy(model), probe.stage, ctx, probe.label)
        row.drops[probe.label] = drop(changed)
    except UserError as exc:  # the method cannot touch this layer (a classifier, nothing to quantize)
        row.skipped[probe.label] = first_line(exc)
