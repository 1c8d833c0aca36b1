"""`modelshrink export CHECKPOINT`: a checkpoint made earlier, exported and checked without a recipe run.

For ONNX and OpenVINO the exported model must be float (pruned, distilled, fine-tuned): int8 for those
runtimes comes from their own quantizers, calibrated on the data a recipe names (`--data`), as in a
recipe's `export:` section; a `.pt2` package takes the model as it is, quantized or not. The file is
checked against the PyTorch model on the same inputs before it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError
from torch.utils.data import TensorDataset

from modelshrink import distributed, outputs
from modelshrink.checkpoint import model_from_payload, read_payload
from modelshrink.data import build_data
from modelshrink.data.bundle import DataBundle, make_bundle
from modelshrink.errors import UserError
from modelshrink.export import check_extras, export
from modelshrink.metrics.accuracy import evaluate_outputs
from modelshrink.recipe.export_specs import ExportSpec
from modelshrink.recipe.recipe import Recipe

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
    spec = _spec(format, quantize)
    check_extras([spec])
    target = output or checkpoint.with_name(f"{checkpoint.stem}{spec.file_name.removeprefix('model')}")
    suffix = Path(spec.file_name).suffix
    if target.suffix != suffix:  # an OpenVINO .bin named as the output would be written over by its own .xml
        raise UserError(f"--output: {target} must end in {suffix} (a {format} export"
                        f"{' writes its weights to the .bin beside it' if format == 'openvino' else ''})")  # fmt: skip
    # files beside the first share its stem (an OpenVINO .xml finds its weights in the .bin of its stem)
    targets = [target, *(target.with_suffix(Path(name).suffix) for name in spec.file_names[1:])]
    recipe = _load(data_recipe)  # read once: its inputs are protected, its data calibrates and checks
    inputs = [("checkpoint", checkpoint), *(recipe.inputs(data_recipe) if recipe else [])]
    with outputs.claim([outputs.export_file(path) for path in targets], inputs, force=force) as claim:
        return _export(claim, checkpoint, spec, quantize, recipe, targets, trust)


def _export(
    claim: outputs.Claim,
    checkpoint: Path,
    spec: ExportSpec,
    quantize: str,
    recipe: Recipe | None,
    targets: list[Path],
    trust: Sequence[str],
) -> dict[str, Any]:
    payload = read_payload(checkpoint)
    model, lineage = model_from_payload(payload, checkpoint, trust=trust)
    done = [t.kind for t in lineage.transforms if not t.keeps_float]
    if done and not spec.exports_final:
        raise UserError(
            f"{checkpoint}: the model is no longer float ({', '.join(done)}); export a checkpoint from before "
            "quantization, or list the export in the recipe's export: section"
        )
    calibrates = hasattr(spec, "calibration_batches") and quantize != "none"
    data = _data(recipe, payload.get("input_shape"), calibrates)
    exported = export(model, spec, data, [], distributed.DEFAULT_THREADS)
    _, expected = evaluate_outputs(model.eval(), data.val, CHECK_BATCHES, labeled=False)
    check, _ = evaluate_outputs(exported.runtime, data.val, CHECK_BATCHES, labeled=False, reference=expected)
    claim.write(files=dict(zip(targets, exported.files.values(), strict=True)))
    return {
        "file": str(targets[0]),
        "size_bytes": exported.size_bytes,
        "max_abs_error": check["max_abs_error"],
        "cosine": check["cosine"],
        "notes": exported.notes,
    }


def _load(recipe: Path | None) -> Recipe | None:
    """The --data recipe, if one is named."""
    if recipe is None:
        return None
    from modelshrink.recipe.parse import load_recipe

    return load_recipe(recipe)


def _spec(format: str, quantize: str) -> ExportSpec:
    """The export spec the options name, validated as a recipe's `export:` entry is."""
    fields = {"format": format} if quantize == "none" else {"format": format, "quantize": quantize}
    try:
        return TypeAdapter(ExportSpec).validate_python(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "--quantize" if error["loc"] and error["loc"][-1] == "quantize" else "--format"
        raise UserError(f"{where}: {error['msg']} (format {format!r}, quantize {quantize!r})") from None


def _data(recipe: Recipe | None, input_shape: list[int] | None, calibrates: bool) -> DataBundle:
    """The recipe's data (calibration for static int8, and the check); else random inputs of the shape
    the checkpoint recorded, which is enough to export and check a file nothing calibrates."""
    if recipe is not None:
        return build_data(recipe.data, recipe.seed, recipe.model)
    if calibrates:
        raise UserError("--quantize: calibration needs real inputs: name a recipe whose data to use with --data")
    if not input_shape:
        raise UserError("the checkpoint records no input shape: name a recipe whose data to use with --data")
    inputs = torch.randn(32, *input_shape, generator=torch.Generator().manual_seed(0))
    dataset = TensorDataset(inputs, torch.zeros(len(inputs), dtype=torch.long))
    return make_bundle(
        dataset, dataset, batch_size=8, num_workers=0, seed=0, num_classes=1, input_shape=input_shape, labeled=False
    )
