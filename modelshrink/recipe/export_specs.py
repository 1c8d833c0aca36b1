"""The recipe's `export:` section: files for the runtimes users deploy on, each measured there.

One spec class per format, holding only its own fields (as stage specs do); `extra` names the
optional dependency group it needs, checked before any work (`modelshrink.export.check_extras`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator

from modelshrink.recipe.schema import ConstraintsSpec, Strict


class OnnxExport(Strict):
    """An ONNX file run by ONNX Runtime: fp32, or int8 by ONNX Runtime's quantizer (dynamic; or static,
    QDQ with per-channel weights, calibrated on the recipe's calibration data)."""

    format: Literal["onnx"]
    quantize: Literal["none", "dynamic", "static"] = "none"
    calibration_batches: PositiveInt = Field(default=8, description="static: batches of calibration data")
    constraints: ConstraintsSpec | None = Field(  # type: ignore[valid-type]
        default=None,
        description="gates on this export's metrics against the baseline, as the recipe's constraints, e.g. "
        "{max_accuracy_drop: 0.01, latency_b1_ms: {max_ratio: 0.5}}",
    )

    extra: ClassVar[str] = "onnx"

    @model_validator(mode="after")
    def _gates_against_the_baseline(self) -> OnnxExport:
        if self.constraints is not None and self.constraints.compare_to is not None:
            raise ValueError("constraints.compare_to is recipe-wide; an export's constraints gate against the baseline")
        return self

    @property
    def file_name(self) -> str:
        return "model.onnx" if self.quantize == "none" else f"model.{self.quantize}.onnx"

    @property
    def label(self) -> str:
        return f"{self.format} {self.quantize}"


ExportSpec = OnnxExport
