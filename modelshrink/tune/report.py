"""tune.md: every trial with its quality, objective and gates, the Pareto front marked. Trial labels,
notes and gate names come from the recipe: `escape.markdown` keeps each in its cell."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from modelshrink import escape
from modelshrink.plots import quality_of


def quality(metrics: dict[str, Any] | None) -> float:
    """Accuracy where the data has labels, else the cosine to the original model (as report.md's picture)."""
    return quality_of(metrics)[1] if metrics else math.nan


def pareto(trials: Sequence[Any]) -> list[str]:
    """Labels of the finished trials no other beats on both quality (higher) and the objective (lower)."""
    done = [t for t in trials if t.objective is not None]

    def beaten(t: Any) -> bool:
        return any(
            quality(o.metrics) >= quality(t.metrics) and o.objective <= t.objective
            and (quality(o.metrics) > quality(t.metrics) or o.objective < t.objective)
            for o in done
        )  # fmt: skip

    return [t.label for t in done if not beaten(t)]


def markdown(summary: dict[str, Any], baseline: dict[str, Any], picture: bool) -> str:
    md = escape.markdown
    objective, front = summary["objective"], set(summary["pareto"])
    name, base = quality_of(baseline)
    verdict = "best candidate that passes every constraint" if summary["passed"] else "closest (nothing passed)"
    lines = [
        "# Tune",
        "",
        f"Objective: lowest {objective}. {verdict}: **{md(summary['best'])}**. Baseline {name} {base:.4f}.",
        "",
        "Quality and gates here are measured on the selection split, held out of the training data; the "
        "validation split is reported only by the chosen candidate's run (best/report.md), which no choice saw.",
        "",
        f"| trial | status | {name} | {md(objective)}{' (x original)' if objective.startswith('latency') else ''} "
        "| failed gates | Pareto |",
        "|---|---|---|---|---|---|",
    ]
    for t in summary["trials"]:
        value = f"{t['objective']:.4g}" if t["objective"] is not None else "-"
        failed = ", ".join(md(g["name"]) for g in t["gates"] if not g["passed"]) or "-"
        status = md(t["status"] + (f" ({t['note']})" if t["note"] else ""))
        mark = "yes" if t["label"] in front else ""
        lines.append(f"| {md(t['label'])} | {status} | {quality(t['metrics']):.4f} | {value} | {failed} | {mark} |")
    if picture:
        lines += ["", "![tune](tune.png)"]
    return "\n".join(lines) + "\n"
