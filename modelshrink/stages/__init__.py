"""Compression stages, one module per method or mode; importing this package registers them all."""

from modelshrink.stages import distill, finetune, optimize, prune, quantize
from modelshrink.stages.base import Stage, StageContext, apply_stage, handler_for, make_stage

__all__ = [
    "Stage",
    "StageContext",
    "apply_stage",
    "distill",
    "finetune",
    "handler_for",
    "make_stage",
    "optimize",
    "prune",
    "quantize",
]
