"""Pruning, one module per method (see docs/recipes.md): unstructured zeros (unstructured.py, at once or
gradually with gradual.py), N:M semi-structured zeros (nm.py), whole channels removed with Torch-Pruning's
dependency graph (channel.py), whole residual blocks (block.py); reshape.py records the pruned shapes so a
checkpoint rebuilds. Each registers its stage for its spec type."""

from modelshrink.stages.prune import block, channel, gradual, nm, reshape, unstructured

__all__ = ["block", "channel", "gradual", "nm", "reshape", "unstructured"]
