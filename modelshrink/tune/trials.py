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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, Field, StrictFloat, StrictInt, ValidationError, field_validator

from modelshrink import escape
from modelshrink.constraints import GateResult, check_constraints, gates
from modelshrink.data.bundle import DataBundle
from modelshrink.descriptors import Metrics
from modelshrink.engine import Baseline, Progress, StageHooks, run_stages
from modelshrink.errors import UserError
from modelshrink.export.measure import ExportResult, export_all
from modelshrink.loading import load_model
from modelshrink.metrics import add_latencies
from modelshrink.progress import log
from modelshrink.recipe.recipe import Recipe
from modelshrink.recipe.stage_specs import BaseStageSpec, Measure
from modelshrink.resume import restore_rng, rng_state
from modelshrink.stages import StageContext

# what each objective minimizes, read from a finished candidate's metrics and the original model's (latency:
# as a ratio to the original's, timed side by side in the same trial, so drift between trials cancels). An
# objective `FILE:NAME` reads the same from the metrics of the recipe's export that writes FILE (e.g.
# `model.int8.xml:latency_b1`, the OpenVINO int8 IR's batch-1 latency), exported and timed in each trial.
OBJECTIVES: dict[str, Callable[[Metrics, Metrics], float]] = {
    "latency_b1": lambda m, o: m["latency_ms"]["batch1_median"] / o["latency_ms"]["batch1_median"],
    "latency_bn": lambda m, o: m["latency_ms"]["batchN_median"] / o["latency_ms"]["batchN_median"],
    "size": lambda m, o: m["size_bytes"],
    "macs": lambda m, o: m["macs"],
    "accuracy_drop": lambda m, o: o["accuracy"] - m["accuracy"],
}


# what each objective measures of the PyTorch model (`BaseStageSpec.may_change`): once no later stage may change
# it, a candidate's value is known before its later stages run; accuracy_drop and an export's objectives are
# known only when the candidate ends
SETTLES_ON: dict[str, Measure] = {"latency_b1": "latency", "latency_bn": "latency", "size": "size", "macs": "macs"}


def settled(stages: Sequence[BaseStageSpec], index: int, objectives: Sequence[str]) -> bool:
    """Whether every objective is known once stage `index` ran, with stages left to run (so to skip)."""
    later = stages[index + 1 :]
    return bool(later) and all(
        name in SETTLES_ON and not any(stage.may_change(SETTLES_ON[name]) for stage in later) for name in objectives
    )


def export_file(objective: str) -> str | None:
    """The export file an objective names (`model.int8.xml:latency_b1`), or None for the PyTorch model's."""
    return objective.rpartition(":")[0] or None


# What a stage may have chosen by timing for an `auto` key (`StageNotes.resolved`: quantize/compiling.py,
# quantize/fx.py, quantize/dynamic.py, optimize.py): the only keys `pin_resolved` may write into tuned.yaml.
ResolvedKey = Literal["compile", "backend", "activations", "smoothing", "channels_last"]
Resolved = dict[Annotated[str, Field(pattern=r"^[0-9]{1,4}$")], dict[ResolvedKey, bool | float | str]]


@dataclass
class Trial:
    label: str
    choice: dict[str, Any]  # path -> value, as the recipe spells the path
    status: str  # passed | failed | dropped | pruned | lost (its worker stopped)
    gates: list[GateResult] = field(default_factory=list)
    metrics: Metrics | None = None
    objective: float | None = None  # the first objective's value
    values: list[float] | None = None  # every objective's, in --objective order
    note: str = ""
    original_latency_ms: dict[str, Any] | None = None  # the original model's, timed beside this candidate
    resolved: Resolved = field(default_factory=dict)  # stage index -> what its `auto`s chose
    exports: dict[str, Any] = field(default_factory=dict)  # file -> its metrics, for an objective on an export

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
    status: Literal["passed", "failed", "dropped", "pruned", "lost"]
    gates: list[_Gate] = []
    # a measure is a number (null: not measured), or a group of them (latency_ms, custom): never a string
    metrics: dict[str, StrictInt | StrictFloat | dict[str, Any] | None] | None = None
    objective: Annotated[float, Field(allow_inf_nan=False)] | None = None
    values: list[Annotated[float, Field(allow_inf_nan=False)]] | None = None
    note: str = ""
    original_latency_ms: dict[str, Any] | None = None
    resolved: Resolved = {}
    exports: dict[str, dict[str, Any]] = {}


def read_record(value: Any) -> Trial:
    """A trial's record as a storage holds it (user attribute `record`, written by `record_of`): someone's
    data, typed here; ValueError naming the first problem."""
    try:
        record = _TrialRecord.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["loc"][0] == "metrics" and len(error["loc"]) > 2:  # past the key: which member of the union
            raise ValueError(f"metrics.{error['loc'][1]}: not a number, null or a group of numbers") from None
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"{where}: {error['msg']}") from None
    return Trial(**record.model_dump())


