"""The whole recipe: its sections, and the checks that span them (stage order, text data, names)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator

from modelshrink.constraints import custom_gate_names, gates
from modelshrink.descriptors import METRICS
from modelshrink.recipe.export_specs import ExportSpec
from modelshrink.recipe.schema import (
    BaseDataSpec,
    ConstraintsSpec,
    DataSpec,
    EvaluateSpec,
    ModelSpec,
    OutputSpec,
    Strict,
    TextData,
)
from modelshrink.recipe.stage_specs import StageSpec, needs_tuning_split, stage_names


def labeled(data: BaseDataSpec) -> bool:
    """Whether a data kind's items come with targets: each built-in kind says so, a plug-in's kind is
    taken as labeled unless it has a `labeled` of its own."""
    return getattr(data, "labeled", True)


class Recipe(Strict):
    name: str | None = Field(default=None, description="the run's title in report.md, report.html and the CLI's table")
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] = Field(  # what torch.manual_seed accepts
        default=0, description="seeds Python, NumPy, torch and the data splits, e.g. 0"
    )
    model: ModelSpec = Field(
        description="where the model comes from: torchvision, factory or huggingface, and/or a checkpoint"
    )
    data: DataSpec = Field(
        description="the data that trains, calibrates and (without evaluate.data) reports quality; "
        "`kind` picks the source"
    )
    stages: list[StageSpec] = Field(
        default_factory=list,
        description="the compression stages, run in order on the model; none: the model is only measured",
    )
    evaluate: EvaluateSpec = Field(
        default_factory=EvaluateSpec,
        description="how models are measured: latency, validation batches, held-out data, your own metrics, the task",
    )
    output: OutputSpec = Field(description="where the checkpoint and the reports are written")
    constraints: ConstraintsSpec = Field(
        default_factory=ConstraintsSpec,
        description="gates on the final model (absolute, against the baseline or an earlier report); "
        "a failed one exits 1 after the reports",
    )
    export: list[ExportSpec] = Field(default_factory=list, description="files for other runtimes, each measured")

    @property
    def needs_tuning_split(self) -> bool:
        return needs_tuning_split(self.stages)

    def stage_names(self) -> list[str]:
        return stage_names(self.stages)

    def trusting(self, modules: Sequence[str]) -> Recipe:
        """This recipe with `modules` added to `model.trust` (`--trust` on the command line): modules whose
        factories the model's checkpoint may name."""
        if not modules:
            return self
        return self.model_copy(update={"model": self.model.model_copy(update={"trust": [*self.model.trust, *modules]})})

    def inputs(self, source: str | Path | None = None) -> list[tuple[str, Path]]:
        """Every file or folder this recipe reads (and `source`, the recipe file itself): what no output of
        any command may overwrite, delete or be written into (`outputs.claim`)."""
        found = [("recipe", Path(source))] if source else []
        if self.model.checkpoint is not None:
            found.append(("checkpoint", self.model.checkpoint))
        for label, data in (("data", self.data), ("evaluation data", self.evaluate.data)):
            path = getattr(data, "path", None)
            if path is not None:
                found.append((label, path))
        for spec in self.stages:
            teacher = getattr(spec.training, "teacher", None)  # a distill stage, or a schedule's training
            if teacher is not None and teacher.checkpoint is not None:
                found.append(("teacher checkpoint", teacher.checkpoint))
        if self.constraints.compare_to is not None:
            found.append(("report compared to", self.constraints.compare_to))
        return found

    @model_validator(mode="after")
    def _trainable_after_quantize(self) -> Recipe:
        quantized = folded = False
        for spec in self.stages:
            if spec.training is not None and quantized:
                raise ValueError(
                    f"stage {spec.kind!r} cannot train a model that an earlier 'quantize' stage "
                    "made int8; put training stages before quantization"
                )
            if spec.training is not None and folded:
                raise ValueError(
                    f"stage {spec.kind!r} would train a model whose batch norms an earlier 'optimize' stage "
                    "folded away; put training stages before it"
                )
            quantized = quantized or spec.quantizes
            folded = folded or (spec.folds_batchnorm and getattr(spec, "fold_batchnorm", False))
        return self

    @model_validator(mode="after")
    def _export_files_differ(self) -> Recipe:
        names = [name for spec in self.export for name in spec.file_names]
        for name in names:
            if names.count(name) > 1 or name == self.output.checkpoint_name:
                raise ValueError(f"export: two outputs would be written to {name}; list each target once")
        return self

    @model_validator(mode="after")
    def _text_data_fits(self) -> Recipe:
        for where, data in (("data", self.data), ("evaluate.data", self.evaluate.data)):
            if isinstance(data, TextData) and data.tokenizer is None and self.model.huggingface is None:
                raise ValueError(f"{where}.tokenizer is needed when the model is not given by model.huggingface")
        return self

    @model_validator(mode="after")
    def _labels_fit(self) -> Recipe:
        """Unlabeled data serves calibration, distillation and gates against the original model; what
        needs labels is refused here, before any work."""
        if not labeled(self.data):
            how = self.data.label_hint
            for spec in self.stages:
                if spec.needs_labels:
                    reason = "trains" if spec.training is not None else "scores by loss gradients"
                    raise ValueError(f"stage {spec.kind!r} {reason}, which needs labels: {how} (distill needs none)")
        reporting = self.evaluate.data or self.data  # the data that reports quality and gates
        if labeled(reporting):
            return self
        how = reporting.label_hint
        for gate in gates(self.constraints):
            if gate.metric.needs_labels:
                raise ValueError(f"constraints.{gate.name} needs labels: {how}, or gate on agreement or cosine")
        return self

    @field_validator("constraints")
    @classmethod
    def _custom_gates_have_metrics(cls, constraints: ConstraintsSpec, info: ValidationInfo) -> ConstraintsSpec:
        """A gate on a metric that is not built in needs the user's metrics to produce it; without
        any, it is a typo and is refused here, by name (`evaluate` is validated before `constraints`)."""
        evaluate = info.data.get("evaluate")
        if evaluate is None or evaluate.metrics:
            return constraints
        for name in [n for n in constraints.max_regression if n not in METRICS]:
            raise ValueError(
                f"max_regression: unknown metric {name!r}; known: {', '.join(METRICS)} "
                "(a metric of your own needs evaluate.metrics)"
            )
        for name in custom_gate_names(constraints):
            close = [m for m in METRICS if m.startswith(name)] or difflib.get_close_matches(name, METRICS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"unknown key {name!r}: no such metric; {hint}known: {', '.join(METRICS)} "
                "(a metric of your own needs evaluate.metrics)"
            )
        return constraints

    @model_validator(mode="after")
    def _unique_stage_names(self) -> Recipe:
        names = self.stage_names()
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique, repeated: {', '.join(duplicates)}")
        return self
