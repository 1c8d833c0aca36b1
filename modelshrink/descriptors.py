"""What each reported metric is: its name, which way is better, its unit, how it is shown and how it
changes against the baseline. The CLI table, report.md and the gates (`constraints:`) are all driven
from `METRICS`, so a new metric is one `register_metric` call plus the code that measures it
(`modelshrink.metrics.measure`). No torch here: recipes are validated without it.

The measured values themselves travel as report.json holds them (`Metrics`), a typed dict because
the same dicts are written to report.json and to the resume state, which reads plain types only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NotRequired, TypedDict


class Latency(TypedDict):
    batch1_median: float
    batch1_p95: float
    batchN_median: float
    batchN_p95: float
    batch_n: int
    threads: int
    compile_s: NotRequired[float]  # compiled models: seconds their compiling calls took (not in the medians)
    compiles: NotRequired[int]
    attempts: NotRequired[int]  # measurements taken: more than one when an earlier one was implausible
    warnings: NotRequired[list[str]]  # what is still implausible about these numbers (`metrics.latency`)
    remeasured: NotRequired[list[str]]  # what was implausible in the first measurement, when there were more
    isolation: NotRequired[str]  # an export timed beside PyTorch after all, and why (its worker did not start)


class Metrics(TypedDict):
    """One model's measurements, with report.json's keys (schema version 1)."""

    accuracy: float  # NaN without class labels
    top5: float
    loss: float
    cosine: float  # mean cosine similarity of the outputs to the original model's
    agreement: float  # share of inputs whose top-1 class is the original model's; NaN for non-classifiers
    max_abs_error: float  # largest |output - original output|
    rel_error: float  # ||outputs - original outputs|| / ||original outputs|| over the validation split
    # a model with several outputs: cosine, rel_error and max_abs_error of each, by name (`inputs.output_names`);
    # its `cosine` is then the lowest of them and `rel_error` the highest
    outputs: NotRequired[dict[str, dict[str, float]]]
    custom: dict[str, float]  # the user's own metrics (evaluate.metrics), by name
    latency_ms: Latency | None  # None until the models are timed side by side
    params: int
    nonzero_params: int
    sparsity: float
    macs: int
    size_bytes: int


OPTIONAL_METRIC_KEYS = ("outputs",)  # NotRequired above (not visible at run time under postponed annotations)
METRIC_KEYS = tuple(key for key in Metrics.__annotations__ if key not in OPTIONAL_METRIC_KEYS)


@dataclass(frozen=True)
class MetricDescriptor:
    name: str  # the key of a gate in `constraints:` and of the value in `value_of`
    label: str  # column header; "{n}" stands for the latency batch size
    better: Literal["higher", "lower"]
    unit: Literal["fraction", "ms", "count", "bytes", ""]
    read: Callable[[Metrics], float]
    # how a stage's value is compared with the baseline's: a difference in points, a ratio stage/baseline
    # (size, MACs: 0.25x), or a speed-up baseline/stage (latency: 3.00x, above 1 is faster), the one
    # convention for speed everywhere (tables, report.md, compare, report.json's `speedup`)
    change: Literal["points", "ratio", "speedup", None]
    in_cli: bool = True  # a column of the terminal table (report.md shows every metric)
    needs_labels: bool = False

    def show(self, value: float) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "n/a"
        return _FORMATS[self.unit](value)

    def compared(self, value: float, baseline: float) -> str:
        if self.change == "points":
            return "n/a" if math.isnan(value - baseline) else f"{(value - baseline) * 100:+.2f} pt"
        if self.change == "ratio":
            return f"{value / baseline:.2f}x" if baseline else "n/a"
        if self.change == "speedup":
            return f"{speedup(baseline, value):.2f}x speed-up" if value and not math.isnan(baseline) else "n/a"
        return ""


def speedup(original: float, stage: float) -> float:
    """How many times faster `stage` runs than `original` (times in ms): above 1 is faster."""
    return original / stage if stage else math.nan


def human_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


def human_bytes(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)} B"


_FORMATS: dict[str, Callable[[float], str]] = {
    "": lambda v: f"{v:.4f}",
    "fraction": lambda v: f"{v:.1%}",
    "ms": lambda v: f"{v:.2f}",
    "count": human_count,
    "bytes": human_bytes,
}

METRICS: dict[str, MetricDescriptor] = {}


def register_metric(descriptor: MetricDescriptor) -> MetricDescriptor:
    """Add a column to the table and report.md; to gate it too, register it before `modelshrink.recipe`
    is imported (the `constraints:` schema is built from METRICS then)."""
    METRICS[descriptor.name] = descriptor
    return descriptor


def _read(key: str) -> Callable[[Metrics], float]:
    return lambda m: m.get(key, math.nan)  # type: ignore[return-value]


def _custom(name: str) -> Callable[[Metrics], float]:
    return lambda m: m.get("custom", {}).get(name, math.nan)


def custom_descriptor(name: str, better: Literal["higher", "lower"]) -> MetricDescriptor:
    """A user's metric (`evaluate.metrics`), shown and gated like the built-in ones."""
    label = name.replace("{", "{{").replace("}", "}}")  # labels are format strings ("b{n} (ms)"); a name is not
    return MetricDescriptor(name, label, better, "", _custom(name), "points")


