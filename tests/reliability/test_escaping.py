"""One escaping layer (issue #24): every string from a recipe, a report.json, a checkpoint or a model is
shown inert in every sink. First each `modelshrink.escape` function against hostile strings, judged by the
real consumer (rich, Python-Markdown with raw HTML allowed as on GitHub, expat, a strict JSON parser);
then whole commands (`run`, `compare`, `inspect`) fed hostile names, through the CLI."""

from __future__ import annotations

import html as html_module
import io
import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modelshrink import escape
from modelshrink.cli import app
from tests.conftest import FAST_EVAL, tiny_recipe, write_recipe

runner = CliRunner()
HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[/bold]",
    "[red]x",
    "\x1b]0;pwned\x07",
    "\x1b[31m",
    "\x1b[2J",
    "\x9b31m",  # CSI as one C1 character
    "a|b",
    "line\nbreak",
    "tab\there\r\nwin",
    "`code`",
    "[x](javascript:alert(1))",
    "\x00\x01\x0b",
    "\udcff",  # a non-UTF-8 file name byte, read through surrogateescape
    "\u202eevil",  # bidi override: shown as a visible \u202e, never obeyed
    "**bold** __init__ _i_ ~~gone~~",
    "- item",
    "1. item",
    "# heading #",
    "a\\|b",
    "&lt;script&gt; &amp;",
    "<https://example.com>",
    ":smile:",
]
# what a terminal, page or parser must never get: C0 (but tab and newline), DEL, C1, lone surrogates,
# line separators and the bidi controls
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SCRIPT = "<script>alert(1)</script>"
# `$\frac{$` would start matplotlib's math parser in a picture's labels
ATTACK = f"{SCRIPT}[/bold]\x1b]0;pwned\x07|x`y`[l](javascript:alert(1))<img src=x onerror=alert(1)>$\\frac{{$"


def strict_json(text: str) -> object:
    """`text` parsed as strict parsers do: no NaN or Infinity, and no escaped lone surrogate (serde_json
    refuses those; Python's parser lets them through, so they are looked for)."""
    parsed = json.loads(text, parse_constant=lambda constant: pytest.fail(f"not strict JSON: {constant}"))
    json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    return parsed


def render_markdown(page: str) -> str:
    """GitHub's stand-in: Python-Markdown with tables, fenced code and raw HTML allowed (GitHub allows some)."""
    markdown = pytest.importorskip("markdown")
    return markdown.markdown(page, extensions=["tables", "fenced_code"])


# ------------------------------------------------------------------------------------------ units
@pytest.mark.parametrize("hostile", HOSTILE)
def test_text_leaves_nothing_a_terminal_obeys(hostile: str) -> None:
    shown = escape.text(hostile)
    assert not UNSAFE.search(shown)
    shown.encode("utf-8")  # no lone surrogate left to fail an encode
    assert "\n" not in escape.text(hostile, newlines=False) and "\t" not in escape.text(hostile, newlines=False)


def test_text_shows_what_it_escaped() -> None:
    assert escape.text("\x1b]0;pwned\x07") == "\\x1b]0;pwned\\x07"
    assert escape.text("\x9b") == "\\x9b" and escape.text("\x7f") == "\\x7f"
    assert escape.text("\u202eevil") == "\\u202eevil"
    assert escape.text("ok\rFAIL") == "ok\\x0dFAIL", "a carriage return would let a name overwrite its line"
    assert escape.text("\udcff.pt") == "\ufffd.pt"
    assert escape.text("line\nbreak") == "line\nbreak" and escape.text("line\nbreak", newlines=False) == "line break"
    assert escape.text("features.0_weight é 模型") == "features.0_weight é 模型", "plain names stay as they are"


def test_terminal_is_never_markup_or_escapes() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=escape.terminal("[/bold]"))
    table.add_column(escape.terminal("[red]x"))
    for hostile in HOSTILE:
        table.add_row(escape.terminal(hostile))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    console.print(escape.terminal(":smile: [/bold]"))
    out = console.file.getvalue()
    assert not UNSAFE.search(out)
    assert "[/bold]" in out and "[red]x" in out and ":smile:" in out, "shown as written, not parsed"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_html_is_text(hostile: str) -> None:
    shown = escape.html(hostile)
    assert "<" not in shown and ">" not in shown and '"' not in shown and "'" not in shown
    assert html_module.unescape(shown) == escape.text(hostile)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_markdown_keeps_a_name_one_literal_table_cell(hostile: str) -> None:
    page = render_markdown(f"| name | next |\n|---|---|\n| {escape.markdown(hostile)} | z |\n")
    row = page.split("<tbody>")[1]
    cells = re.findall(r"<td>(.*?)</td>", row, flags=re.S)
    assert len(cells) == 2 and cells[1] == "z", row
    assert "<" not in cells[0], f"markup in the cell: {cells[0]}"  # no <a>, <code>, <em>, <script>, <img>
    assert html_module.unescape(cells[0]) == escape.text(hostile, newlines=False).strip()


