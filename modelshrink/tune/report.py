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


def pareto(trials: Sequence[Any], multi: bool = False) -> list[str]:
    """Labels of the finished trials no other dominates: on quality (higher) and the objective (lower), or
    with several objectives on all of them (`multi`; quality is one of them when `accuracy_drop` is)."""
    done = [t for t in trials if t.values]

    def key(t: Any) -> list[float]:
        return list(t.values) if multi else [t.objective, -quality(t.metrics)]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    def beaten(t: Any) -> bool:
        return any(dominates(key(o), key(t)) for o in done)

    return [t.label for t in done if not beaten(t)]


def markdown(summary: dict[str, Any], baseline: dict[str, Any], picture: bool) -> str:
    md = escape.markdown
    objectives, front = summary["objectives"], set(summary["pareto"])
    name, base = quality_of(baseline)
    verdict = "best candidate that passes every constraint" if summary["passed"] else "closest (nothing passed)"
    if len(objectives) > 1:
        verdict += " (of the Pareto front, the lowest on the first objective)"
    heads = " | ".join(f"{md(o)}{' (x original)' if o.startswith('latency') else ''}" for o in objectives)
    lines = [
        "# Tune",
        "",
        f"Objective{'s' if len(objectives) > 1 else ''}: lowest {', '.join(md(o) for o in objectives)} "
        f"(study {md(summary['study'])}). {verdict}: **{md(summary['best'])}**. Baseline {name} {base:.4f}.",
        "",
        "Quality and gates here are measured on the selection split, held out of the training data; the "
        "validation split is reported only by the chosen candidate's run (best/report.md), which no choice saw. "
        "A pruned candidate was stopped as soon as it could not win (its note says where): before training when "
        "a finished candidate that passed was better on every objective, which no later stage could change; "
        "mid-training when its accuracy could not reach the gate even with the largest recovery a finished "
        "candidate made from the same epoch.",
        "",
        f"| trial | status | {name} | {heads} | failed gates | Pareto |",
        "|---|---|---|" + "---|" * len(objectives) + "---|---|",
    ]
    for t in summary["trials"]:
        values = " | ".join(f"{v:.4g}" for v in t["values"]) if t["values"] else " | ".join("-" for _ in objectives)
        failed = ", ".join(md(g["name"]) for g in t["gates"] if not g["passed"]) or "-"
        note = t["note"].removeprefix(f"{t['status']} ")  # "dropped (after recover)", not "dropped (dropped ...)"
        status = md(t["status"] + (f" ({note})" if note else ""))
        mark = "yes" if t["values"] and t["label"] in front else ""  # not the lost run of a candidate run again
        lines.append(f"| {md(t['label'])} | {status} | {quality(t['metrics']):.4f} | {values} | {failed} | {mark} |")
    if picture:
        lines += ["", "![tune](tune.png)"]
    return "\n".join(lines) + "\n"
