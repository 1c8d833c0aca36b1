"""Library warnings we have read and chosen not to show, in one place to audit.

torch.ao prints a deprecation notice on every quantization call, torch a TypedStorage notice when it
reads quantized tensors, and Torch-Pruning one line per unwrapped parameter. None of them is about
the user's input, and repeated on every stage they bury the lines that are. Each caller says which.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# torch logs this (not a warning, so `quiet` cannot catch it) whenever torchao is imported, e.g. by transformers
# while a Hugging Face model is built: it would stand before the one line a refused input gets.
_IMPORT_NOTICES = ("is an Enum subclass and is now natively supported by torch.compile",)


def hide_import_notices() -> None:
    """Drop torch's log notices about its own libraries' imports (called once by the CLI)."""
    logging.getLogger("torch.utils._pytree").addFilter(
        lambda record: not any(notice in record.getMessage() for notice in _IMPORT_NOTICES)
    )


@contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
