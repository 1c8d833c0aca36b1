"""The rich tables the commands print: a run's report, a comparison of runs, a checkpoint's inspection.

Every name in them comes from a file (the recipe, the model, an earlier report, a state_dict) and
reaches rich as `escape.terminal` text: never parsed as markup (`[/bold]` would crash rich after the
outputs were written), no terminal escapes. Machine-readable output (--json, --markdown) is the
commands' own; only the CLI prints these.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from modelshrink.compare import table as comparison
from modelshrink.constraints import verdict
from modelshrink.descriptors import human_bytes, human_count, report_metrics
from modelshrink.escape import terminal


def stdout() -> Console:
    """A console for tables; wide when piped, so CI logs keep one row per line."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def print_report(report: dict[str, Any]) -> None:
    """A run's table (every stage and export beside the baseline), its gates, the comparison with an
    earlier report, and its findings."""

    columns = [d for d in report_metrics(report).values() if d.in_cli]
    table = Table(title=terminal(report["recipe"].get("name") or "modelshrink"), title_justify="left")
    table.add_column("stage", justify="left")
    for d in columns:
        table.add_column(terminal(d.label.format(n=report["baseline"]["latency_ms"]["batch_n"])), justify="right")
    base = report["baseline"]
    rows = [(s["name"], s["metrics"]) for s in report["stages"]] + [
        (e["file"], e["metrics"]) for e in report.get("exports") or []
    ]
    table.add_row("baseline", *(terminal(d.show(d.read(base))) for d in columns))
    for name, m in rows:  # latencies with their speed-up over the original (above 1 is faster)
        cells = [f"{d.show(d.read(m))} ({d.compared(d.read(m), d.read(base))})" if d.change == "speedup"
                 else d.show(d.read(m)) for d in columns]  # fmt: skip
        table.add_row(terminal(name), *map(terminal, cells))
    console = stdout()
    console.print(table)
    for c in report["constraints"]:
        console.print(terminal(verdict(c)))
    if "compared_to" in report:
        against = Table(title=terminal(f"against {report['compared_to']['path']}"), title_justify="left")
        for column in ("metric", "earlier", "this run"):
            against.add_column(column, justify="left" if column == "metric" else "right")
        for row in comparison([report["compared_to"], report], ["earlier", "this run"]):
            against.add_row(*map(terminal, row))
        console.print(against)
    for note in report["findings"]:
        console.print(terminal(f"note: {note}"))


def print_comparison(result: dict[str, Any]) -> None:
    """`modelshrink compare`: each metric across the runs, and the regression gates."""

    table = Table(title="modelshrink compare", title_justify="left")
    table.add_column("metric", justify="left")
    for label in result["labels"]:
        table.add_column(terminal(label), justify="right")
    for row in result["rows"]:
        table.add_row(*map(terminal, row))
    console = stdout()
    console.print(table)
    for gate in result["regressions"]:
        console.print(terminal(verdict(gate)))


def print_inspection(info: dict[str, Any]) -> None:
    """`modelshrink inspect`: one row per tensor, the totals, then what else is known of the file."""

    table = Table(title=terminal(f"{info['path']} ({info['kind']})"), title_justify="left")
    numbers = ("params", "sparsity", "bytes", "stored")  # stored: in the file, where sparse tensors are packed
    for column in ("layer", "type", "shape", "dtype", *numbers):
        table.add_column(column, justify="right" if column in numbers else "left")
    for row in info["layers"]:
        table.add_row(
            terminal(row["name"]),
            terminal(row["type"]),
            "x".join(map(str, row["shape"])),
            terminal(row["dtype"]),
            f"{row['params']:,}",
            f"{row['sparsity']:.1%}",
            human_bytes(row["bytes"]),
            human_bytes(row["stored_bytes"]),
        )
    t = info["totals"]
    table.add_section()
    dtypes = terminal(", ".join(f"{k}: {human_count(v)}" for k, v in t["params_by_dtype"].items()))
    table.add_row("total", "", "", dtypes, f"{t['params']:,}", f"{t['sparsity']:.1%}", human_bytes(t["tensor_bytes"]),
                  human_bytes(t["stored_bytes"]))  # fmt: skip
    console = stdout()
    console.print(table)
    extras = [f"file {human_bytes(info['file_bytes'])}", f"non-zero params {t['nonzero_params']:,}"]
    if "architecture" in info:
        extras.append(f"architecture {info['architecture_name']}")
        extras.append(f"transforms {', '.join(info['transforms']) or 'none'}")
    if info["nonfinite"]:
        extras.append(f"NaN or Inf in {len(info['nonfinite'])} tensor(s): {', '.join(info['nonfinite'][:5])}")
    if "untrusted_factory" in info:
        module = info["untrusted_factory"].partition(":")[0]
        extras.append(f"{info['untrusted_factory']} not trusted, so not imported (--trust {module} builds it)")
    if "macs" in info:
        extras.append(f"MACs {human_count(info['macs'])} at input {info['input_shape']}")
    console.print(terminal(" · ".join(extras)))
