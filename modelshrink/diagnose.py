"""Name the layer where a model's forward pass breaks (run only after something already failed)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def failing_layer(model: nn.Module, inputs: torch.Tensor) -> str | None:
    """The innermost module whose forward started but did not finish, or None if the model runs."""
    started: list[str] = []

    def enter(name: str) -> Callable[..., None]:
        return lambda *_: started.append(name)

    def leave(name: str) -> Callable[..., None]:
        return lambda *_: started.remove(name) if name in started else None

    hooks = []
    for name, module in model.named_modules():
        hooks += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave(name))]
    try:
        with torch.inference_mode():
            model.eval()(inputs)
    except Exception:
        return started[-1] if started and started[-1] else "(the model's own forward)"
    finally:
        for hook in hooks:
            hook.remove()
    return None
