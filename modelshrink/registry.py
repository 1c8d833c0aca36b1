"""One plug-in idiom: a handler registered by the type of the spec it handles, for every seam.

As in torchao (`register_quantize_module_handler(ConfigType)`), the spec's class picks its handler,
looked up along the spec's class hierarchy, so a subclass is handled as its parent unless it has a
handler of its own. `register` serves every seam; which one is read from the spec's base class:

| seam | spec base | handler |
|---|---|---|
| stage | `BaseStageSpec` | a `stages.Stage` subclass: `Stage(spec, name).apply(model, ctx) -> model` |
| data kind | `BaseDataSpec` | `build(spec, seed, model_spec) -> DataBundle` |
| metric | `BaseMetricSpec` | `measure(spec, model, val_loader, where) -> {name: float}` |
| export | `BaseExportSpec` | `export(model, spec, data, exclude, threads) -> Exported` |
| model source | `BaseSourceSpec`; the built-in ones `BaseSource` | `build(spec, *, from_recipe, where) -> nn.Module` |

A spec class of a kind that is not built in also becomes a kind recipes may name
(`recipe.kinds`), which is how a package of the user's adds one: it registers its spec and handler
in a module named by an entry point of group `modelshrink.plugins` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from modelshrink.recipe.export_specs import BaseExportSpec
from modelshrink.recipe.kinds import Section, add_plugin_spec
from modelshrink.recipe.schema import BaseDataSpec, BaseMetricSpec, BaseSourceSpec
from modelshrink.recipe.stage_specs import BaseStageSpec
from modelshrink.sources import BaseSource

HandlerT = TypeVar("HandlerT")


class Registry:
    """The handlers of one seam, by spec type."""

    def __init__(self, seam: str, base: type | tuple[type, ...], section: Section):
        self.seam, self.base, self.section = seam, base, section
        self.handlers: dict[type, Any] = {}

    def add(self, spec_type: type, handler: Any) -> None:
        add_plugin_spec(self.section, spec_type)
        built_in = self.handlers.get(spec_type)
        if built_in is not None and not getattr(handler, "__module__", "").startswith("modelshrink."):
            raise TypeError(f"register: {spec_type.__name__} is handled by modelshrink's {built_in.__name__}; "
                            "a plug-in adds a spec class of its own")  # fmt: skip
        self.handlers[spec_type] = handler

    def handler_for(self, spec: Any) -> Any:
        for cls in type(spec).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        raise TypeError(f"no {self.seam} handler is registered for {type(spec).__name__}")  # a spec without its module


STAGES = Registry("stage", BaseStageSpec, "stage")
DATA = Registry("data", BaseDataSpec, "data")
METRICS = Registry("metric", BaseMetricSpec, "metric")
EXPORTS = Registry("export", BaseExportSpec, "export")
SOURCES = Registry("model source", (BaseSourceSpec, BaseSource), "source")
REGISTRIES = (STAGES, DATA, METRICS, EXPORTS, SOURCES)


def register(*spec_types: type) -> Callable[[HandlerT], HandlerT]:
    """Decorator: the decorated stage class or function handles specs of these types (and their subclasses)."""
    for spec_type in spec_types:
        _registry_of(spec_type)  # a wrong type fails where the decorator is written, not at first use

    def decorator(handler: HandlerT) -> HandlerT:
        for spec_type in spec_types:
            _registry_of(spec_type).add(spec_type, handler)
        return handler

    return decorator


def _bases(registry: Registry) -> tuple[type, ...]:
    return registry.base if isinstance(registry.base, tuple) else (registry.base,)


def _registry_of(spec_type: type) -> Registry:
    for registry in REGISTRIES:
        if isinstance(spec_type, type) and issubclass(spec_type, registry.base):
            return registry
    bases = ", ".join(base.__name__ for registry in REGISTRIES for base in _bases(registry))
    raise TypeError(f"register: {spec_type!r} is not a spec of any seam (subclass one of {bases})")
