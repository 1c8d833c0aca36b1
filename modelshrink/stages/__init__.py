"""Compression stages, one module per method or mode; importing this package registers them all."""

from modelshrink.stages import blocks, distill, finetune, optimize, prune, quantize, reshape, structured
from modelshrink.stages.base import Stage, StageContext, apply_stage, handler_for, make_stage

__all__ = [
    "Stage",
    "StageContext",
    "apply_stage",
    "blocks",
    "distill",
    "finetune",
    "handler_for",
    "make_stage",
    "optimize",
    "prune",
    "quantize",
    "reshape",
    "structured",
]
