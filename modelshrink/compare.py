"""Reports side by side: tonight's final model against last night's, for `modelshrink compare` and for
`constraints.compare_to` / `run --compare-to`.

A regression is a change for the worse beyond the allowed limit, read through the metric descriptors:
metrics compared in points or absolute values (accuracy, cosine, loss, sparsity) by their difference,
the rest (latency, size, MACs, params) by their ratio. Latency is noise-aware: when each run's median
lies at or below the other run's p95 (their median-to-p95 bands overlap) the two count as equal, so
timing jitter on a busy CI machine is not a regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from modelshrink import escape
from modelshrink.constraints import shown
from modelshrink.descriptors import METRICS, MetricDescriptor, Metrics, report_metrics
from modelshrink.environment import cpu_summary
from modelshrink.errors import UserError, first_line
from modelshrink.report_schema import MAX_REPORT_BYTES, parse_report

# latency metric -> (median key, p95 key) in `latency_ms`
_LATENCY = {
    "latency_b1_ms": ("batch1_median", "batch1_p95"),
    "latency_b1_p95_ms": ("batch1_p95", "batch1_p95"),
    "latency_bn_ms": ("batchN_median", "batchN_p95"),
}


def read_report(path: str | Path) -> dict[str, Any]:
    """A report.json written by modelshrink, as far as modelshrink reads it (`report_schema`), or a one-line
    UserError saying why not: refused before any work, never halfway through a comparison."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_REPORT_BYTES + 1)  # a huge file (or /dev/zero) is never read whole
    except FileNotFoundError:
        raise UserError(f"{path}: no such report") from None
    except OSError as exc:
        raise UserError(f"{path}: not a readable report.json ({exc.strerror or exc})") from None
    try:
        return parse_report(data)
    except ValueError as exc:
        raise UserError(f"{path}: not a modelshrink report.json: {first_line(exc)}") from None


def change(metric: MetricDescriptor, before: Metrics, after: Metrics) -> float:
    """How much worse `after` is than `before` (positive = worse): a difference, or a ratio above 1."""
    if metric.name in _LATENCY and within_noise(metric.name, before, after):
        return 1.0
    old, new = _number(metric.read(before)), _number(metric.read(after))
    if metric.change in ("ratio", "speedup"):  # a regression is the factor it got worse by
        if not old:
            return math.nan
        return new / old if metric.better == "lower" else old / new if new else math.inf
    return old - new if metric.better == "higher" else new - old


def within_noise(name: str, before: Metrics, after: Metrics) -> bool:
    """Whether two latency medians are within each other's spread (median..p95 of either run)."""
    median, p95 = _LATENCY[name]
    old, new = before.get("latency_ms"), after.get("latency_ms")
    if not old or not new:
        return False
    return new[median] <= old[p95] and old[median] <= new[p95]


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Limit:
    """At most `allowed` worse: a difference for point metrics, a ratio (e.g. 1.10) for the rest."""

    metric: MetricDescriptor
    allowed: float

    def check(self, before: Metrics, after: Metrics, prefix: str) -> dict[str, Any]:
        value = change(self.metric, before, after)
        passed = not math.isnan(value) and value <= self.allowed
        return {"name": f"{prefix}.{self.metric.name}", "limit": self.allowed, "value": value, "passed": passed}


def regressions(spec: Any, previous: dict[str, Any], final: Metrics) -> list[dict[str, Any]]:
    """The `max_regression` gates of a constraints section against `previous` (a read report); the
    user's own metrics are known by the earlier report's `custom_metrics`."""
    known = regression_metrics(spec, previous)
    return [Limit(known[name], allowed).check(previous["final"], final, "regression") for name, allowed in
            spec.max_regression.items()]  # fmt: skip


def regression_metrics(spec: Any, previous: dict[str, Any]) -> dict[str, MetricDescriptor]:
    """The metrics `max_regression` can compare with `previous`: refused before any work if one is
    missing from it (a metric of the user's that the earlier run did not have)."""
    known = report_metrics(previous)
    for name in spec.max_regression:
        if name not in known:
            raise UserError(f"constraints.max_regression: the earlier report has no metric {name!r}")
    return known


