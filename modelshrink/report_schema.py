"""What modelshrink reads back of a report.json (`compare`, `run --compare-to`, `constraints.compare_to`),
as a pydantic schema checked before any work.

A report.json read back is someone's file: it may be damaged, hand-edited or hostile. Everything the
comparison reads (the final metrics each descriptor reads, the latency keys, the machine the numbers
came from, the user's own metric names) is guaranteed here to be present and of its type, so that a bad
file is one line naming its first problem instead of a traceback halfway through a run. Numbers are
strict (a string "0.9" is not a number), finite and bounded (float() of a 400-digit int overflows);
strings hold no lone surrogates (they could not be printed). What modelshrink does not read back
(stages, layers, findings, ...) is left out of the validated data.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_REPORT_BYTES = 50 * 2**20  # report.json of a large model with every layer listed is a few MiB


def _encodable(value: str) -> str:
    """A lone surrogate (from a \\udcff escape) cannot be printed or written as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds a character that is not valid unicode") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]
Count = Annotated[int, Field(ge=0, le=2**63)]
Number = Annotated[float, Field(allow_inf_nan=False, ge=-1e300, le=1e300)]
Millis = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e12)]
Direction = Literal["higher", "lower"]


class _Part(BaseModel):
    """Strict types; keys modelshrink does not read are dropped."""

    model_config = ConfigDict(strict=True, extra="ignore")


class Latency(_Part):
    batch1_median: Millis
    batch1_p95: Millis
    batchN_median: Millis
    batchN_p95: Millis
    batch_n: Annotated[int, Field(ge=1, le=2**31)]
    threads: Annotated[int, Field(ge=1, le=2**31)]
    compile_s: Millis | None = None
    compiles: Count | None = None


class Metrics(_Part):
    """A model's measurements as `descriptors.METRICS` reads them; null stands for NaN (not measured)."""

    model_config = ConfigDict(extra="allow")  # a plugin's registered metric: a number under its own key
    __pydantic_extra__: dict[str, Number | None] = Field(init=False)  # type: ignore[assignment]

    accuracy: Number | None
    top5: Number | None = None
    loss: Number | None
    cosine: Number | None
    agreement: Number | None = None
    max_abs_error: Number | None = None
    rel_error: Number | None = None
    outputs: dict[Text, dict[Text, Number | None]] | None = None
    custom: dict[Text, Number | None] = Field(default_factory=dict)
    latency_ms: Latency
    params: Count
    nonzero_params: Count
    sparsity: Number | None
    macs: Count
    size_bytes: Count


EnvironmentValue = Text | int | Number | bool | list[Text] | None


class Environment(_Part):
    """The machine the numbers came from, as `environment.cpu_summary` reads it."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, EnvironmentValue] = Field(init=False)  # type: ignore[assignment]

    torch: Text
    torch_threads: Annotated[int, Field(ge=1, le=2**31)]
    cpu_model: Text | None = None
    cpu_features: list[Text] | None = None
    torch_cpu_capability: Text | None = None


class RecipeName(_Part):
    name: Text | None = None


class ReadReport(_Part):
    """report.json, schema version 1, as far as modelshrink reads it back."""

    schema_version: Literal[1]
    version: Text | None = None
    recipe: RecipeName | None = None
    environment: Environment | None = None
    baseline: Metrics | None = None
    final: Metrics
    custom_metrics: dict[Text, Direction] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _custom_measured(self) -> ReadReport:
        """Each metric of the user's the report names has a value (perhaps null) in its final metrics."""
        missing = sorted(set(self.custom_metrics) - set(self.final.custom))
        if missing:
            raise ValueError(f"custom_metrics names {missing[0]!r}, which final.custom lacks")
        return self


def parse_report(data: bytes) -> dict[str, Any]:
    """The parts of a report.json modelshrink reads, validated; ValueError with the first problem."""
    if len(data) > MAX_REPORT_BYTES:
        raise ValueError(f"larger than {MAX_REPORT_BYTES // 2**20} MiB")
    try:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:  # json.loads recurses per bracket; the schema reads nothing nested deeper than 4
        raise ValueError("nested too deeply") from None
    try:
        report = ReadReport.model_validate(value)
    except ValidationError as exc:
        raise ValueError(_first_problem(exc)) from None
    return report.model_dump(exclude_unset=True)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the file"
    message = "required" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"
