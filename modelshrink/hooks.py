"""Forward hooks that are always removed: registered for one block of work, gone when it ends,
whether it finished or raised (a hook left behind would keep running inside the user's model)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

Hook = Callable[..., Any]


@contextmanager
def forward_hooks(pairs: Iterable[tuple[nn.Module, Hook]], *, pre: bool = False) -> Iterator[None]:
    """Each (module, hook) registered as a forward hook (`pre`: a forward pre-hook) inside the block."""
    handles = [module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
               for module, hook in pairs]  # fmt: skip
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
