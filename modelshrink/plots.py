"""Pictures for report.md and `compare`, as PNG bytes; text charts where matplotlib is not installed.

matplotlib is an optional extra (`pip install modelshrink[plots]`, part of `[dev]`). Figures are
drawn with the object API on an Agg canvas, never through pyplot, so no global figure state or GUI
backend is touched. Names drawn come from recipes and reports: `escape.picture` keeps them one inert line.
"""

from __future__ import annotations

import io
import math
from typing import Any

from modelshrink.descriptors import report_metrics
from modelshrink.escape import picture


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # stamped, so that `--plot` rewrites only a picture of ours (`outputs.picture_file`)
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": "modelshrink"})
    return buffer.getvalue()


def quality_of(metrics: dict[str, Any]) -> tuple[str, float]:
    """Accuracy where the data has labels, else the cosine to the original model's outputs."""
    accuracy = metrics.get("accuracy")
    if accuracy is not None and not math.isnan(accuracy):
        return "accuracy", accuracy
    return "cosine", metrics["cosine"]


def quality_latency(report: dict[str, Any]) -> bytes:
    """Each stage's quality against its batch-1 latency: the trade-off a run made, one point per model."""
    from matplotlib.figure import Figure

    points = [("baseline", report["baseline"])] + [(s["name"], s["metrics"]) for s in report["stages"]]
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    label = quality_of(report["baseline"])[0]
    xs = [m["latency_ms"]["batch1_median"] for _, m in points]
    ys = [quality_of(m)[1] for _, m in points]
    axes.plot(xs, ys, marker="o", linestyle=":")
    for (name, _), x, y in zip(points, xs, ys, strict=True):
        axes.annotate(picture(name), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set(xlabel="latency at batch 1 (ms)", ylabel=label, title=f"{label} against latency, per stage")
    axes.grid(alpha=0.3)
    return _png(figure)


def layers(rows: list[dict[str, Any]]) -> bytes:
    """Per-layer sparsity (bars) and bits per weight (points) of the final model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6, 0.25 * len(rows)), 4))
    axes = figure.add_subplot()
    positions = range(len(rows))
    axes.bar(positions, [r["sparsity"] for r in rows], color="tab:blue", label="sparsity")
    axes.set(ylabel="sparsity", ylim=(0, 1), title="final model, per layer")
    axes.set_xticks(list(positions), [picture(r["name"]) for r in rows], rotation=90, fontsize=6)
    bits = axes.twinx()
    bits.plot(list(positions), [r["bits"] for r in rows], "o", color="tab:orange", label="bits per weight")
    bits.set(ylabel="bits per weight", ylim=(0, 34))
    figure.legend(loc="upper right", fontsize=8)
    return _png(figure)


def sensitivity(rows: list[Any]) -> bytes:
    """Layers (rows) by probes (columns), colored by the drop each probe alone caused; blank: not applicable."""
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(label for row in rows for label in row.drops))
    grid = [[row.drops.get(label, math.nan) for label in labels] for row in rows]
    figure = Figure(figsize=(1.2 + 0.9 * len(labels), 1.2 + 0.22 * len(rows)))
    axes = figure.add_subplot()
    image = axes.imshow(grid, aspect="auto", cmap="viridis_r", interpolation="nearest")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    axes.set_yticks(range(len(rows)), [picture(row.name) for row in rows], fontsize=6)
    axes.set_title("drop when one layer alone is compressed", fontsize=9)
    figure.colorbar(image, ax=axes, label="drop")
    return _png(figure)


def tune(trials: list[Any], objective: str, front: list[str]) -> bytes:
    """Each finished trial's objective against its quality; the Pareto front joined by a line."""
    from matplotlib.figure import Figure

    done = [t for t in trials if t.metrics is not None and t.objective is not None]
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for status, color in (("passed", "tab:green"), ("failed", "tab:red")):
        chosen = [t for t in done if t.status == status]
        axes.scatter([t.objective for t in chosen], [quality_of(t.metrics)[1] for t in chosen], c=color, label=status)
    best = sorted((t for t in done if t.label in front), key=lambda t: t.objective)
    axes.plot([t.objective for t in best], [quality_of(t.metrics)[1] for t in best], "k--", lw=0.8, label="Pareto")
    name = quality_of(done[0].metrics)[0] if done else "quality"
    axes.set(xlabel=objective, ylabel=name, title="tune trials")
    axes.legend(fontsize=8)
    return _png(figure)


def trend(reports: list[dict[str, Any]], labels: list[str]) -> bytes:
    """Each metric of the final models across runs (oldest first), one small panel per metric."""
    from matplotlib.figure import Figure

    metrics = [d for d in report_metrics(*reports).values() if d.in_cli]
    shown = [picture(label) for label in labels]
    columns = 3
    figure = Figure(figsize=(4 * columns, 2.6 * math.ceil(len(metrics) / columns)))
    for index, descriptor in enumerate(metrics, start=1):
        axes = figure.add_subplot(math.ceil(len(metrics) / columns), columns, index)
        axes.plot(shown, [descriptor.read(r["final"]) for r in reports], marker="o")
        n = reports[0]["final"].get("latency_ms", {}).get("batch_n", "N")
        axes.set_title(f"{picture(descriptor.label.format(n=n))} ({descriptor.better} is better)", fontsize=9)
        axes.tick_params(axis="x", labelrotation=30, labelsize=7)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def text_bars(rows: list[tuple[str, float]], width: int = 30) -> list[str]:
    """A fallback chart for report.md without matplotlib: one bar of block characters per row (0..1)."""
    longest = max((len(name) for name, _ in rows), default=0)
    return [f"{name.ljust(longest)} {'█' * round(max(0.0, min(1.0, v)) * width)} {v:.1%}" for name, v in rows]
