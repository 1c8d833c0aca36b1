"""CI gates: the final model against the recipe's limits, each a bound on one reported metric.

The named gates (`max_accuracy_drop`, `min_accuracy`, `min_cosine`) and the generic form
(`accuracy: {max_drop: 0.01}`, `latency_b1_ms: {min_speedup: 1.25}`) become the same `Gate`s, read
through the metric descriptors, so a new metric can be gated without touching this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypedDict

from modelshrink.descriptors import METRICS, MetricDescriptor, Metrics, custom_descriptor, speedup
from modelshrink.errors import UserError

# the named gates: recipe key -> (metric, bound)
NAMED = {
    "max_accuracy_drop": ("accuracy", "max_drop"),
    "min_accuracy": ("accuracy", "min"),
    "min_cosine": ("cosine", "min"),
}
_PASSES = {
    "min": lambda value, limit: value >= limit,
    "max": lambda value, limit: value <= limit,
    "max_drop": lambda value, limit: value <= limit,
    "max_rise": lambda value, limit: value <= limit,
    "min_ratio": lambda value, limit: value >= limit,
    "max_ratio": lambda value, limit: value <= limit,
    "min_speedup": lambda value, limit: value >= limit,
}


class GateResult(TypedDict):
    name: str
    limit: float
    value: float
    passed: bool


@dataclass(frozen=True)
class Gate:
    name: str  # as the recipe spells it: max_accuracy_drop, or latency_b1_ms.max_ratio
    metric: MetricDescriptor
    bound: str  # a key of _PASSES
    limit: float

    def value(self, baseline: Metrics, final: Metrics) -> float:
        """What the limit is compared with: the final value, or its change against the baseline."""
        now, before = self.metric.read(final), self.metric.read(baseline)
        if self.bound == "max_drop":
            return before - now
        if self.bound == "max_rise":
            return now - before
        if self.bound in ("min_ratio", "max_ratio"):
            return now / before if before else math.nan
        if self.bound == "min_speedup":
            return speedup(before, now)
        return now

    def lowest_passing(self, baseline: Metrics) -> float | None:
        """The lowest final value that passes a gate keeping a metric up (min, max_drop, min_ratio); None for a
        gate of another kind. What tune's pruner compares a candidate's accuracy mid-training with."""
        before = self.metric.read(baseline)
        if self.bound == "min":
            return self.limit
        if self.bound == "max_drop":
            return before - self.limit
        if self.bound == "min_ratio":
            return before * self.limit
        return None

    def check(self, baseline: Metrics, final: Metrics) -> GateResult:
        value = self.value(baseline, final)
        # A NaN (e.g. an empty validation split) compares False either way: it must never pass a gate.
        passed = _PASSES[self.bound](value, self.limit) and not math.isnan(value)
        return {"name": self.name, "limit": self.limit, "value": value, "passed": bool(passed)}


def shown(name: str, number: float) -> str:
    """A gate's limit or value as people read it: sizes in bytes units, ratios as 0.80x."""
    name = name.rsplit(" ", 1)[-1]  # an export's gate is named after its file: `model.onnx accuracy.max_drop`
    if name.startswith("regression."):  # regression.<metric>: a difference, or a ratio (see `compare`)
        descriptor = METRICS.get(name.removeprefix("regression."))  # None: a metric of the user's, a difference
        return f"{number:.2f}x" if descriptor and descriptor.change in ("ratio", "speedup") else f"{number:.4f}"
    metric, bound = NAMED.get(name) or name.rsplit(".", 1)
    if bound in ("min_ratio", "max_ratio", "min_speedup"):
        return f"{number:.2f}x"
    descriptor = METRICS.get(metric)  # None: a custom metric, a plain number
    return f"{number:.4f}" if descriptor is None or descriptor.unit in ("", "fraction") else descriptor.show(number)


def verdict(result: GateResult) -> str:
    """One gate's line for people: `name: limit L, value V → pass` (FAIL when it failed)."""
    limit, value = shown(result["name"], result["limit"]), shown(result["name"], result["value"])
    return f"{result['name']}: limit {limit}, value {value} → {'pass' if result['passed'] else 'FAIL'}"


def failures(results: list[GateResult]) -> str:
    """The failed gates in one line: `name (limit L, got V), ...`."""
    return ", ".join(
        f"{r['name']} (limit {shown(r['name'], r['limit'])}, got {shown(r['name'], r['value'])})"
        for r in results
        if not r["passed"]
    )


def gates(spec: Any) -> list[Gate]:
    """Every gate a `constraints:` section sets: named gates, built-in metrics, then custom metrics
    (the section's extra keys, e.g. `map50: {max_drop: 0.01}`)."""
    found = [
        Gate(key, METRICS[metric], bound, getattr(spec, key))
        for key, (metric, bound) in NAMED.items()
        if getattr(spec, key) is not None
    ]
    for output, bounds in (getattr(spec, "outputs", None) or {}).items():
        for bound, metric, better in (("min_cosine", "cosine", "min"), ("max_rel_error", "rel_error", "max")):
            if getattr(bounds, bound) is not None:
                descriptor = output_descriptor(output, metric)
                found.append(Gate(f"outputs.{output}.{bound}", descriptor, better, getattr(bounds, bound)))
    custom = {name: custom_descriptor(name, "higher") for name in custom_gate_names(spec)}
    for name, descriptor in {**METRICS, **custom}.items():
        bounds = getattr(spec, name, None)  # None also for a metric registered after the schema was built
        if bounds is not None:
            found += [
                Gate(f"{name}.{b}", descriptor, b, getattr(bounds, b, None))
                for b in _PASSES
                if getattr(bounds, b, None) is not None
            ]
    return found


def custom_gate_names(spec: Any) -> list[str]:
    """The metrics a constraints section gates that are not built in: the user's own (evaluate.metrics)."""
    return list(getattr(spec, "model_extra", None) or {})


def output_descriptor(output: str, metric: str) -> MetricDescriptor:
    """One output's cosine or relative error (`Metrics.outputs`), read like any metric."""

    def read(m: Metrics) -> float:
        return (m.get("outputs") or {}).get(output, {}).get(metric, math.nan)

    better = "higher" if metric == "cosine" else "lower"
    return MetricDescriptor(f"outputs.{output}.{metric}", f"{output} {metric}", better, "", read, None)


def check_gated_metrics_exist(spec: Any, baseline: Metrics) -> None:
    """A gate on a metric of the user's that their functions did not return, or on an output the model
    does not have, is a typo or a mistake: refused once the baseline is measured (the first moment the
    names are known), before any stage."""
    outputs = baseline.get("outputs") or {}
    for name in getattr(spec, "outputs", None) or {}:
        if name not in outputs:
            have = f"its outputs: {', '.join(outputs)}" if outputs else "it has one output: gate min_cosine instead"
            raise UserError(f"constraints.outputs.{name}: the model has no output of that name ({have})")
    produced = baseline.get("custom", {})
    for name in custom_gate_names(spec):
        if name not in produced:
            given = ", ".join(produced) or "none"
            raise UserError(f"constraints.{name}: no metric of that name (evaluate.metrics returned: {given})")


def check_constraints(spec: Any, baseline: Metrics, final: Metrics, prefix: str = "") -> list[GateResult]:
    """`prefix`: what the gates are about when it is not the final model (an export's file name)."""
    results = [gate.check(baseline, final) for gate in gates(spec)]
    return [{**r, "name": f"{prefix} {r['name']}"} for r in results] if prefix else results