def record_of(trial: Trial) -> dict[str, Any]:
    """The record as JSON values (an unmeasured metric's NaN as null), which every Optuna storage keeps."""
    return json.loads(escape.strict_json(asdict(trial), default=str))


@dataclass
class Shared:
    """What every candidate starts from."""

    baseline: Baseline
    data: DataBundle
    rng: dict[str, Any]  # the random state after the baseline, as `run` saves it
    # what candidates' shared stage prefixes made, and the random state after them
    prefixes: dict[str, tuple[Progress, dict[str, Any], list[dict[str, float]]]] = field(default_factory=dict)


ScoreHook = Callable[[dict[str, float]], None]
SettledHook = Callable[[Callable[[], list[float]], str], None]


def run_candidate(shared: Shared, recipe: Recipe, stages_raw: list[Any], label: str, choice: dict[str, Any],
                  objectives: Sequence[str], on_score: ScoreHook | None = None, on_settled: SettledHook | None = None
                  ) -> Trial:  # fmt: skip
    """Run one candidate's stages and judge it; `on_score` hears each training epoch's selection score
    (replayed for epochs a cached prefix ran), `on_settled` each stage's name after which the objectives are
    settled (`settled`) with a function that measures them (once; timing costs seconds); either may raise
    to stop the candidate."""
    # compiled models of earlier candidates share dynamo's cache for the wrappers' forward code; past its
    # limit of 8 entries a new model runs eager (measured: a tuned int8 ResNet-18 at 3.0 ms instead of 0.9
    # ms at batch 1), so each candidate starts with an empty cache as a run does
    torch._dynamo.reset()
    baseline = shared.baseline
    assert baseline.metrics is not None
    hooks = _SharedPrefixes(shared, recipe, stages_raw, on_score, _Settled(shared, recipe, objectives, on_settled))
    ctx = StageContext(
        data=shared.data, original_model=baseline.model, lineage=baseline.lineage, evaluate=recipe.evaluate,
        seed=recipe.seed, load_model=load_model, on_epoch_score=hooks.score,
    )  # fmt: skip
    done = run_stages(Progress(baseline.model, baseline.lineage), recipe.stages, ctx, baseline, hooks)
    resolved = {str(i): r.notes.resolved for i, r in enumerate(done.results) if r.notes.resolved}
    metrics = done.latest(baseline.metrics)
    assert metrics is not None
    if hooks.dropped:
        failed, name = hooks.dropped
        log(f"tune {label}: dropped after {name} ({failed[0]['name']} {failed[0]['value']:.4g})")
        return Trial(label, choice, "dropped", failed, metrics, note=f"dropped after {name}", resolved=resolved)
    final, original = copy.deepcopy(metrics), copy.deepcopy(baseline.metrics)
    exports = _exports(shared, recipe, hooks, done, objectives)
    if any(name.rpartition(":")[2].startswith("latency") for name in objectives) or _gates_latency(recipe):
        runtimes = [e.exported.runtime for e in exports]
        _timed(shared, recipe, [done.model, *runtimes], [original, final, *(e.metrics for e in exports)])
    results = check_constraints(recipe.constraints, original, final)
    results += [result for e in exports for result in e.check_constraints(original)]
    passed = all(r["passed"] for r in results)
    by_file = {e.exported.spec.file_name: e.metrics for e in exports}
    values = objective_values(objectives, final, original, by_file)
    shown = ", ".join(f"{name} {value:.4g}" for name, value in zip(objectives, values, strict=True))
    log(f"tune {label}: {'passes' if passed else 'fails'}, {shown}")
    return Trial(label, choice, "passed" if passed else "failed", results, final, values[0], values,
                 original_latency_ms=original.get("latency_ms"), resolved=resolved, exports=by_file)  # fmt: skip


def objective_values(objectives: Sequence[str], final: Metrics, original: Metrics,
                     by_file: dict[str, Metrics] | None = None) -> list[float]:  # fmt: skip
    """Each objective's value from a candidate's metrics (an export's, for `FILE:NAME`) and the original's."""
    try:
        return [float(OBJECTIVES[name.rpartition(":")[2]]((by_file or {}).get(export_file(name), final), original))
                for name in objectives]  # fmt: skip
    except KeyError as exc:
        raise UserError(f"--objective: this model's metrics have no {exc}") from None


def _timed(shared: Shared, recipe: Recipe, models: Sequence[torch.nn.Module], metrics: Sequence[Metrics]) -> None:
    """The original model and `models` timed side by side, each time added to its `metrics`."""
    add_latencies([shared.baseline.model, *models], list(metrics), shared.data, recipe.evaluate)


