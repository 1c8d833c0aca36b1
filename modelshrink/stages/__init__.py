"""Compression stages, one module per kind; importing this package registers them all."""

from modelshrink.stages import blocks, distill, finetune, prune, quantize, reshape, structured
from modelshrink.stages.base import STAGES, Stage, StageContext

__all__ = [
    "STAGES",
    "Stage",
    "StageContext",
    "blocks",
    "distill",
    "finetune",
    "prune",
    "quantize",
    "reshape",
    "structured",
]
