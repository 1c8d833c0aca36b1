"""Data sources, one module each; `build_data` picks by the recipe's `data.kind`."""

from __future__ import annotations

from modelshrink.data import cifar10, custom, digits, imagefolder, synthetic
from modelshrink.data.bundle import DataBundle, with_evaluation_data, with_tuning_split
from modelshrink.errors import UserError
from modelshrink.recipe.schema import DataSpec, ModelSpec, TextData

_BUILDERS = {
    "digits": digits.build,
    "imagefolder": imagefolder.build,
    "cifar10": cifar10.build,
    "synthetic": synthetic.build,
    "python": custom.build_python,
    "tensors": custom.build_tensors,
}


def build_data(
    spec: DataSpec,
    seed: int,
    model: ModelSpec | None = None,
    *,
    tuning_split: bool = False,
    evaluation: DataSpec | None = None,
) -> DataBundle:
    """`model` names the tokenizer for text data that does not name its own; `tuning_split` holds
    `spec.tune_fraction` of the training data out for choosing training epochs; `evaluation`
    (`evaluate.data`) replaces the validation split with a separate held-out set."""
    bundle = _build(spec, seed, model, tuning_split)
    if evaluation is None:
        return bundle
    return with_evaluation_data(bundle, _build(evaluation, seed, model, tuning_split=False))


def _build(spec: DataSpec, seed: int, model: ModelSpec | None, tuning_split: bool) -> DataBundle:
    if isinstance(spec, TextData):  # imported here: the Hugging Face extra is optional
        from modelshrink.data import text

        tokenizer = spec.tokenizer or (model.huggingface.source if model and model.huggingface else None)
        if tokenizer is None:
            raise UserError("data.tokenizer: text data needs a tokenizer (or a model.huggingface source)")
        bundle = text.build(spec, seed, tokenizer)
    else:
        bundle = _BUILDERS[spec.kind](spec, seed)
    return with_tuning_split(bundle, spec.tune_fraction, seed) if tuning_split else bundle


__all__ = ["DataBundle", "build_data"]
