"""Export the compressed model to each of the recipe's targets and measure every file like a stage.

What is exported is the float model the stages made before any PyTorch quantization (pruned,
distilled, fine-tuned): int8 for another runtime comes from that runtime's own quantizer, calibrated
on the recipe's calibration data. Each export is validated against that PyTorch model (its outputs
on the validation data) and judged against the original model like every stage, so its quality and
speed sit beside theirs; latency is added later, side by side with the stages' models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from modelshrink import distributed
from modelshrink.constraints import GateResult, check_constraints
from modelshrink.data.bundle import DataBundle
from modelshrink.descriptors import Metrics
from modelshrink.errors import UserError
from modelshrink.export import Exported, export
from modelshrink.metrics import Reference, measure, reference_outputs
from modelshrink.metrics.accuracy import evaluate_outputs
from modelshrink.progress import log
from modelshrink.recipe.export_specs import ExportSpec
from modelshrink.recipe.recipe import Recipe

# what an export shares with the PyTorch model it came from (its runtime module holds no parameters)
_ARCHITECTURE_METRICS = ("params", "nonzero_params", "sparsity", "macs")


@dataclass
class ExportResult:
    exported: Exported
    source: str  # the stage whose model was exported, or "baseline"
    validation: dict[str, float]  # its outputs against that PyTorch model's, on the validation data
    metrics: Metrics

    def check_constraints(self, baseline: Metrics) -> list[GateResult]:
        """The export's own gates (its spec's `constraints`), named after its file."""
        spec = self.exported.spec
        return check_constraints(spec.constraints, baseline, self.metrics, spec.file_name) if spec.constraints else []

    def to_json(self) -> dict[str, Any]:
        spec: ExportSpec = self.exported.spec
        return {
            "format": spec.format,
            "quantize": getattr(spec, "quantize", None),  # a pt2 package is quantized as the stages left it
            "file": spec.file_name,
            "files": list(self.exported.files),
            "size_bytes": self.exported.size_bytes,
            "source": self.source,
            "validation": self.validation,
            "notes": self.exported.notes,
            "metrics": self.metrics,
        }


def export_source(recipe: Recipe, spec: ExportSpec) -> int:
    """How many stages the exported model has been through: all for an export of the final model,
    else those before the first quantize stage."""
    if spec.exports_final:
        return len(recipe.stages)
    return next((i for i, stage in enumerate(recipe.stages) if stage.quantizes), len(recipe.stages))


def export_all(
    recipe: Recipe,
    models: Sequence[nn.Module],
    stage_metrics: Sequence[Metrics],
    data: DataBundle,
    reference: Reference,
) -> list[ExportResult]:
    """`models[i]` / `stage_metrics[i]`: the model and metrics after i stages (0: the original)."""
    exclude = sorted({glob for spec in recipe.stages if spec.quantizes for glob in getattr(spec, "exclude", [])})
    threads = recipe.evaluate.latency.threads or distributed.DEFAULT_THREADS
    # the original's outputs are `reference` already; a stage's model is run once for its own
    outputs: dict[int, Reference] = {0: reference}
    results = []
    for spec in recipe.export:
        index = export_source(recipe, spec)
        source, source_metrics = models[index], stage_metrics[index]
        name = "baseline" if index == 0 else recipe.stage_names()[index - 1]
        if index not in outputs:
            outputs[index] = reference_outputs(source, data, recipe.evaluate)
        own_outputs = outputs[index]
        log(f"export {spec.label} from {name}")
        exported = export(source, spec, data, exclude, threads)
        try:
            validation, _ = evaluate_outputs(
                exported.runtime, data.val, recipe.evaluate.max_val_batches, labeled=False, reference=own_outputs
            )
            metrics, _ = measure(exported.runtime, data, recipe.evaluate, exported.size_bytes, reference)
        except Exception as exc:  # the runtime refuses the file: a limit of that runtime on this model
            raise UserError(f"export {spec.label}: the exported file does not run ({exc})") from None
        metrics.update({key: source_metrics[key] for key in _ARCHITECTURE_METRICS})  # type: ignore[literal-required]
        checked = {"max_abs_error": validation["max_abs_error"], "cosine": validation["cosine"]}
        results.append(ExportResult(exported, name, checked, metrics))
    return results
