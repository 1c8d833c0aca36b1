"""The recipe's `export:` section: files for the runtimes users deploy on, each measured there.

One spec class per format, holding only its own fields (as stage specs do); `extra` names the
optional dependency group it needs, checked before any work (`modelshrink.export.check_extras`), and
`exports_final` says which model it takes: the float model before the first PyTorch quantize stage
(another runtime quantizes with its own tools), or the final model (PyTorch's own deployed form).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, PositiveInt, StrictBool, model_validator

from modelshrink.recipe.kinds import extensible
from modelshrink.recipe.schema import ConstraintsSpec, Strict
from modelshrink.recipe.stage_specs import tagged_union


class BaseExportSpec(Strict):
    constraints: ConstraintsSpec | None = Field(  # type: ignore[valid-type]
        default=None,
        description="gates on this export's metrics against the baseline, as the recipe's constraints, e.g. "
        "{max_accuracy_drop: 0.01, latency_b1_ms: {max_ratio: 0.5}}",
    )

    extra: ClassVar[str | None] = None  # the optional dependency group it needs
    exports_final: ClassVar[bool] = False

    @model_validator(mode="after")
    def _gates_against_the_baseline(self) -> BaseExportSpec:
        if self.constraints is not None and self.constraints.compare_to is not None:
            raise ValueError("constraints.compare_to is recipe-wide; an export's constraints gate against the baseline")
        return self

    @property
    def file_names(self) -> list[str]:
        """Every file the export writes; the first is the one to load."""
        return [self.file_name]

    @property
    def file_name(self) -> str:
        raise NotImplementedError

    @property
    def label(self) -> str:
        return f"{self.format} {getattr(self, 'quantize', '')}".strip()  # type: ignore[attr-defined]


class OnnxExport(BaseExportSpec):
    """An ONNX file run by ONNX Runtime: fp32, or int8 by ONNX Runtime's quantizer (dynamic; or static,
    QDQ with per-channel weights, calibrated on the recipe's calibration data)."""

    format: Literal["onnx"] = Field(description="the target: an ONNX file (model.onnx) run by ONNX Runtime")
    quantize: Literal["none", "dynamic", "static"] = Field(
        default="none",
        description="none: fp32; dynamic: int8 weights, activations on the fly; static: QDQ int8 on calibration data",
    )
    calibration_batches: PositiveInt = Field(default=8, description="static: batches of calibration data")

    extra: ClassVar[str] = "onnx"

    @property
    def file_name(self) -> str:
        return "model.onnx" if self.quantize == "none" else f"model.{self.quantize}.onnx"


class OpenVinoExport(BaseExportSpec):
    """An OpenVINO IR (`.xml` graph, `.bin` weights) run by OpenVINO's CPU plugin: fp32, or int8 by
    NNCF's post-training quantization calibrated on the recipe's calibration data."""

    format: Literal["openvino"] = Field(
        description="the target: an OpenVINO IR (model.xml + model.bin) run by OpenVINO's CPU plugin"
    )
    quantize: Literal["none", "int8"] = Field(
        default="none",
        description="none: fp32; int8: NNCF post-training int8, calibrated on the recipe's calibration data",
    )
    calibration_batches: PositiveInt = Field(default=8, description="int8: batches of calibration data")
    precision: Literal["f32", "auto"] = Field(
        default="f32",
        description="what OpenVINO computes the float parts in: f32, or auto (its CPU default, bf16 where the CPU "
        "has it; quality and speed then depend on the CPU)",
    )
    sparse_decompression: Literal["auto"] | StrictBool | Annotated[float, Field(gt=0, lt=1)] = Field(
        default="auto",
        description="int8: OpenVINO's sparse weight decompression, which packs the zeros out of MatMul "
        "(Linear) weights at compile time; its kernels need AMX. auto: on an AMX CPU, timed against the dense "
        "export at batch 1 and kept where at least 5% faster, elsewhere off with a note; true: on for weights at least "
        "half zeros; a number such as 0.7: on for weights with at least that share of zeros; false: off",
        examples=["auto", 0.7, False],
    )

    extra: ClassVar[str] = "openvino"

    @model_validator(mode="after")
    def _sparse_kernels_are_int8(self) -> OpenVinoExport:
        if self.quantize == "none" and self.sparse_decompression not in ("auto", False):
            raise ValueError("sparse_decompression needs quantize: int8 (OpenVINO's sparse kernels are int8)")
        return self

    @property
    def file_name(self) -> str:
        return "model.xml" if self.quantize == "none" else f"model.{self.quantize}.xml"

    @property
    def file_names(self) -> list[str]:
        return [self.file_name, self.file_name.removesuffix(".xml") + ".bin"]


class Pt2Export(BaseExportSpec):
    """A torch.export program compiled ahead of time by AOTInductor into a `.pt2` package, which
    `torch._inductor.aoti_load_package` runs without a compiler. It packages the final model, quantized
    or not, as the stages left it."""

    format: Literal["pt2"] = Field(
        description="the target: the final model, compiled ahead of time by AOTInductor into model.pt2"
    )

    exports_final: ClassVar[bool] = True

    @property
    def file_name(self) -> str:
        return "model.pt2"


FORMATS: dict[str, type[BaseExportSpec]] = {"onnx": OnnxExport, "openvino": OpenVinoExport, "pt2": Pt2Export}
ExportSpec = extensible("export", frozenset(FORMATS), tagged_union("format", None, FORMATS))
