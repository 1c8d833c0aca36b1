"""`modelshrink analyze RECIPE`: per-layer sensitivity of the recipe's model on its calibration data,
written as sensitivity.json, sensitivity.md and (with the plots extra) sensitivity.png, with the
`layer_amounts` and `exclude` lists it suggests (issue #15).

What is analyzed is the model as the recipe's first compressing stage would get it: the recipe's
leading training-only stages (a `finetune` that trains a bundled model from scratch) run first, in
memory through `compress`. Every probe then runs on a copy of that model (`analyze.probe`) and is
scored on calibration batches, never the validation split. A recipe written for `tune` is read with
each search space at its first value (spaces sit in the compressing stages, which analyze probes instead
of running). A time budget bounds the work, spent on every layer coarsely before refining
(`analyze.probe`): layers it did not reach are listed as not measured (or not refined), and what was
measured is still written.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from modelshrink import engine, escape, outputs, plots
from modelshrink.analyze.probe import RATIOS, LayerSensitivity, layers, sensitivities
from modelshrink.analyze.suggest import suggestions
from modelshrink.data import build_data
from modelshrink.errors import UserError
from modelshrink.loading import load_model
from modelshrink.progress import log
from modelshrink.recipe.recipe import Recipe
from modelshrink.recipe.search import load_first_candidate
from modelshrink.recipe.stage_specs import needs_tuning_split

__all__ = ["analyze"]


def analyze(
    recipe_path: Path,
    out_dir: Path | None = None,
    *,
    overrides: Sequence[str] = (),
    trust: Sequence[str] = (),
    budget_s: float = 600.0,
    batches: int = 4,
    max_drop: float = 0.01,
    ratios: Sequence[float] = RATIOS,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Measure, suggest and write into `out_dir` (default: `<output.dir>_sensitivity`, beside the recipe's
    run directory); returns that directory and what sensitivity.json holds."""
    recipe = load_first_candidate(recipe_path, overrides).trusting(trust)
    out_dir = out_dir or recipe.output.dir.with_name(f"{recipe.output.dir.name}_sensitivity")
    target = outputs.analysis_directory(out_dir)
    with outputs.claim([target], recipe.inputs(recipe_path), force=force) as claim:
        result, files = _analyze(recipe, recipe_path, budget_s, batches, max_drop, ratios)
        claim.write({out_dir: files}, replace=force)
    return out_dir, result


def _analyze(
    recipe: Recipe, recipe_path: Path, budget_s: float, batches: int, max_drop: float, ratios: Sequence[float]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    model, lineage = load_model(recipe.model)
    training = list(itertools.takewhile(lambda spec: spec.only_trains, recipe.stages))
    data = build_data(recipe.data, recipe.seed, recipe.model, tuning_split=needs_tuning_split(training))
    engine.start(model, lineage, data, recipe.evaluate, recipe.stages, measure=False)  # the checks every command runs
    if training:
        log(f"analyze: first training as the recipe's {', '.join(recipe.stage_names()[: len(training)])} does")
        model = engine.compress(model, training, data=data, evaluate=recipe.evaluate, seed=recipe.seed).model
    names = [name for name, _ in layers(model)]
    if not names:
        raise UserError(
            "analyze: the model has no convolution or linear layer, the layers pruning and quantization change: "
            "nothing to measure"
        )
    probe_batches = list(data.calibration_inputs(batches))  # the data may hold fewer than asked for
    start = time.perf_counter()
    rows: dict[str, LayerSensitivity] = {}
    refined: list[str] = []
    measured = sensitivities(model, data, recipe, probe_batches=probe_batches, ratios=ratios, budget_s=budget_s)
    for row, stage, spent in measured:
        rows[row.name] = row
        done = refined if stage == "refined" else list(rows)
        if stage == "refined":
            refined.append(row.name)
        worst = max(row.drops.values(), default=0.0)
        log(f"analyze ({stage}) {len(done)}/{len(names)} {row.name}: worst drop {worst:.4f} ({spent:.0f} s)")
    single_ratio = len(set(ratios)) == 1
    unrefined = [] if single_ratio else [name for name in rows if name not in refined]
    result = {
        "recipe": str(recipe_path),
        "trained_first": recipe.stage_names()[: len(training)],
        "metric": "drop = 1 - (top-1 agreement, or mean cosine) with the original model's outputs",
        "batches": len(probe_batches),
        "max_drop": max_drop,
        "budget_s": budget_s,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "not_measured": [name for name in names if name not in rows],
        # measured at the middle ratio only: the budget ran out before the other ratios reached them
        "not_refined": unrefined,
        "layers": [asdict(row) for row in rows.values()],
        "suggestions": suggestions(list(rows.values()), max_drop, unrefined),
    }
    files = {"sensitivity.json": (json.dumps(result, indent=2) + "\n").encode(), "sensitivity.md": b""}
    if plots.available() and rows:
        files["sensitivity.png"] = plots.sensitivity(list(rows.values()))
    files["sensitivity.md"] = markdown(result, picture="sensitivity.png" in files).encode()
    return result, files


SHOWN = 20  # names a list in sensitivity.md shows before saying how many more sensitivity.json has


def listed(names: list[str]) -> str:
    """Names as code, the first `SHOWN`, then how many were left out (sensitivity.json has them all)."""
    more = f" and {len(names) - SHOWN} more (sensitivity.json lists them all)" if len(names) > SHOWN else ""
    return ", ".join(map(escape.code, names[:SHOWN])) + more


def markdown(result: dict[str, Any], picture: bool) -> str:
    """sensitivity.md. Layer and type names come from the model: `escape` keeps each in its cell, as
    code or text, and the suggested YAML in a fence no name can close."""
    md = escape.markdown
    rows = result["layers"]
    labels = list(dict.fromkeys(label for row in rows for label in (*row["drops"], *row["skipped"])))
    lines = [
        "# Sensitivity",
        "",
        f"{result['metric']}, on {result['batches']} calibration batches; each layer compressed alone "
        f"({result['elapsed_s']} s). `-`: the method cannot touch that layer.",
        "",
        "| layer | type | params | " + " | ".join(map(md, labels)) + " |",
        "|---|---|---|" + "---|" * len(labels),
    ]
    for row in rows:
        cells = [escape.code(row["name"]), md(row["type"]), f"{row['params']:,}"]
        cells += [f"{row['drops'][label]:.4f}" if label in row["drops"] else "-" for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    for key, what in (("not_measured", "Not measured"), ("not_refined", "Measured at the middle ratio only")):
        if result.get(key):
            lines += ["", f"{what} (time budget of {result['budget_s']:g} s spent): {listed(result[key])}"]
    if picture:
        lines += ["", "![sensitivity](sensitivity.png)"]
    suggested = result["suggestions"]
    pruning = [{"kind": "prune", **suggested["prune"]}] if suggested["prune"].get("amount") is not None else []
    snippet = [*pruning, {"kind": "quantize", "mode": "static", "exclude": suggested["quantize"]["exclude"]}]
    lines += [
        "",
        f"## Suggested (each layer's drop alone within {result['max_drop']:g})",
        "",
        "Drops add up when layers are combined: start from these, and let the recipe's constraints decide.",
        *([] if pruning else ["", "No channel ratio kept any measured layer within the drop: no prune stage."]),
        "",
        *escape.code_block(yaml.safe_dump({"stages": snippet}, sort_keys=False).rstrip(), "yaml"),
    ]
    if suggested["int4_fits"]:
        lines += ["", "int4 weights fit within the drop: " + ", ".join(map(escape.code, suggested["int4_fits"]))]
    return "\n".join(lines) + "\n"
