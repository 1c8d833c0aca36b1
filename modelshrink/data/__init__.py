"""Data sources, one module each, registered by spec type (`modelshrink.registry`); `build_data` picks
by the recipe's `data.kind`."""

from __future__ import annotations

from modelshrink.data import cifar10, custom, digits, imagefolder, synthetic, text
from modelshrink.data.bundle import DataBundle, with_evaluation_data, with_tuning_split
from modelshrink.recipe.schema import DataSpec, ModelSpec
from modelshrink.registry import DATA


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
    bundle = DATA.handler_for(spec)(spec, seed, model)
    return with_tuning_split(bundle, spec.tune_fraction, seed) if tuning_split else bundle


__all__ = ["DataBundle", "build_data", "cifar10", "custom", "digits", "imagefolder", "synthetic", "text"]