@pytest.mark.parametrize("hostile", HOSTILE)
def test_markdown_in_a_list_item_and_a_heading_is_literal(hostile: str) -> None:
    page = render_markdown(f"# {escape.markdown(hostile)}\n\n- {escape.markdown(hostile)}\n")
    heading, item = re.fullmatch(r"<h1>(.*)</h1>\n<ul>\n<li>(.*)</li>\n</ul>", page, flags=re.S).groups()
    assert html_module.unescape(item) == escape.text(hostile, newlines=False).strip()
    assert "<" not in heading + item
    assert html_module.unescape(heading) == escape.text(hostile, newlines=False).strip()


def test_markdown_leaves_ordinary_names_readable() -> None:
    assert escape.markdown("size_bytes.max") == "size_bytes.max"
    assert escape.markdown("prune-1 v0.1.0") == "prune-1 v0.1.0"


@pytest.mark.parametrize("hostile", [*HOSTILE, "features.0", "a`b", "x|y", " "])
def test_code_is_a_code_span_only_when_that_is_safe(hostile: str) -> None:
    page = render_markdown(f"| name | next |\n|---|---|\n| {escape.code(hostile)} | z |\n")
    cells = re.findall(r"<td>(.*?)</td>", page.split("<tbody>")[1], flags=re.S)
    assert len(cells) == 2 and cells[1] == "z"
    inner = re.fullmatch(r"(?:<code>)?(.*?)(?:</code>)?", cells[0], flags=re.S).group(1)
    assert "<" not in inner and html_module.unescape(inner) == escape.text(hostile, newlines=False).strip()
    assert escape.code("features.0") == "`features.0`"


def test_a_code_block_no_name_can_close() -> None:
    body = "exclude:\n- 'a\n```\n<script>alert(1)</script>'"
    markdown = pytest.importorskip("markdown")
    page = markdown.markdown("\n".join(["x", "", *escape.code_block(body, "yaml"), "", "after"]),
                             extensions=["fenced_code"])  # fmt: skip
    assert page.count("<pre>") == 1 and "<script" not in page and "```" in page.split("</pre>")[0]


@pytest.mark.parametrize("hostile", [*HOSTILE, "\ufffe\uffff"])
def test_xml_is_well_formed(hostile: str) -> None:
    element = ET.Element("testcase", name=escape.xml(hostile))
    element.text = escape.xml(hostile)
    parsed = ET.fromstring(ET.tostring(element, encoding="utf-8"))  # expat refuses what XML 1.0 forbids
    assert parsed.text == escape.xml(hostile)


def test_strict_json_has_no_nan_and_encodes() -> None:
    value = {"a": math.nan, "b": [math.inf, -math.inf, (1.5, "\ud800")], "\udcff": "\x1b[2J"}
    for ascii_only in (True, False):
        text = escape.strict_json(value, ensure_ascii=ascii_only)
        text.encode("utf-8")
        assert strict_json(text) == {"a": None, "b": [None, None, [1.5, "\ufffd"]], "\ufffd": "\x1b[2J"}


def test_report_html_renders_markdown_but_refuses_raw_html() -> None:
    """Defence in depth: HTML that slipped into report.md past `escape.markdown` is shown as text."""
    pytest.importorskip("markdown")
    from modelshrink.report_files import to_html

    page = f"{SCRIPT}\n\n<div onclick=x>block</div>\n\n**ours** <img src=x onerror=alert(1)>\n\n| a |\n|---|\n| b |"
    rendered = to_html(page, {"recipe": {"name": SCRIPT}}, {})
    assert "<script" not in rendered and "<div" not in rendered and "<img" not in rendered
    assert "<strong>ours</strong>" in rendered and "<td>b</td>" in rendered


def markdown_cells_are_inert(page: str) -> str:
    """`page` rendered: no markup from a name, and every table row as wide as its header."""
    rendered = render_markdown(page)
    assert "<script" not in rendered and "<img" not in rendered and "<a " not in rendered, rendered
    assert "<em>" not in rendered and "<strong>" not in rendered, rendered
    assert_tables_keep_their_columns(rendered)
    return rendered


