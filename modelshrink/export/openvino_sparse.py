"""OpenVINO's sparse weight decompression for an int8 export: whether to turn it on, measured.

OpenVINO's CPU plugin can pack the zeros out of int8 MatMul (Linear) weights when it compiles a model
(the `CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE` property: layers with at least that share of zeros); its
kernels run on AMX tiles, so without AMX it is off. Whether it pays depends on the sparsity and the
shapes, so `auto` compiles the export both ways and times them side by side at batch 1 on the recipe's
data (`choose.measure`, as every timed choice is measured), keeping sparse only when it is clearly
faster. The IR has no sparse format: the packing happens at compile time, so the deploying application
sets the same property (the note names it).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.environment import has_cpu_feature
from modelshrink.recipe.export_specs import OpenVinoExport
from modelshrink.stages.prune.gradual import zero_fraction
from modelshrink.stages.quantize import choose

DEFAULT_RATE = 0.5  # `true` and `auto`: Linear weights at least half zeros are packed
AMX = "amx_int8"
PROPERTY = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"
DENSE = "dense"
CLEAR_WIN = 0.95  # sparse is kept only when it takes at most 95% of the dense time
# The CPU plugin packs a FullyConnected weight only when both its sizes are multiples of this (its
# `useSparseWeightsDecompression`); other layers stay dense whatever their zeros
PACKED_MULTIPLE = 64


def packable(module: nn.Module) -> bool:
    multiple = PACKED_MULTIPLE
    return isinstance(module, nn.Linear) and module.in_features % multiple == module.out_features % multiple == 0


def sparse_rate(
    model: nn.Module, spec: OpenVinoExport, data: DataBundle, compiled: Callable[[float | None], nn.Module]
) -> tuple[float | None, list[str]]:
    """The rate to compile the export with (None: dense) and what the report should say about it;
    `compiled(rate)` compiles the export with that rate."""
    wanted = spec.sparse_decompression
    if spec.quantize != "int8" or wanted is False:
        return None, []
    amx = has_cpu_feature(AMX)
    if wanted != "auto":
        rate = DEFAULT_RATE if wanted is True else float(wanted)
        where = (f"{PROPERTY}={rate:g}" if amx else
                 f"this CPU lacks AMX ({AMX}), so OpenVINO's CPU plugin runs the weights dense here")  # fmt: skip
        return rate, [f"sparse weight decompression on for Linear weights at least {rate:.0%} zeros ({where})"]
    if not amx:
        return None, [f"sparse weight decompression off: this CPU lacks AMX ({AMX}), which OpenVINO's sparse "
                      "int8 kernels need"]  # fmt: skip
    sparsest = max((zero_fraction([m]) for m in model.modules() if packable(m)), default=0.0)
    if sparsest < DEFAULT_RATE:
        return None, [f"sparse weight decompression off: no Linear weight OpenVINO can pack (both sizes multiples "
                      f"of {PACKED_MULTIPLE}) is {DEFAULT_RATE:.0%} zeros (the sparsest: {sparsest:.1%})"]  # fmt: skip
    sparse = f"sparse (rate {DEFAULT_RATE:g})"
    candidates = {DENSE: compiled(None), sparse: compiled(DEFAULT_RATE)}
    trials = choose.measure(model, candidates, list(data.calibration_inputs(2)), [data.example_inputs(1)])
    dense_trial, sparse_trial = trials
    # OpenVINO leaves layers it cannot pack dense, and then both compile alike: sparse must win clearly,
    # not by timing noise, before the report tells anyone to deploy with it
    chosen = sparse_trial if sparse_trial.slowness <= CLEAR_WIN * dense_trial.slowness else dense_trial
    findings = [choose.finding("OpenVINO sparse weight decompression (AMX)", trials, chosen)]
    if chosen is dense_trial:
        return None, findings
    return DEFAULT_RATE, [*findings, f"deploy the IR with the CPU property {PROPERTY}={DEFAULT_RATE:g}"]
