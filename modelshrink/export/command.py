"""`modelshrink export CHECKPOINT`: a checkpoint made earlier, exported and checked without a recipe run.

The exported model must be float (pruned, distilled, fine-tuned): int8 for ONNX Runtime comes from its
own quantizer, calibrated on the data a recipe names (`--data`), as in a recipe's `export:` section.
The file is checked against the PyTorch model on the same inputs before it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from modelshrink import distributed
from modelshrink.atomic import write_file
from modelshrink.checkpoint import model_from_payload, read_payload
from modelshrink.data import build_data
from modelshrink.data.bundle import DataBundle, make_bundle
from modelshrink.errors import UserError
from modelshrink.export import check_extras, export
from modelshrink.metrics.accuracy import evaluate_outputs
from modelshrink.recipe.export_specs import OnnxExport

CHECK_BATCHES = 8


def export_checkpoint(
    checkpoint: Path,
    *,
    format: str,
    quantize: str = "none",
    data_recipe: Path | None = None,
    output: Path | None = None,
    force: bool = False,
    trust: Sequence[str] = (),
) -> dict[str, Any]:
    """Export, check and write; returns what was written and how close it is to the PyTorch model."""
    if format != "onnx":
        raise UserError(f"--format: {format!r} is not a format this version exports (onnx)")
    if quantize not in ("none", "dynamic", "static"):
        raise UserError(f"--quantize: {quantize!r} is not one of none, dynamic, static")
    spec = OnnxExport(format=format, quantize=quantize)  # type: ignore[arg-type]
    check_extras([spec])
    target = output or checkpoint.with_name(f"{checkpoint.stem}{spec.file_name.removeprefix('model')}")
    if target.resolve() == checkpoint.resolve():
        raise UserError(f"--output: {target} is the checkpoint itself; choose another file")
    if target.exists() and not force:
        raise UserError(f"--output: {target} already exists; pass --force to replace it")
    payload = read_payload(checkpoint)
    model, lineage = model_from_payload(payload, checkpoint, trust=trust)
    done = [t.kind for t in lineage.transforms if not t.keeps_float]
    if done:
        raise UserError(
            f"{checkpoint}: the model is no longer float ({', '.join(done)}); export a checkpoint from before "
            "quantization, or list the export in the recipe's export: section"
        )
    data = _data(data_recipe, payload.get("input_shape"), quantize)
    exported = export(model, spec, data, [], distributed.DEFAULT_THREADS)
    _, expected = evaluate_outputs(model.eval(), data.val, CHECK_BATCHES, labeled=False)
    check, _ = evaluate_outputs(exported.runtime, data.val, CHECK_BATCHES, labeled=False, reference=expected)
    write_file(target, exported.blob)
    return {
        "file": str(target),
        "size_bytes": len(exported.blob),
        "max_abs_error": check["max_abs_error"],
        "cosine": check["cosine"],
        "notes": exported.notes,
    }


def _data(recipe: Path | None, input_shape: list[int] | None, quantize: str) -> DataBundle:
    """The recipe's data (calibration for static int8, and the check); else random inputs of the shape
    the checkpoint recorded, which is enough to export and check a float or dynamic int8 file."""
    if recipe is not None:
        from modelshrink.recipe.load import load_recipe

        parsed = load_recipe(recipe)
        return build_data(parsed.data, parsed.seed, parsed.model)
    if quantize == "static":
        raise UserError("--quantize static calibrates on real inputs: name a recipe whose data to use with --data")
    if not input_shape:
        raise UserError("the checkpoint records no input shape: name a recipe whose data to use with --data")
    inputs = torch.randn(32, *input_shape, generator=torch.Generator().manual_seed(0))
    dataset = TensorDataset(inputs, torch.zeros(len(inputs), dtype=torch.long))
    return make_bundle(
        dataset, dataset, batch_size=8, num_workers=0, seed=0, num_classes=1, input_shape=input_shape, labeled=False
    )