def test_sensitivity_md_names_layers_inertly() -> None:
    from modelshrink.analyze import markdown

    names = [h for h in HOSTILE if h.strip()]
    row = {"type": "Linear|<script>", "params": 10, "drops": {"prune 0.5": 0.01}, "skipped": ["int4"]}
    result = {
        "metric": "accuracy", "batches": 2, "elapsed_s": 1.0, "budget_s": 1.0, "max_drop": 0.01,
        "layers": [{**row, "name": name} for name in names], "not_measured": names,
        "suggestions": {"prune": {"method": "channel", "layer_amounts": {n: 0.5 for n in names}},
                        "quantize": {"exclude": ["x\n```\n<script>alert(1)</script>", *names]}, "int4_fits": names},
    }  # fmt: skip
    page = markdown(result, picture=False)
    rendered = markdown_cells_are_inert(page)
    assert rendered.count("<pre>") == 1 and not UNSAFE.search(page)


def test_tune_md_names_trials_inertly() -> None:
    from modelshrink.tune.report import markdown

    gate = {"name": "[x](javascript:alert(1))", "passed": False}
    trials = [{"label": h, "objective": 1.0, "values": [1.0], "status": "failed", "note": h, "gates": [gate],
               "metrics": {"accuracy": 0.5}} for h in HOSTILE]  # fmt: skip
    summary = {"objective": "latency_b1", "objectives": ["latency_b1"], "pareto": [], "passed": False,
               "best": SCRIPT, "study": SCRIPT, "trials": trials}  # fmt: skip
    page = markdown(summary, {"accuracy": 0.6}, picture=False)
    ours = page.replace(f"**{escape.markdown(SCRIPT)}**", "")  # our own bold, around the name
    markdown_cells_are_inert(ours.replace(f"(study {escape.markdown(SCRIPT)})", ""))  # the study's name: text
    assert not UNSAFE.search(page)


def test_progress_bars_show_a_hostile_description_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from modelshrink import progress

    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    monkeypatch.setattr(progress, "console", console)
    monkeypatch.setattr(progress, "interactive", lambda: True)
    assert list(progress.track([1, 2], "S [/bold]\x1b]0;pwned\x07", total=2)) == [1, 2]  # no MarkupError
    out = console.file.getvalue()
    assert "S [/bold]\\x1b]0;pwned\\x07" in out and "\x1b]0;pwned" not in out


def test_compare_markdown_links_its_picture_by_a_relative_name() -> None:
    from modelshrink.compare import to_markdown

    result = {"labels": ["a", "b"], "rows": [], "regressions": [], "warnings": []}
    page = render_markdown(to_markdown(result, "x) [y](javascript:alert(1)).png"))
    assert re.findall(r'<img alt="each metric across runs" src="([^"]*)"', page) == [
        "x%29%20%5By%5D%28javascript%3Aalert%281%29%29.png"
    ]


def test_report_md_exports_and_text_charts_are_inert(plain_report: dict) -> None:
    from modelshrink.report import to_markdown

    report = json.loads(json.dumps(plain_report))
    base = report["baseline"]
    report["exports"] = [{"file": f"{h}.onnx", "format": "onnx", "quantize": h, "source": h, "metrics": base,
                          "validation": {"max_abs_error": 0.0}, "notes": [h]} for h in HOSTILE]  # fmt: skip
    report["layers"] = [{"name": f"x\n```\n{SCRIPT}{h}", "bits": 8, "sparsity": 0.5} for h in HOSTILE]
    page = render_markdown(to_markdown(report))
    assert "<script" not in page and "<img" not in page and "<a " not in page and page.count("<pre>") == 1
    assert_raw_rows_keep_their_columns(to_markdown(report))
    assert_tables_keep_their_columns(page)


def test_junit_xml_of_hostile_gate_names_parses() -> None:
    from modelshrink.junit import junit_xml

    gates = [{"name": f"{h}.max", "limit": 1.0, "value": 2.0, "passed": i % 2 == 0} for i, h in enumerate(HOSTILE)]
    xml = junit_xml({"recipe": {"name": ATTACK + "\ufffe"}, "constraints": gates})
    cases = ET.fromstring(xml).iter("testcase")  # expat refuses what XML 1.0 forbids
    assert [case.get("name") for case in cases] == [escape.xml(g["name"]) for g in gates]
    assert not UNSAFE.search(xml.decode())


# ---------------------------------------------------------------------------------- through the CLI
def hostile_metric(model: torch.nn.Module, loader: object) -> dict[str, float]:
    """A custom metric whose name is markdown emphasis (metric names must be identifiers)."""
    return {"__bold__": 1.0}