def environment_warnings(reports: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """Timings from different CPUs or thread counts are not comparable: say so."""
    first, warnings = reports[0], []
    for report, label in zip(reports[1:], labels[1:], strict=True):
        here, there = cpu_summary(report.get("environment", {})), cpu_summary(first.get("environment", {}))
        if here != there:
            warnings.append(
                f"{label} ran on another machine ({here}) than {labels[0]} ({there}): latency ratios compare CPUs"
            )
        threads = [r["final"].get("latency_ms", {}).get("threads") for r in (first, report)]
        if threads[0] != threads[1]:
            warnings.append(f"{label} was timed with {threads[1]} threads, {labels[0]} with {threads[0]}")
    return warnings


def table(reports: list[dict[str, Any]], labels: list[str]) -> list[list[str]]:
    """Rows of metric name and each report's final value, later ones with their change against the first."""
    rows = []
    first = reports[0]["final"]
    for metric in report_metrics(*reports).values():
        cells = [metric.label.format(n=first.get("latency_ms", {}).get("batch_n", "N"))]
        for index, report in enumerate(reports):
            value = _number(metric.read(report["final"]))
            shown = metric.show(value)
            if index and metric.change:
                shown += f" ({metric.compared(value, _number(metric.read(first)))})"
            cells.append(shown)
        rows.append(cells)
    return rows


def compare(paths: list[Path], allowed: dict[str, float]) -> dict[str, Any]:
    """The `compare` command's result: reports side by side, and the last against the one before it
    under `allowed` (metric -> most worsening allowed, as `max_regression`)."""
    if len(paths) < 2:
        raise UserError("compare needs at least two report.json files")
    reports = [read_report(path) for path in paths]
    labels = _labels(paths)
    gates = [Limit(METRICS[name], limit).check(reports[-2]["final"], reports[-1]["final"], "regression")
             for name, limit in allowed.items()]  # fmt: skip
    return {
        "reports": [str(p) for p in paths],
        "labels": labels,
        "rows": table(reports, labels),
        "warnings": environment_warnings(reports, labels),
        "regressions": gates,
        "passed": all(g["passed"] for g in gates),
        "finals": [r["final"] for r in reports],
    }


def _labels(paths: list[Path]) -> list[str]:
    """Each report's directory name (runs/2026-11-24/report.json -> 2026-11-24), made unique."""
    names = [path.parent.name or str(path) for path in paths]
    return [name if names.count(name) == 1 else f"{name} #{i}" for i, name in enumerate(names, start=1)]


def to_markdown(result: dict[str, Any], picture: str | None = None) -> str:
    """For CI's job summary, which renders it as GitHub markdown: labels, metric names and warnings come
    from file names and the reports, so each goes through `escape.markdown`; the picture's file name is
    percent-encoded, a relative link whatever it holds."""
    md, labels = escape.markdown, [escape.markdown(label) for label in result["labels"]]
    head = "| metric | " + " | ".join(labels) + " |"
    lines = ["# modelshrink compare", "", head, "|---" * (len(labels) + 1) + "|"]
    lines += ["| " + " | ".join(map(md, row)) + " |" for row in result["rows"]]
    if result["regressions"]:
        lines += ["", f"## {labels[-1]} against {labels[-2]}", "",
                  "| gate | limit | value | result |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {md(g['name'])} | {shown(g['name'], g['limit'])} | {shown(g['name'], g['value'])} | "
                  f"{'pass' if g['passed'] else '**FAIL**'} |" for g in result["regressions"]]  # fmt: skip
    lines += [f"\nwarning: {md(w)}" for w in result["warnings"]]
    if picture:
        lines += ["", f"![each metric across runs]({quote(picture)})"]
    return "\n".join(lines) + "\n"
