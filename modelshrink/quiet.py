"""Library warnings we have read and chosen not to show, in one place to audit.

torch.ao prints a deprecation notice on every quantization call, torch a TypedStorage notice when it
reads quantized tensors, and Torch-Pruning one line per unwrapped parameter. None of them is about
the user's input, and repeated on every stage they bury the lines that are. Each caller says which.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
