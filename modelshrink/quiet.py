"""Library warnings: the ones we have read and chosen not to show, and the rest, counted and summarized.

torch.ao prints a deprecation notice on every quantization call, torch a TypedStorage notice when it
reads quantized tensors, and Torch-Pruning one line per unwrapped parameter: `quiet()` drops those
where they are raised, each caller says which. Everything else a library warns or logs during a run
(one static-int8 run with exports printed 365 lines of them around 10 lines of progress) is caught by
`collected()` and comes out as one finding per distinct warning, with its count; `--verbose` shows
them as they come as well.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from modelshrink import escape

# torch logs this (not a warning, so `quiet` cannot catch it) whenever torchao is imported, e.g. by transformers
# while a Hugging Face model is built: it would stand before the one line a refused input gets.
_IMPORT_NOTICES = ("is an Enum subclass and is now natively supported by torch.compile",)
MAX_MESSAGE = 200  # characters of a warning kept in its finding


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


@dataclass
class Notices:
    """Library warnings seen in a block: (where from, first line of the message) -> how many times."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, source: str, message: str) -> None:
        line = next(iter(message.strip().splitlines()), "")
        self.counts[source, line[:MAX_MESSAGE]] += 1

    def findings(self) -> list[str]:
        """One line per distinct warning, most frequent first."""
        return [
            f"{source} warned {count} time{'s' * (count > 1)} (--verbose shows them): {message}"
            for (source, message), count in self.counts.most_common()
        ]

    def take(self) -> list[str]:
        """The findings, and forget them (they have been reported)."""
        found = self.findings()
        self.counts.clear()
        return found


class _Counting(logging.Handler):
    """Counts a library's records instead of letting them through (`passing`: the handlers that still
    get them, with --verbose); our own records go to the handlers there were."""

    def __init__(self, notices: Notices, original: list[logging.Handler], show: bool):
        super().__init__(logging.NOTSET)
        self.thread = threading.get_ident()  # another thread's records (an API caller's server) pass untouched
        # an enclosing collector's handler stands for the handlers it replaced: a record is counted once
        self.original = [
            h for handler in original for h in (handler.original if isinstance(handler, _Counting) else [handler])
        ]
        self.notices = notices
        # without a handler on the root, Python's last resort prints library warnings to stderr
        self.passing = (self.original or [logging.lastResort]) if show else []

    def emit(self, record: logging.LogRecord) -> None:
        ours = record.name.split(".")[0] == "modelshrink" or record.thread != self.thread
        if not ours:  # a library's message may hold a model's or a file's strings: shown inert
            record.msg, record.args = escape.text(record.getMessage()), None
        if not ours and record.levelno >= logging.WARNING:
            self.notices.add(f"{record.name.split('.')[0]} ({record.levelname.lower()})", record.getMessage())
        for handler in self.original if ours else self.passing:
            if handler is not None and record.levelno >= handler.level:
                handler.handle(record)


_SHOWING: list[bool] = []  # the enclosing collectors' `show`, innermost last


@contextmanager
def collected(show: bool | None = None) -> Iterator[Notices]:
    """Count every warning (`warnings.warn`) and every library log record at WARNING and above raised in
    the block by this thread, instead of printing them; `show`: print them too, as Python would have
    (None: as the enclosing collector does, e.g. `tune --verbose` around its best/ run). Loggers with
    handlers of their own are counted the same way for the block's duration (NNCF's is made to
    propagate where it quantizes: `export.openvino`)."""
    show = show if show is not None else bool(_SHOWING and _SHOWING[-1])
    notices = Notices()

    def record(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None):
        notices.add(category.__name__, str(message))
        if show:  # as Python shows it (not through an enclosing collector, which would count it again), inert
            (file or sys.stderr).write(escape.text(warnings.formatwarning(message, category, filename, lineno, line)))

    root = logging.getLogger()
    loggers = [root, *(logger for logger in logging.Logger.manager.loggerDict.values()
                       if isinstance(logger, logging.Logger) and logger.handlers and not logger.propagate)]  # fmt: skip
    saved = {logger: logger.handlers[:] for logger in loggers}
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        _SHOWING.append(show)
        try:
            for logger in loggers:
                logger.handlers = [_Counting(notices, saved[logger], show)]
            yield notices
        finally:
            _SHOWING.pop()
            for logger, handlers in saved.items():
                logger.handlers = handlers
