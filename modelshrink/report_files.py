"""Everything a run writes beside its checkpoint: report.json, report.md, its pictures, and on request
a self-contained report.html (the same page with the pictures inlined), for one atomic write."""

from __future__ import annotations

import base64
from typing import Any

from modelshrink import escape, plots
from modelshrink.errors import UserError
from modelshrink.report import to_json, to_markdown


def check_html_available() -> None:
    """report.html needs the `markdown` package of the plots extra: say so before any work is done."""
    try:
        import markdown  # noqa: F401
    except ImportError:
        raise UserError("output.html needs the plots extra: pip install 'modelshrink[plots]'") from None


def report_files(report: dict[str, Any], *, html: bool = False) -> dict[str, bytes]:
    images: dict[str, bytes] = {}
    if plots.available():
        images["quality_latency.png"] = plots.quality_latency(report)
        if report.get("layers"):
            images["layers.png"] = plots.layers(report["layers"])
    page = to_markdown(report, list(images))
    files = {"report.json": to_json(report).encode(), "report.md": page.encode(), **images}
    if html:
        files["report.html"] = to_html(page, report, images).encode()
    return files


def to_html(page: str, report: dict[str, Any], images: dict[str, bytes]) -> str:
    """report.md rendered (Python-Markdown, tables extension), pictures as data URIs: one file to attach.
    report.md escapes every name already; the renderer refuses raw HTML besides, so a name that slipped
    through shows as text instead of running in the reader's browser."""
    body = _renderer().convert(page)
    for name, data in images.items():
        body = body.replace(f'src="{name}"', f'src="data:image/png;base64,{base64.b64encode(data).decode()}"')
    title = escape.html(report["recipe"].get("name") or "modelshrink run")
    style = "body{font-family:sans-serif;max-width:80em;margin:2em auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}"  # fmt: skip
    return f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{style}</style></head>" \
           f"<body>\n{body}\n</body></html>\n"  # fmt: skip


def _renderer() -> Any:
    """Python-Markdown with the tables and fenced code extensions, without raw HTML: a block or inline
    tag in the page is escaped as text. Our own markup (tables, images, bold) is markdown, not HTML."""
    import markdown

    md = markdown.Markdown(extensions=["tables", "fenced_code"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md
