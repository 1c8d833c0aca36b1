"""Building a plug-in's model source from its record: import the module the record names (the trust
policy allowed it already, or the recipe named the kind), find the spec class it registered, validate
the record's keys with it, and call the builder registered for that class."""

from __future__ import annotations

from pydantic import ValidationError
from torch import nn

from modelshrink.errors import UserError
from modelshrink.recipe.kinds import loaded_plugin_spec
from modelshrink.registry import SOURCES, register
from modelshrink.sources import PluginSource
from modelshrink.user_code import import_module


@register(PluginSource)
def build_source(source: PluginSource, *, from_recipe: bool, where: object) -> nn.Module:
    import_module(source.module, f"{where}: model source {source.name!r}", from_recipe=from_recipe)
    spec_type = loaded_plugin_spec("source", source.name)
    if spec_type is None or spec_type.__module__ != source.module:
        raise UserError(f"{where}: the plug-in module {source.module!r} adds no model source {source.name!r}")
    try:
        spec = spec_type.model_validate(source.record["source"])
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(map(str, error["loc"]))
        raise UserError(f"{where}: model source {source.name!r}: {key}: {error['msg']}") from None
    model = SOURCES.handler_for(spec)(spec, from_recipe=from_recipe, where=where)
    if not isinstance(model, nn.Module):
        raise UserError(f"{where}: model source {source.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