def report_metrics(*reports: dict) -> dict[str, MetricDescriptor]:
    """The built-in metrics and the reports' own (report.json's `custom_metrics`: name -> higher|lower)."""
    extra = {
        name: custom_descriptor(name, better)
        for report in reports
        for name, better in (report.get("custom_metrics") or {}).items()
    }
    return {**METRICS, **extra}


def _latency(key: str) -> Callable[[Metrics], float]:
    return lambda m: m["latency_ms"][key] if m["latency_ms"] else math.nan  # type: ignore[literal-required]


for _descriptor in (
    MetricDescriptor("accuracy", "accuracy", "higher", "", lambda m: m["accuracy"], "points", needs_labels=True),
    # .get: reports written before these metrics existed have none (NaN: n/a, never passes a gate)
    MetricDescriptor("top5", "top-5", "higher", "", _read("top5"), "points", in_cli=False, needs_labels=True),
    MetricDescriptor("loss", "loss", "lower", "", lambda m: m["loss"], None, in_cli=False, needs_labels=True),
    MetricDescriptor("cosine", "cosine", "higher", "", lambda m: m["cosine"], None),
    MetricDescriptor("agreement", "agreement", "higher", "", _read("agreement"), "points"),
    MetricDescriptor("max_abs_error", "max error", "lower", "", _read("max_abs_error"), None, in_cli=False),
    MetricDescriptor("rel_error", "rel. error", "lower", "", _read("rel_error"), None, in_cli=False),
    MetricDescriptor("latency_b1_ms", "latency b1 (ms)", "lower", "ms", _latency("batch1_median"), "speedup"),
    MetricDescriptor(
        "latency_b1_p95_ms", "b1 p95 (ms)", "lower", "ms", _latency("batch1_p95"), "speedup", in_cli=False
    ),
    MetricDescriptor("latency_bn_ms", "b{n} (ms)", "lower", "ms", _latency("batchN_median"), "speedup"),
    MetricDescriptor("params", "params", "lower", "count", lambda m: m["params"], "ratio"),
    MetricDescriptor(
        "nonzero_params", "non-zero", "lower", "count", lambda m: m["nonzero_params"], "ratio", in_cli=False
    ),
    MetricDescriptor("sparsity", "sparsity", "higher", "fraction", lambda m: m["sparsity"], None),
    MetricDescriptor("macs", "MACs", "lower", "count", lambda m: m["macs"], "ratio"),
    MetricDescriptor("size_bytes", "size", "lower", "bytes", lambda m: m["size_bytes"], "ratio"),
):
    register_metric(_descriptor)
