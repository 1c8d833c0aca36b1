"""The one interface every stage implements, the small context they share, and the registry.

A stage spec's type picks its handler, as for every seam (`modelshrink.registry`): each `Stage`
subclass registers for the spec classes it handles (`@register(ChannelPruneSpec)`), and `apply_stage`
looks the handler up by the spec's type. Every handler has one signature, `apply(model, ctx) -> model`.
Stages never write files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.inputs import Inputs
from modelshrink.lineage import Lineage, Transform
from modelshrink.recipe.schema import EvaluateSpec, ModelSpec
from modelshrink.recipe.stage_specs import BaseStageSpec, TrainingSettings, parse_stage
from modelshrink.registry import STAGES
from modelshrink.resume import ResumeStore
from modelshrink.stages.notes import StageNotes, TrainingRun
from modelshrink.train import fit

SpecT = TypeVar("SpecT")


def _no_loader(spec: ModelSpec) -> tuple[nn.Module, Lineage]:
    raise TypeError("this StageContext was made without load_model")  # a caller's bug, not bad input


@dataclass
class StageContext:
    """What stages may read: the data, the untouched original model, the run's settings.

    Stages change structure through `transform` (recorded in `lineage`, so that the checkpoint can be
    rebuilt; see `modelshrink.lineage.Transform`), train through `train`, and tell the report what it
    should know through `notes_for(stage)` (typed: `stages.notes.StageNotes`)."""

    data: DataBundle
    original_model: nn.Module
    lineage: Lineage
    evaluate: EvaluateSpec
    seed: int
    resume_store: ResumeStore | None = None
    # loads another model a stage names (a distillation teacher); given by the caller, which knows
    # how to read checkpoints (stages do not import the loader: it rebuilds checkpoints through them)
    load_model: Callable[[ModelSpec], tuple[nn.Module, Lineage]] = field(default=_no_loader)
    notes: dict[str, StageNotes] = field(default_factory=dict)
    # each training epoch's score on the selection split, as it comes (tune's pruner may stop the candidate)
    on_epoch_score: Callable[[dict[str, float]], None] | None = None

    def notes_for(self, stage: str) -> StageNotes:
        return self.notes.setdefault(stage, StageNotes())

    def calibration_inputs(self, batches: int) -> Iterator[Inputs]:
        return self.data.calibration_inputs(batches)

    def deployed_inputs(self) -> list[Inputs]:
        """One batch of each size the recipe times (`evaluate.latency`): what timed choices are made at."""
        sizes = dict.fromkeys((1, self.evaluate.latency.batch_size))
        return [self.data.example_inputs(n) for n in sizes]

    def transform(self, model: nn.Module, transform: Transform) -> nn.Module:
        """Make a structural change by replaying its record, and keep the record for the checkpoint:
        the change a stage makes and the one a reload makes are then the same code."""
        model = transform.replay(model)
        self.lineage.transforms.append(transform)
        return model

    def train(
        self,
        model: nn.Module,
        spec: TrainingSettings,
        stage: str,
        *,
        label: str | None = None,
        resumable: bool = True,
        **options: Any,
    ) -> nn.Module:
        """The one training loop with this run's data, seed and validation limit; a resumable run
        saves (and on resume restores) the training state of `stage` after every epoch. How the
        epochs went is noted for the report (see `report.findings`)."""
        store = self.resume_store if resumable else None
        result = fit(
            model,
            self.data,
            spec,
            label=label or stage,
            max_val_batches=self.evaluate.max_val_batches,
            resume=store.epoch_state(stage) if store else None,
            on_epoch=(lambda state: store.save_epoch(stage, state)) if store else None,
            on_score=self.on_epoch_score,
            **options,
        )
        run = TrainingRun(label or stage, result.epochs_run, result.kept_epoch, result.start, result.best)
        self.notes_for(stage).training.append(run)
        return result.model


class Stage(ABC, Generic[SpecT]):
    def __init__(self, spec: SpecT, name: str):
        self.spec = spec
        self.name = name

    @abstractmethod
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        """Return the compressed model (in place or a new module)."""


def handler_for(spec: BaseStageSpec) -> type[Stage]:
    return STAGES.handler_for(spec)


def make_stage(spec: BaseStageSpec | dict[str, Any], name: str) -> Stage:
    """The handler for a spec (or its recipe form, `{"kind": "prune", "method": "channel", ...}`)."""
    parsed = parse_stage(spec)
    return handler_for(parsed)(parsed, name)


def apply_stage(model: nn.Module, spec: BaseStageSpec | dict[str, Any], ctx: StageContext, name: str) -> nn.Module:
    return make_stage(spec, name).apply(model, ctx)
