"""Name the layer where a model's forward pass breaks (run only after something already failed)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from modelshrink.hooks import forward_hooks
from modelshrink.inputs import Inputs, call


def failing_layer(model: nn.Module, inputs: Inputs) -> str | None:
    """The innermost module whose forward started but did not finish, or None if the model runs."""
    started: list[str] = []

    def enter(name: str) -> Callable[..., None]:
        return lambda *_: started.append(name)

    def leave(name: str) -> Callable[..., None]:
        return lambda *_: started.remove(name) if name in started else None

    modules = list(model.named_modules())
    entering = forward_hooks(((m, enter(n)) for n, m in modules), pre=True)
    try:
        with entering, forward_hooks((m, leave(n)) for n, m in modules), torch.inference_mode():
            call(model.eval(), inputs)
    except Exception:
        return started[-1] if started and started[-1] else "(the model's own forward)"
    return None