class _Settled:
    """Tells `on_settled` after each stage past which a candidate's objectives cannot change, with a function
    that measures them on what that stage made (timed beside the original, as a finished candidate is)."""

    def __init__(self, shared: Shared, recipe: Recipe, objectives: Sequence[str], hook: SettledHook | None):
        self.shared, self.recipe, self.objectives, self.hook = shared, recipe, objectives, hook
        self.values: list[float] | None = None

    def __call__(self, index: int, progress: Progress) -> None:
        if self.hook is None or not settled(self.recipe.stages, index, self.objectives):
            return

        def measured() -> list[float]:
            if self.values is None:
                original = copy.deepcopy(self.shared.baseline.metrics)
                current = copy.deepcopy(progress.results[-1].metrics)
                if any(SETTLES_ON[name] == "latency" for name in self.objectives):
                    _timed(self.shared, self.recipe, [progress.model], [original, current])
                self.values = objective_values(self.objectives, current, original)
            return self.values

        self.hook(measured, progress.results[-1].name)


def _exports(shared: Shared, recipe: Recipe, hooks: _SharedPrefixes, done: Progress, objectives: Sequence[str]
             ) -> list[ExportResult]:  # fmt: skip
    """The exports an objective names, with those that have gates of their own, made and measured as `run`
    makes them: each from the model after the stages its spec says (the cached prefixes hold those)."""
    named = {export_file(name) for name in objectives} - {None}
    if not named:
        return []
    specs = [spec for spec in recipe.export if spec.file_name in named or spec.constraints]
    baseline = shared.baseline
    assert baseline.metrics is not None and baseline.reference is not None
    models = [baseline.model, *(hooks.made(i).model for i in range(len(done.results) - 1)), done.model]
    measured = [baseline.metrics, *(r.metrics for r in done.results)]
    return export_all(recipe.model_copy(update={"export": specs}), models, measured, shared.data, baseline.reference)


def _gates_latency(recipe: Recipe) -> bool:
    return any(gate.metric.name.startswith("latency") for gate in gates(recipe.constraints))


class _SharedPrefixes(StageHooks):
    """A candidate's stages in the engine's loop: a stage prefix another candidate already ran is reused;
    a new stage runs on a copy of what the stages before it made, from the random state they left (so a
    prefix stays as it was for the next candidate); and the candidate is dropped as soon as a quality gate
    fails with no training stage left to win quality back."""

    def __init__(self, shared: Shared, recipe: Recipe, stages_raw: list[Any], on_score: ScoreHook | None,
                 on_settled: _Settled):  # fmt: skip
        self.shared, self.recipe, self.stages_raw, self.on_score = shared, recipe, stages_raw, on_score
        self.on_settled = on_settled
        self.rng = shared.rng
        self.scores: list[dict[str, float]] = []  # this candidate's epoch scores so far, a prefix's included
        self.gates = [gate for gate in gates(recipe.constraints) if not gate.metric.name.startswith("latency")]
        self.dropped: tuple[list[GateResult], str] | None = None

    def _key(self, index: int) -> str:
        return json.dumps(self.stages_raw[: index + 1], sort_keys=True, default=str)

    def reuse(self, index: int, progress: Progress) -> Progress | None:
        made = self.shared.prefixes.get(self._key(index))
        if made is None:
            return None
        progress, self.rng, scores = made
        for score in scores[len(self.scores) :]:  # the epochs that prefix trained, as if run here
            self.score(score)
        return progress

    def made(self, index: int) -> Progress:
        """What this candidate's stages up to `index` made (cached as a prefix when the stage finished)."""
        return self.shared.prefixes[self._key(index)][0]

    def score(self, score: dict[str, float]) -> None:
        self.scores.append(score)
        if self.on_score is not None:
            self.on_score(score)

    def before(self, index: int, progress: Progress) -> Progress:
        restore_rng(self.rng, self.shared.data.train.generator)
        return Progress(copy.deepcopy(progress.model), copy.deepcopy(progress.lineage), progress.results)

    def after(self, index: int, progress: Progress) -> bool:
        key = self._key(index)
        if key not in self.shared.prefixes:
            self.rng = rng_state(self.shared.data.train.generator)
            self.shared.prefixes[key] = (progress, self.rng, list(self.scores))
        metrics = progress.results[-1].metrics
        failed = [
            g for g in (gate.check(self.shared.baseline.metrics, metrics) for gate in self.gates) if not g["passed"]
        ]
        if failed and not any(later.training is not None for later in self.recipe.stages[index + 1 :]):
            self.dropped = (failed, progress.results[-1].name)
            return False
        self.on_settled(index, progress)
        return True
