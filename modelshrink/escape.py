"""One escaping layer: a function per sink, for every string that comes from a recipe, a report.json,
a checkpoint or a model (stage, recipe and metric names, state_dict keys, environment fields, paths,
labels, and notes that embed them). Escape where a string is written out, never where it is read:
report.json keeps the data as it was, every page and terminal shows it inert.

The base step, `text`, makes a string safe to show anywhere: lone surrogates (a non-UTF-8 file name
read through surrogateescape) become U+FFFD, so no encode step fails; control characters (C0, DEL,
C1, among them ESC, so ANSI CSI and OSC sequences die), line and paragraph separators and the bidi
controls that reorder what a reader sees ("Trojan Source", U+202E) are shown visibly as `\\xNN` or
`\\uNNNN` rather than dropped, so a reader sees that something odd was there. Tabs stay, and newlines
where the sink allows them. Sinks: `terminal` (rich), `html`, `markdown` (with `code` and `code_block`),
`xml`, `strict_json`. Python's standard library only (rich is imported by `terminal` alone), so any
module can use it.
"""

from __future__ import annotations

import html as _html
import json
import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.text import Text

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 but tab and newline, DEL, C1; U+2028/9 (line breaks to some terminals and JavaScript); the bidi
# controls and marks (U+061C, U+200E-F, U+202A-E, U+2066-9) that can make a name read as another
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# markup to GitHub's and Python-Markdown's dialects anywhere in a line: a backslash escape works in both
# for these (code, emphasis, links, table cells, a heading's closing #); `_` between two letters or digits
# never delimits emphasis in either, so `size_bytes` stays readable in the raw file...
_MARKDOWN_BACKSLASH = re.compile(r"([\\`*\[\]|#]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
# ...these need an entity: Python-Markdown takes no `\<` or `\~` (it would show the backslash)...
_MARKDOWN_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "~": "&#126;"}
# ...and these are markup at the start of a line only: a list item (`- x`, `+ x`, `1. x`, `1) x`; a
# marker needs a space or the end after it, so `-1` and `0.1.0` stay as they are)
_MARKDOWN_LEADING = re.compile(r"^(?:[-+]|\d{1,9}[.)])(?= |$)")
_XML_FORBIDDEN = re.compile("[\ufffe\uffff]")  # noncharacters XML 1.0 forbids; `text` handled the rest


def text(value: object, *, newlines: bool = True) -> str:
    """`value` as a string safe to show: see the module's docstring. `newlines=False` turns line breaks
    (and tabs) into spaces, for sinks where a line break ends the thing being written (a table row)."""
    s = _SURROGATE.sub("\ufffd", str(value))
    if not newlines:
        s = s.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return _UNSAFE.sub(_visible, s)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal(value: object) -> Text:
    """For rich (tables, titles, `console.print`): a `Text`, which rich never parses as markup or
    emoji codes, so `[/bold]` in a name is shown instead of crashing rich or restyling the output; one
    line, so that a name cannot forge a log line or a table row."""
    from rich.text import Text

    return Text(text(value, newlines=False))


def html(value: object) -> str:
    """For HTML text and attribute values (report.html's <title>): `<`, `>`, `&` and quotes escaped."""
    return _html.escape(text(value), quote=True)


def markdown(value: object) -> str:
    """For inline markdown and table cells (report.md, `compare --markdown`, sensitivity.md, tune.md):
    one line (a newline would end the table row), every character either dialect reads as markup
    backslash-escaped or as an entity, so a name never becomes a link, HTML, code, emphasis, a heading
    or a new table cell, yet renders as the literal characters on GitHub and in report.html. Shown
    outside code spans: inside one neither escapes nor entities work (`code` makes those). A bare
    http(s) URL is still linked by GitHub (its autolinks know only safe schemes)."""
    escaped = _MARKDOWN_BACKSLASH.sub(r"\\\1", text(value, newlines=False))
    escaped = "".join(_MARKDOWN_ENTITY.get(c, c) for c in escaped)
    return _MARKDOWN_LEADING.sub(_leading, escaped, count=1)


def _leading(match: re.Match[str]) -> str:
    """`- x` -> `\\- x`; `1. x` -> `1\\. x` (a digit cannot be escaped, the dot after it can)."""
    marker = match.group()
    return f"{marker[:-1]}\\{marker[-1]}"


def code(value: object) -> str:
    """A name as an inline code span (`features.0`): inside one nothing renders, not even an escape, so
    it needs content with no backtick (which would end it) and no `|` (which splits a table cell on
    GitHub even there); a name with either is shown as `markdown` text instead."""
    shown = text(value, newlines=False)
    return f"`{shown}`" if shown.strip() and not {"`", "|"} & set(shown) else markdown(shown)


def code_block(body: str, info: str = "") -> list[str]:
    """`body` (lines of `text`, e.g. YAML naming layers) as a fenced code block's lines, the fence longer
    than any run of backticks in it: a line of ``` inside would otherwise end the block early and let
    what follows render as markdown."""
    longest = max((len(run) for run in re.findall("`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, body, fence]


def picture(value: object) -> str:
    """For text matplotlib draws (tick labels, titles, annotations): one line, and `$` escaped, since a pair of
    them starts matplotlib's math parser, which fails (or draws something else) on a name like `$\\foo{$`."""
    return text(value, newlines=False).replace("$", r"\$")


def xml(value: object) -> str:
    """For XML text and attributes (`--junit`): without the characters XML 1.0 forbids, which make the
    whole file ill-formed; ElementTree escapes `<`, `>`, `&` and quotes itself."""
    return _XML_FORBIDDEN.sub("\ufffd", text(value))


def strict_json(value: Any, **dumps_kwargs: Any) -> str:
    """JSON every parser accepts: NaN and infinities (JSON has none; Python writes a bare `NaN`) become
    null, and lone surrogates U+FFFD (strict parsers refuse their escapes), in keys and values alike."""
    return json.dumps(_strict(value), allow_nan=False, **dumps_kwargs)


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_strict(k) if isinstance(k, str) else k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value
