"""torchvision classification models by name (never with downloaded weights: nothing can be fetched)."""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from modelshrink.errors import UserError, first_line
from modelshrink.registry import register
from modelshrink.sources import TorchvisionSource


@register(TorchvisionSource)
def build_source(source: TorchvisionSource, *, from_recipe: bool, where: object) -> nn.Module:
    return build(source.name, source.kwargs)


def build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision import models

    known = models.list_models(module=models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"model.torchvision: unknown torchvision classification model {name!r}{hint}")
    try:
        return models.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: e.g. a negative num_classes
        first = first_line(exc)
        raise UserError(f"model.torchvision: {name}({_fmt(kwargs)}) failed: {first}") from None


def _fmt(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
