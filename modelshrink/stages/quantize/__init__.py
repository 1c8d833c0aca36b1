"""Quantization, one backend module per mode (see docs/quantization.md); each registers its stage for
its spec type (`recipe.stage_specs`) and a rebuilder, so a quantized checkpoint reloads by replaying
the same conversion on the float architecture and then loading the saved int8 / half tensors.
"""

from modelshrink.stages.quantize import auto, dynamic, fx, half, pt2e, weight_only

__all__ = ["auto", "dynamic", "fx", "half", "pt2e", "weight_only"]
