"""Data sources, one module each; `build_data` picks by the recipe's `data.kind`."""

from __future__ import annotations

from modelshrink.data import cifar10, digits, imagefolder, synthetic
from modelshrink.data.bundle import DataBundle
from modelshrink.recipe.schema import DataSpec

_BUILDERS = {
    "digits": digits.build,
    "imagefolder": imagefolder.build,
    "cifar10": cifar10.build,
    "synthetic": synthetic.build,
}


def build_data(spec: DataSpec, seed: int) -> DataBundle:
    return _BUILDERS[spec.kind](spec, seed)


__all__ = ["DataBundle", "build_data"]
