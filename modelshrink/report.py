"""report.json (a stable schema for machines) and report.md (the same numbers for people).

Schema version 1 — top-level keys: schema_version, version, recipe, recipe_source, environment,
baseline, stages[{name, kind, params, metrics, duration_s, notes}], final, constraints[{name, limit, value,
passed}], findings[str], checkpoint, passed; optional: custom_metrics {name: higher|lower} (the user's
own, `evaluate.metrics`), compared_to, layers. Metrics are `modelshrink.descriptors.Metrics`; the table
shows every metric in `descriptors.METRICS` and the run's own (`report_metrics`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from modelshrink import escape
from modelshrink.compare import environment_warnings, table
from modelshrink.constraints import GateResult, shown
from modelshrink.descriptors import Latency, MetricDescriptor, Metrics, human_bytes, report_metrics, speedup
from modelshrink.environment import HALF_PRECISION_ISA, cpu_summary, environment, usable_cores
from modelshrink.plots import text_bars
from modelshrink.version import __version__

if TYPE_CHECKING:
    from modelshrink.engine import StageResult

SCHEMA_VERSION = 1


class Report(TypedDict):
    """report.json, schema version 1."""

    schema_version: int
    version: str
    recipe: dict[str, Any]
    recipe_source: str | None
    environment: dict[str, Any]
    baseline: Metrics
    stages: list[dict[str, Any]]  # `engine.StageResult.to_json()` of each
    final: Metrics
    constraints: list[GateResult]
    findings: list[str]
    checkpoint: str
    passed: bool
    compared_to: NotRequired[dict[str, Any]]  # {path, final, environment} of the report gated against
    layers: NotRequired[list[dict[str, Any]]]  # the final model's layers: name, type, params, sparsity, bits
    custom_metrics: NotRequired[dict[str, str]]  # the user's metrics: name -> which way is better
    # files for other runtimes: format, quantize, file, size_bytes, source (stage exported), validation
    # (max_abs_error, cosine against that PyTorch model), metrics (measured on the runtime)
    exports: NotRequired[list[dict[str, Any]]]


# A stage or export slower than the original beyond noise gets called out: compressed models that run
# slower than fp32 are a common, silent failure in compression tools. Beyond noise = a speed-up below
# 1/1.1 and a median above the original's own p95.
SLOWDOWN_TOLERANCE = 1.10


def build_report(
    *,
    recipe: dict[str, Any],
    recipe_source: str | None,
    baseline: Metrics,
    stages: Sequence[StageResult],
    constraints: list[GateResult],
    checkpoint: str,
    compared_to: tuple[str, dict[str, Any]] | None = None,
    layers: list[dict[str, Any]] | None = None,
    custom_metrics: dict[str, str] | None = None,
    exports: list[dict[str, Any]] | None = None,
    library_warnings: list[str] | None = None,
) -> Report:
    """`compared_to`: the path and contents of an earlier report this run's final model was gated against;
    `library_warnings`: what libraries warned during the run, a line per distinct warning (`quiet.Notices`)."""
    final = stages[-1].metrics if stages and stages[-1].metrics else baseline
    env = environment()
    report: Report = {
        "schema_version": SCHEMA_VERSION,
        "version": __version__,
        "recipe": recipe,
        "recipe_source": recipe_source,
        "environment": env,
        "baseline": baseline,
        "stages": [stage.to_json() for stage in stages],
        "final": final,
        "constraints": constraints,
        "findings": [],
        "checkpoint": checkpoint,
        "passed": all(c["passed"] for c in constraints),
    }
    report["findings"] += findings(baseline, report["stages"], env.get("cpu_features"), exports or [])
    if layers is not None:
        report["layers"] = layers
    if custom_metrics:
        report["custom_metrics"] = custom_metrics
    for entry in [*report["stages"], *(exports or [])]:
        entry["speedup"] = speedups(baseline["latency_ms"], entry["metrics"]["latency_ms"])
    if exports:
        report["exports"] = exports
    if compared_to is not None:
        path, previous = compared_to
        report["compared_to"] = {
            "path": path,
            "final": previous["final"],
            "environment": previous.get("environment", {}),
        }
        here = {"final": final, "environment": report["environment"]}
        report["findings"] += environment_warnings([previous, here], [path, "this run"])
    report["findings"] += library_warnings or []
    return report


def _half_precision_hint(stage: dict[str, Any], cpu_features: list[str] | None) -> str:
    """Why an fp16/bf16 stage runs slower than fp32: the CPU lacks native arithmetic in that format."""
    mode = stage.get("params", {}).get("mode")
    native = HALF_PRECISION_ISA.get(mode)
    if native is None or cpu_features is None or any(f in cpu_features for f in native):
        return ""
    return f"; {mode} pays off only with {' or '.join(native)}, which this CPU lacks ({' '.join(cpu_features)})"


def speedups(original: Latency | None, latency: Latency | None) -> dict[str, float | None]:
    """report.json's derived `speedup` of a stage or export: original / its median, per batch size (above 1
    is faster), the convention of every table; null where either was not timed."""
    if not original or not latency:
        return {"batch1": None, "batchN": None}
    return {size: speedup(original[f"{size}_median"], latency[f"{size}_median"]) for size in ("batch1", "batchN")}


def findings(
    baseline: dict[str, Any],
    stages: list[dict[str, Any]],
    cpu_features: list[str] | None = None,
    exports: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> list[str]:
    """Plain-language flags a reviewer should not miss: timings that stayed implausible, what the stages
    noted (training that did not help or made the model worse, zeros that do not pay), stages and exports
    slower than the original, comparisons."""
    notes = _timing_findings(baseline, stages, exports)
    for stage in stages:
        stage_notes = stage.get("notes", {})
        notes += _training_findings(stage_notes.get("training", []))
        notes += [f"{stage['name']}: {text}" for text in stage_notes.get("findings", [])]
        notes += _slowdowns(stage["name"], stage["metrics"]["latency_ms"], baseline["latency_ms"], stage, cpu_features)
        notes += _compile_findings(stage)
        compared = stage_notes.get("compare_finetune")
        if compared:
            verdict = "beat" if compared["distillation_won"] else "did NOT beat"
            notes.append(
                f"{stage['name']}: distillation ({compared['distill_accuracy']:.4f}) {verdict} plain "
                f"fine-tuning with the same settings ({compared['finetune_accuracy']:.4f})"
            )
    for export in exports:
        notes += _slowdowns(export["file"], export["metrics"]["latency_ms"], baseline["latency_ms"], {}, cpu_features)
    return notes


def _slowdowns(
    name: str, latency: Latency, original: Latency, stage: dict[str, Any], cpu_features: list[str] | None
) -> list[str]:
    notes = []
    for size, label in (("batch1", "batch 1"), ("batchN", f"batch {original.get('batch_n', 'N')}")):
        median = latency[f"{size}_median"]  # type: ignore[literal-required]
        faster = speedup(original[f"{size}_median"], median)  # type: ignore[literal-required]
        if faster * SLOWDOWN_TOLERANCE < 1 and median > original[f"{size}_p95"]:  # type: ignore[literal-required]
            why = _half_precision_hint(stage, cpu_features)
            notes.append(f"{name}: {label} speed-up {faster:.2f}x: slower than the original model{why}")
    return notes


def _timing_findings(
    baseline: dict[str, Any], stages: list[dict[str, Any]], exports: list[dict[str, Any]]
) -> list[str]:
    """Latencies still implausible after re-measuring (`metrics.latency`), and re-measurements that helped."""
    timed = [
        ("baseline", baseline),
        *((s["name"], s["metrics"]) for s in stages),
        *((e["file"], e["metrics"]) for e in exports),
    ]
    notes = []
    for name, metrics in timed:
        latency = metrics.get("latency_ms") or {}
        if latency.get("isolation"):
            notes.append(f"{name}: {latency['isolation']}; its latency may be disturbed by PyTorch's threads")
        if latency.get("warnings"):
            notes.append(
                f"{name}: latency implausible after {latency.get('attempts', 1)} measurement(s) "
                f"({'; '.join(latency['warnings'])}): treat its times as noise; another process may be using the "
                "CPU (evaluate.latency.threads below the idle cores steadies them)"
            )
    threads, cores = (baseline.get("latency_ms") or {}).get("threads"), usable_cores()
    if threads and threads > cores:
        notes.append(
            f"latency measured with {threads} threads on {cores} usable cores: the threads take turns, so times "
            f"rise and vary; set evaluate.latency.threads to at most {cores}"
        )
    attempts = (baseline.get("latency_ms") or {}).get("attempts", 1)
    if attempts > 1 and not notes:
        why = [f"{name}: {'; '.join(m['latency_ms']['remeasured'])}" for name, m in timed
               if (m.get("latency_ms") or {}).get("remeasured")]  # fmt: skip
        notes.append(f"latency measured {attempts} times: the first measurement was implausible ({'; '.join(why)})")
    return notes


def _compile_findings(stage: dict[str, Any]) -> list[str]:
    latency = stage["metrics"]["latency_ms"]
    if "compile_s" not in latency:
        return []
    return [
        f"{stage['name']}: compiling took {latency['compile_s']:.1f} s over {latency['compiles']} call(s) in this "
        "run (once per process and new input shape), apart from the latency above"
    ]


def _training_findings(runs: list[dict[str, Any]]) -> list[str]:
    return [
        f"{run['label']}: no epoch of training beat the starting weights on the tuning split "
        f"(accuracy {run['start']['accuracy']:.4f}), so they were kept: training did not help; "
        "try a lower lr, or more epochs or data"
        for run in runs
        if run["start"] is not None and run["kept_epoch"] == 0 and run["epochs_run"] > 0
    ]


# --------------------------------------------------------------------------------------------- markdown
def to_markdown(report: dict[str, Any], images: Collection[str] = ()) -> str:
    """`images`: the names of the pictures written beside it (`report_files`); text charts without them.
    Every string from the recipe, the model or an earlier report goes through `escape.markdown` (`md`):
    a name must not break a table row or become a link, HTML or code on GitHub or in report.html."""
    md = escape.markdown
    base = report["baseline"]
    title = report["recipe"].get("name") or report.get("recipe_source") or "modelshrink run"
    lines = [
        f"# {md(title)}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}** · modelshrink {md(report['version'])}",
        "",
        f"Machine: {md(cpu_summary(report['environment']))}; latency with {base['latency_ms']['threads']} threads",
        "",
    ]
    n = base["latency_ms"]["batch_n"]
    metrics = list(report_metrics(report).values())
    lines += [
        "| stage | " + " | ".join(md(d.label.format(n=n)) for d in metrics) + " | time (s) |",
        "|---" * (len(metrics) + 2) + "|",
        _row("baseline", base, base, None, metrics),
    ]
    lines += [
        _row(md(f"{s['name']} ({s['kind']})"), s["metrics"], base, s["duration_s"], metrics) for s in report["stages"]
    ]
    if report.get("exports"):
        lines += ["", "## Exports (each measured on its own runtime)", ""]
        lines += ["| export | " + " | ".join(md(d.label.format(n=n)) for d in metrics) + " | vs PyTorch: max error |"]
        lines += ["|---" * (len(metrics) + 2) + "|"]
        for e in report["exports"]:
            how = md(f"{' '.join(filter(None, (e['format'], e['quantize'])))}, from {e['source']}")
            label = f"{escape.code(e['file'])} ({how})"
            row = _row(label, e["metrics"], base, 0.0, metrics)  # its last cell, the stage time, is replaced
            lines.append(f"{row.rsplit('|', 2)[0]}| {e['validation']['max_abs_error']:.2g} |")
        lines += [""] + [f"- {escape.code(e['file'])}: {md(n)}" for e in report["exports"] for n in e.get("notes", [])]
    lines += _outputs_table(report)
    if report["constraints"]:
        lines += ["", "## Constraints", "", "| constraint | limit | value | result |", "|---|---|---|---|"]
        lines += [
            f"| {md(c['name'])} | {shown(c['name'], c['limit'])} | {shown(c['name'], c['value'])} | "
            f"{'pass' if c['passed'] else '**FAIL**'} |"
            for c in report["constraints"]
        ]
    if "compared_to" in report:
        against = report["compared_to"]
        lines += ["", f"## Against {md(against['path'])}", "", "| metric | earlier | this run |", "|---|---|---|"]
        lines += ["| " + " | ".join(map(md, row)) + " |" for row in table([against, report], ["earlier", "this run"])]
    if report["findings"]:
        lines += ["", "## Findings", ""] + [f"- {md(note)}" for note in report["findings"]]
    lines += _pictures(report, images)
    lines += [
        "",
        f"Checkpoint: {escape.code(report['checkpoint'])} · deltas are against the baseline: accuracy in "
        "points, latency as a speed-up (original / stage, above 1 is faster), the rest as stage / original "
        "· cosine: mean cosine similarity of the outputs to the original model's (the worst output's, for a "
        "model with several).",
        "",
    ]
    return "\n".join(lines)


def _outputs_table(report: dict[str, Any]) -> list[str]:
    """A model with several outputs: each output's cosine to the original's, per stage and export."""
    names = list(report["baseline"].get("outputs") or {})
    if not names:
        return []
    md = escape.markdown
    rows = [(md(s["name"]), s["metrics"]) for s in report["stages"]]
    rows += [(escape.code(e["file"]), e["metrics"]) for e in report.get("exports") or []]
    lines = ["", "## Outputs (cosine to the original model's, per output)", ""]
    lines += ["| model | " + " | ".join(md(name) for name in names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, metrics in rows:
        each = metrics.get("outputs") or {}
        lines.append(f"| {label} | " + " | ".join(_number(each.get(n, {}).get("cosine")) for n in names) + " |")
    return lines


def _number(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _pictures(report: dict[str, Any], images: Collection[str]) -> list[str]:
    if images:
        return ["", "## Pictures", ""] + [
            f"![{name.removesuffix('.png').replace('_', ' ')}]({name})" for name in images
        ]
    layers = report.get("layers") or []
    if not layers:
        return []
    # inside a code block nothing renders, but a line break could end the block: one line per layer
    bars = text_bars([(escape.text(f"{row['name']} ({row['bits']}-bit, {_stored(row)})", newlines=False),
                       row["sparsity"]) for row in layers])  # fmt: skip
    hint = "(`pip install modelshrink[plots]` draws pictures here)"
    return ["", "## Sparsity per layer", "", hint, "", *escape.code_block("\n".join(bars))]


def _stored(layer: dict[str, Any]) -> str:
    """The weight's bytes in model.pt, and its dense bytes where sparse storage made it smaller."""
    stored, dense = layer.get("stored_bytes"), layer.get("bytes")
    if stored is None or dense is None:  # a report written before sparse storage
        return "size n/a"
    return human_bytes(stored) + (f" of {human_bytes(dense)}" if stored < dense else "")


def _row(label: str, m: Metrics, base: Metrics, duration: float | None, metrics: list[MetricDescriptor]) -> str:
    """A stage's value of every metric, with its change against the baseline (not on the baseline's row)."""
    cells = [label]
    for d in metrics:
        value = d.show(d.read(m))
        change = d.compared(d.read(m), d.read(base)) if duration is not None else ""
        cells.append(f"{value} ({change})" if change else value)
    cells.append("" if duration is None else f"{duration:.1f}")
    return "| " + " | ".join(cells) + " |"


def to_json(report: dict[str, Any]) -> str:
    """Strict JSON: an undefined number (NaN, e.g. the loss of a head for other classes) becomes null."""
    return escape.strict_json(report, indent=2, default=str) + "\n"
