"""What a stage tells the report besides its metrics, typed: its training runs, a comparison it ran,
and plain findings. report.json keeps them under each stage's `notes` (see `StageNotes.to_json`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainingRun:
    """How one call of the training loop went (`train.FitResult`, without the model)."""

    label: str
    epochs_run: int
    kept_epoch: int | None
    start: dict[str, float] | None  # the starting weights' tuning-split scores, when epochs were chosen
    best: dict[str, float] | None


@dataclass
class Comparison:
    """Distillation against plain fine-tuning with the same settings (`compare_finetune`)."""

    distill_accuracy: float
    finetune_accuracy: float

    @property
    def distillation_won(self) -> bool:
        return self.distill_accuracy > self.finetune_accuracy


@dataclass
class StageNotes:
    training: list[TrainingRun] = field(default_factory=list)
    comparison: Comparison | None = None
    findings: list[str] = field(default_factory=list)  # plain sentences for a reviewer, without the stage name
    # recipe keys this stage had at `auto`, with the value it chose by measuring: `tune` writes them into
    # tuned.yaml, so that the recipe CI runs is the configuration that was measured (timing is noisy)
    resolved: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.training:
            out["training"] = [asdict(run) for run in self.training]
        if self.comparison is not None:
            out["compare_finetune"] = {**asdict(self.comparison), "distillation_won": self.comparison.distillation_won}
        if self.findings:
            out["findings"] = list(self.findings)
        if self.resolved:
            out["resolved"] = dict(self.resolved)
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> StageNotes:
        """Back from `to_json()` (a resumed run's saved progress)."""
        compared = value.get("compare_finetune")
        return cls(
            training=[TrainingRun(**run) for run in value.get("training", [])],
            comparison=Comparison(compared["distill_accuracy"], compared["finetune_accuracy"]) if compared else None,
            findings=list(value.get("findings", [])),
            resolved=dict(value.get("resolved", {})),
        )
