"""Running `tune`'s candidates in memory: one model, data and baseline for all, stage prefixes cached.

Candidates that share their first stages (the same fine-tuning before different pruning amounts)
reuse the model those stages made. Each stage starts from the random state a `run` of that candidate
would be in (the state after the baseline, or after the cached prefix), so the winner's run in best/
reproduces its trial. A candidate is dropped as soon as it cannot pass: when a quality
gate fails after a stage and no later stage trains (pruning and quantization do not win quality
back). Latency is timed side by side with the original model for each finished candidate, so a
latency gate compares two numbers from the same moment.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from modelshrink.constraints import GateResult, check_constraints, gates
from modelshrink.data.bundle import DataBundle
from modelshrink.descriptors import Metrics
from modelshrink.engine import run_stage
from modelshrink.lineage import Lineage
from modelshrink.loading import load_model
from modelshrink.metrics import Reference, add_latencies
from modelshrink.progress import log
from modelshrink.recipe.recipe import Recipe
from modelshrink.resume import restore_rng, rng_state
from modelshrink.stages import StageContext

# what each objective minimizes, read from a finished candidate's metrics (latency: as a ratio to the
# original model's, timed side by side in the same trial)
OBJECTIVES = {
    "latency_b1": lambda m: m["latency_ms"]["batch1_median"],
    "latency_bn": lambda m: m["latency_ms"]["batchN_median"],
    "size": lambda m: m["size_bytes"],
    "macs": lambda m: m["macs"],
}


# What a stage may have chosen by timing for an `auto` key (`StageNotes.resolved`: quantize/compiling.py,
# quantize/fx.py, quantize/dynamic.py, optimize.py): the only keys `pin_resolved` may write into tuned.yaml.
ResolvedKey = Literal["compile", "backend", "activations", "smoothing", "channels_last"]
Resolved = dict[Annotated[str, Field(pattern=r"^[0-9]{1,4}$")], dict[ResolvedKey, bool | float | str]]


@dataclass
class Trial:
    label: str
    choice: dict[str, Any]  # path -> value, as the recipe spells the path
    status: str  # passed | failed | dropped
    gates: list[GateResult] = field(default_factory=list)
    metrics: Metrics | None = None
    objective: float | None = None
    note: str = ""
    original_latency_ms: dict[str, Any] | None = None  # the original model's, timed beside this candidate
    resolved: Resolved = field(default_factory=dict)  # stage index -> what its `auto`s chose

    @property
    def violation(self) -> float:
        """How far the failed gates are from their limits, relative to the limits (0 when it passed;
        infinite for a candidate that could not run)."""
        if self.metrics is None:
            return math.inf
        return sum(abs(g["value"] - g["limit"]) / max(abs(g["limit"]), 1e-9) for g in self.gates if not g["passed"])


class _Gate(BaseModel):
    name: str
    limit: float
    value: float  # NaN (written as null) for a gate on a metric that was not measured
    passed: bool

    @field_validator("limit", "value", mode="before")
    @classmethod
    def _unmeasured(cls, value: Any) -> Any:
        return math.nan if value is None else value


class _TrialRecord(BaseModel):
    """A `Trial` as trials.json holds it: strict JSON (`tune._json`), an unmeasured gate's NaN as null."""

    label: str
    choice: dict[str, Any]
    status: Literal["passed", "failed", "dropped"]
    gates: list[_Gate] = []
    metrics: dict[str, Any] | None = None
    objective: Annotated[float, Field(allow_inf_nan=False)] | None = None
    note: str = ""
    original_latency_ms: dict[str, Any] | None = None
    resolved: Resolved = {}


class _TrialsFile(BaseModel):
    """trials.json as `tune --resume` reads it back: the trials, each typed (the rest is rewritten)."""

    model_config = ConfigDict(extra="ignore")
    trials: list[_TrialRecord]


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON knows (trials.json is written as strict JSON)")


def read_trials(data: bytes) -> list[Trial]:
    """The trials of an earlier search's trials.json; ValueError naming the first problem of a damaged one."""
    try:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    try:
        records = _TrialsFile.model_validate(value).trials
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"{where}: {error['msg']}") from None
    return [Trial(**record.model_dump()) for record in records]


