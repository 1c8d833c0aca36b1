"""Compression stages, one module per kind; importing this package registers them all."""

from modelshrink.stages import finetune, prune, quantize
from modelshrink.stages.base import STAGES, Stage, StageContext

__all__ = ["STAGES", "Stage", "StageContext", "finetune", "prune", "quantize"]
