"""The two ways a run ends badly, each with its own exit code (only the CLI maps them)."""

from __future__ import annotations

from typing import Any


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for one-line errors (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (type(exc).__name__ if default is None else default)


class UserError(Exception):
    """Bad input from the user (recipe, checkpoint, data, arguments): exit code 2, nothing written. Several
    problems found at once (a recipe's) are several messages, one line each where they are shown; a line
    break inside one comes from a name in the input and is shown escaped, never as a line of its own."""

    exit_code = 2

    def __init__(self, *problems: str):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class ConstraintFailed(Exception):
    """The run finished and wrote its reports, but a recipe constraint was violated: exit code 1."""

    exit_code = 1

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report