@dataclass
class StageOutcome:
    """What one stage of a candidate made; candidates with the same stages so far reuse it."""

    model: nn.Module
    lineage: Lineage
    metrics: Metrics
    rng: dict[str, Any]  # the random state after the stage
    resolved: dict[str, Any]  # the stage's `auto` keys and what it chose for them (`StageNotes.resolved`)


@dataclass
class Shared:
    """What every candidate starts from."""

    model: nn.Module
    lineage: Lineage
    data: DataBundle
    baseline: Metrics
    reference: Reference
    rng: dict[str, Any]  # the random state after the baseline, as `run` saves it
    prefixes: dict[str, StageOutcome] = field(default_factory=dict)


def run_candidate(shared: Shared, recipe: Recipe, stages_raw: list[Any], label: str, choice: dict[str, Any],
                  objective: str) -> Trial:  # fmt: skip
    # compiled models of earlier candidates share dynamo's cache for the wrappers' forward code; past its
    # limit of 8 entries a new model runs eager (measured: a tuned int8 ResNet-18 at 3.0 ms instead of 0.9
    # ms at batch 1), so each candidate starts with an empty cache as a run does
    torch._dynamo.reset()
    model, lineage, metrics, rng = shared.model, shared.lineage, shared.baseline, shared.rng
    resolved: dict[str, dict[str, Any]] = {}
    names = recipe.stage_names()
    quality_gates = [gate for gate in gates(recipe.constraints) if not gate.metric.name.startswith("latency")]
    for index, (spec, name) in enumerate(zip(recipe.stages, names, strict=True)):
        key = json.dumps(stages_raw[: index + 1], sort_keys=True, default=str)
        if key not in shared.prefixes:
            shared.prefixes[key] = _run_stage(shared, recipe, spec, name, model, lineage, metrics, rng)
        made = shared.prefixes[key]
        model, lineage, metrics, rng = made.model, made.lineage, made.metrics, made.rng
        if made.resolved:
            resolved[str(index)] = made.resolved
        failed = [gate.check(shared.baseline, metrics) for gate in quality_gates]
        failed = [g for g in failed if not g["passed"]]
        trains_later = any(later.training is not None for later in recipe.stages[index + 1 :])
        if failed and not trains_later:
            log(f"tune {label}: dropped after {name} ({failed[0]['name']} {failed[0]['value']:.4g})")
            return Trial(label, choice, "dropped", failed, metrics, note=f"dropped after {name}", resolved=resolved)
    final = copy.deepcopy(metrics)
    baseline = copy.deepcopy(shared.baseline)
    add_latencies([shared.model, model], [baseline, final], shared.data, recipe.evaluate)
    results = check_constraints(recipe.constraints, baseline, final)
    passed = all(r["passed"] for r in results)
    value = OBJECTIVES[objective](final)
    if objective.startswith("latency"):  # against the original timed beside it: drift between trials cancels
        value /= OBJECTIVES[objective](baseline)
    log(f"tune {label}: {'passes' if passed else 'fails'}, {objective} {value:.4g}")
    status = "passed" if passed else "failed"
    return Trial(label, choice, status, results, final, value, original_latency_ms=baseline["latency_ms"],
                 resolved=resolved)  # fmt: skip


def _run_stage(shared: Shared, recipe: Recipe, spec: Any, name: str, model: nn.Module, lineage: Lineage,
               metrics: Metrics, rng: dict[str, Any]) -> StageOutcome:  # fmt: skip
    """One stage on a copy of what the stages before it made, from the random state they left."""
    model, lineage = copy.deepcopy(model), copy.deepcopy(lineage)
    restore_rng(rng, shared.data.train.generator)
    ctx = StageContext(
        data=shared.data, original_model=shared.model, lineage=lineage, evaluate=recipe.evaluate,
        seed=recipe.seed, load_model=load_model,
    )  # fmt: skip
    model, result = run_stage(model, spec, name, ctx, shared.reference, metrics)
    notes = ctx.notes_for(name)
    return StageOutcome(model, lineage, result.metrics, rng_state(shared.data.train.generator), notes.resolved)
