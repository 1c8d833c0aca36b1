"""The whole recipe: its sections, and the checks that span them (stage order, text data, names)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from modelshrink.constraints import gates
from modelshrink.recipe.schema import ConstraintsSpec, DataSpec, EvaluateSpec, ModelSpec, OutputSpec, Strict, TextData
from modelshrink.recipe.stage_specs import StageSpec, needs_tuning_split, stage_names


class Recipe(Strict):
    name: str | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] = 0  # what torch.manual_seed accepts
    model: ModelSpec
    data: DataSpec
    stages: list[StageSpec] = Field(default_factory=list)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    output: OutputSpec
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)

    @property
    def needs_tuning_split(self) -> bool:
        return needs_tuning_split(self.stages)

    def stage_names(self) -> list[str]:
        return stage_names(self.stages)

    @model_validator(mode="after")
    def _trainable_after_quantize(self) -> Recipe:
        quantized = False
        for spec in self.stages:
            if spec.training is not None and quantized:
                raise ValueError(
                    f"stage {spec.kind!r} cannot train a model that an earlier 'quantize' stage "
                    "made int8; put training stages before quantization"
                )
            quantized = quantized or spec.quantizes
        return self

    @model_validator(mode="after")
    def _text_data_fits(self) -> Recipe:
        if not isinstance(self.data, TextData):
            return self
        if self.data.tokenizer is None and self.model.huggingface is None:
            raise ValueError("data.tokenizer is needed when the model is not given by model.huggingface")
        if not self.data.labeled:
            for spec in self.stages:
                if spec.training is not None:
                    raise ValueError(f"stage {spec.kind!r} trains, which needs labels: set data.label_field")
                if spec.needs_labels:
                    raise ValueError(f"stage {spec.kind!r} needs labels (loss gradients): set data.label_field")
            for gate in gates(self.constraints):
                if gate.metric.needs_labels:
                    raise ValueError(
                        f"constraints.{gate.name} needs labels: set data.label_field, or gate on min_cosine"
                    )
        return self

    @model_validator(mode="after")
    def _unique_stage_names(self) -> Recipe:
        names = self.stage_names()
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique, repeated: {', '.join(duplicates)}")
        return self