@pytest.fixture(scope="module")
def plain_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real report.json of a tiny run, which each test copies and makes hostile."""
    tmp = tmp_path_factory.mktemp("plain")
    assert runner.invoke(app, ["run", str(write_recipe(tmp / "r.yaml", tiny_recipe(tmp)))]).exit_code == 0
    return json.loads((tmp / "out" / "report.json").read_text())


def hostile_report(report: dict, cpu_model: str = ATTACK) -> dict:
    """`report` from another machine whose fields and custom metrics are names an attacker chose."""
    report = json.loads(json.dumps(report))
    report["environment"]["cpu_model"] = cpu_model
    # `{0}`: metric labels are format strings ("b{n} (ms)"), a name must not be one
    report["custom_metrics"] = {SCRIPT: "higher", "[/bold]": "lower", "x\x1b]0;x\x07": "higher", "{0}$x$": "higher"}
    report["final"]["custom"] = {SCRIPT: 1.0, "[/bold]": None, "x\x1b]0;x\x07": 2.0, "{0}$x$": 3.0}
    return report


def save(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def assert_clean_output(result: object) -> None:
    for stream in (result.stdout, result.stderr):
        assert not UNSAFE.search(stream), stream
        assert "Traceback" not in stream and "internal error" not in stream


def assert_raw_rows_keep_their_columns(page: str) -> None:
    """Each table row of a markdown page has as many cells as its header, counted as GitHub does: every
    `|` not backslash-escaped splits a cell, even inside a code span."""
    for block in re.findall(r"(?:^\|.*\n?)+", page, flags=re.M):
        widths = {len([bar for bar in re.findall(r"\\.|(\|)", line) if bar]) for line in block.splitlines()}
        assert len(widths) == 1, block


def assert_tables_keep_their_columns(page: str) -> None:
    """Each table row of a rendered page has as many cells as its header."""
    for table in re.findall(r"<table>.*?</table>", page, flags=re.S):
        header = len(re.findall("<th[ >]", table))
        assert all(len(re.findall("<td[ >]", row)) == header for row in re.findall("<tr>.*?</tr>", table, re.S)[1:])


def test_a_run_full_of_hostile_names_writes_inert_reports(tmp_path: Path, plain_report: dict) -> None:
    pytest.importorskip("markdown")
    previous = save(hostile_report(plain_report), tmp_path / "prev<script>[/bold]\x1b]0;x\x07" / "report.json")
    recipe = tiny_recipe(
        tmp_path,
        name=f"R {ATTACK}",
        stages=[{"kind": "prune", "amount": 0.5, "name": f"S {ATTACK}\nline"}],
        evaluate={**FAST_EVAL, "metrics": ["tests.reliability.test_escaping:hostile_metric"]},
        constraints={"max_regression": {"accuracy": 1.0}},
        output={"dir": str(tmp_path / "out"), "html": True},
    )
    junit = tmp_path / "junit.xml"
    args = ["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--compare-to", str(previous), "--junit", str(junit)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert_clean_output(result)
    assert "[/bold]" in result.stdout, "names are shown as written, not parsed as rich markup"

    out = tmp_path / "out"
    page = (out / "report.html").read_text()
    title = re.search("<title>(.*)</title>", page).group(1)
    assert "<" not in title and html_module.unescape(title) == f"R {escape.text(ATTACK)}"
    assert "<script" not in page and "<img src=x" not in page and "<a " not in page
    assert "<strong>bold</strong>" not in page, "the custom metric __bold__ is a name, not emphasis"
    assert "<strong>PASSED</strong>" in page and "<table>" in page and "__bold__" in page
    assert_tables_keep_their_columns(page)
    if (out / "layers.png").exists():
        assert '<img alt="layers" src="data:image/png;base64,' in page, "our own markup still renders"
    assert_raw_rows_keep_their_columns((out / "report.md").read_text())
    md_page = render_markdown((out / "report.md").read_text())
    assert "<script" not in md_page and "<img src=x" not in md_page and "<strong>bold</strong>" not in md_page
    assert_tables_keep_their_columns(md_page)

    suite = ET.fromstring(junit.read_bytes())
    assert not UNSAFE.search(junit.read_text()) and suite.find("testsuite").get("name").startswith("modelshrink: R")
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["name"] == f"R {ATTACK}", "report.json keeps the data as it was"


def test_the_run_table_of_a_hostile_report_is_inert(plain_report: dict, capsys: pytest.CaptureFixture) -> None:
    """Every string `run` prints, from a report whose names and earlier report were all chosen to attack
    (more than a recipe can hold: custom metric names there must be identifiers)."""
    from modelshrink.cli import _print_report

    report = hostile_report(plain_report)
    report["recipe"]["name"] = ATTACK
    report["stages"][0]["name"] = ATTACK
    report["findings"] = [ATTACK]
    report["constraints"] = [{"name": f"{h}.max", "limit": 1.0, "value": 2.0, "passed": False} for h in HOSTILE]
    report["compared_to"] = {"path": ATTACK, "final": report["final"], "environment": report["environment"]}
    _print_report(report, as_json=False)
    out = capsys.readouterr().out
    assert not UNSAFE.search(out) and out.count("[/bold]") >= 5, out


@pytest.fixture
def hostile_comparison(tmp_path: Path, plain_report: dict) -> list[str]:
    """Two reports in directories named to attack (labels), the later with a hostile CPU and an undefined
    (null: NaN once read) accuracy."""
    later = hostile_report(plain_report)
    later["final"]["accuracy"] = None
    first_dir = os.fsdecode(b"a<script>[red]\x1b]0;x\x07\xff")  # a lone surrogate: not UTF-8 on disk
    return [
        str(save(plain_report, tmp_path / first_dir / "report.json")),
        str(save(later, tmp_path / "b[/bold]|`x`" / "report.json")),
    ]


def test_compare_of_hostile_reports_is_inert_in_every_format(tmp_path: Path, hostile_comparison: list[str]) -> None:
    gate = ["--max-accuracy-drop", "0.01"]  # NaN accuracy never passes: exit 1, not a crash
    table = runner.invoke(app, ["compare", *hostile_comparison, *gate])
    assert table.exit_code == 1, table.output
    assert_clean_output(table)
    assert "[/bold]" in table.stdout and "warning:" in table.stderr

    as_json = runner.invoke(app, ["compare", *hostile_comparison, *gate, "--json"])
    assert as_json.exit_code == 1
    assert strict_json(as_json.stdout)["finals"][1]["accuracy"] is None

    junit = tmp_path / "gates.xml"
    markdown = runner.invoke(app, ["compare", *hostile_comparison, *gate, "--markdown", "--junit", str(junit)])
    assert markdown.exit_code == 1
    assert_clean_output(markdown)
    assert_raw_rows_keep_their_columns(markdown.stdout)
    page = render_markdown(markdown.stdout)
    assert "<script" not in page and "<strong>" in page, "our own **FAIL** still renders"
    assert_tables_keep_their_columns(page)
    ET.fromstring(junit.read_bytes())
    assert not UNSAFE.search(junit.read_text())


def test_inspect_shows_hostile_keys_escaped(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save({"a[/bold].weight": torch.ones(2, 2), "b\x1b]0;pwned\x07.weight": torch.ones(2),
                "n[/bold]\x1b[2J.bias": torch.tensor([math.nan]), "c\udcff.weight": torch.ones(1)}, path)  # fmt: skip
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert_clean_output(result)
    assert "a[/bold]" in result.stdout and "b\\x1b]0;pwned\\x07" in result.stdout

    as_json = runner.invoke(app, ["inspect", str(path), "--json"])
    assert as_json.exit_code == 0
    names = [row["name"] for row in strict_json(as_json.stdout)["layers"]]
    assert "b\x1b]0;pwned\x07" in names, "JSON keeps the name; its parser escapes it"


def test_an_error_naming_a_hostile_path_is_one_inert_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "r\x1b]0;pwned\x07[/bold].yaml")])
    assert result.exit_code == 2
    assert_clean_output(result)
    assert result.stderr.count("error:") == 1 and "r\\x1b]0;pwned\\x07[/bold].yaml" in result.stderr


def test_a_name_cannot_forge_a_line_on_the_terminal(tmp_path: Path) -> None:
    """A newline in a name would start what looks like a line of ours (an `error:`, a table row)."""
    assert escape.terminal("a\nerror: forged").plain == "a error: forged"
    path = tmp_path / "sd.pt"
    torch.save({"layer\nerror: forged.weight": torch.zeros(2, 2), "ok\n| fake | row |.weight": torch.zeros(2)}, path)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert not any(line.lstrip("│ ").startswith(("error: forged", "| fake")) for line in result.output.splitlines())


def test_torchs_import_notices_do_not_stand_before_the_error_line(caplog: pytest.LogCaptureFixture) -> None:
    from modelshrink.quiet import hide_import_notices

    hide_import_notices()
    notice = "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an"
    logging.getLogger("torch.utils._pytree").warning(notice)
    logging.getLogger("torch.utils._pytree").warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
