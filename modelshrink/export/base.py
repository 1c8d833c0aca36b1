"""What an exporter returns, and its signature; exporters register by spec type (`modelshrink.registry`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.recipe.export_specs import ExportSpec


@dataclass
class Exported:
    spec: ExportSpec
    files: dict[str, bytes]  # file name -> contents; the first is the one a runtime loads
    runtime: nn.Module  # runs the exported file on its runtime, called like the PyTorch model
    notes: list[str] = field(default_factory=list)  # what the exporter did beyond the plain conversion

    @property
    def size_bytes(self) -> int:
        return sum(len(content) for content in self.files.values())


Exporter = Callable[[nn.Module, ExportSpec, DataBundle, list[str], int], Exported]  # `registry.EXPORTS` holds them
