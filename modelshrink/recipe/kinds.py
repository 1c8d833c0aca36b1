"""Kinds a recipe may name beyond the built-in ones: spec classes that plug-ins register, by the
recipe section they extend and the tag they answer to (`kind:`, or `format:` for exports).

A section's built-in kinds are a pydantic tagged union, fixed when the schema is built. `extensible`
wraps such a union: a tag the union does not know is looked up among the registered plug-in specs
(`modelshrink.registry.register` adds them), and only then, once, among the installed packages'
entry points in group `modelshrink.plugins` (`load_entry_points`). So no third-party code is
imported for a recipe of built-in kinds, and a recipe naming a kind is what asks for its plug-in: the
recipe is the user's own script (see `modelshrink.trust`). Files that are data (checkpoints, reports)
never name stage or data kinds, so they cannot make a plug-in load. No torch here: recipes are
validated without it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import SerializeAsAny, ValidatorFunctionWrapHandler, WrapValidator

from modelshrink.errors import UserError, first_line

GROUP = "modelshrink.plugins"
Section = Literal["stage", "data", "metric", "export", "source"]
SELECTORS: dict[Section, str] = {
    "stage": "kind", "data": "kind", "metric": "kind", "export": "format", "source": "kind"
}  # fmt: skip

_PLUGIN_SPECS: dict[Section, dict[str, type]] = {section: {} for section in SELECTORS}
_BUILT_IN: dict[Section, frozenset[str]] = {}
_VARIANTS: dict[Section, dict[str, tuple[str, frozenset[str]]]] = {}
_loaded: list[str] | None = None  # the entry points imported, once any recipe asked
_failed: list[str] = []  # why the others did not load


def extensible(
    section: Section,
    built_in: frozenset[str],
    union: Any,
    variants: dict[str, tuple[str, frozenset[str]]] | None = None,
) -> Any:
    """`union` (a section's built-in specs) accepting the kinds plug-ins add, and serialized as whichever
    spec it holds. `variants`: built-in kinds whose variants plug-ins may add too, e.g. a quantization
    `mode` (kind -> its selector and built-in variants); such a plug-in spec answers to 'kind.variant'."""
    _BUILT_IN[section] = built_in
    _VARIANTS[section] = variants or {}
    selector = SELECTORS[section]

    def plugin_or_built_in(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        tag = value.get(selector) if isinstance(value, dict) else None
        if isinstance(tag, str) and tag in _VARIANTS[section]:
            variant_selector, known = _VARIANTS[section][tag]
            variant = value.get(variant_selector)
            tag = f"{tag}.{variant}" if isinstance(variant, str) and variant not in known else None
        if isinstance(tag, str) and tag not in built_in:
            spec_type = plugin_spec(section, tag)
            if spec_type is not None:
                return spec_type.model_validate(value)
            if not built_in:  # a section only plug-ins fill (model sources): nothing else could match
                added = ", ".join(map(repr, plugin_kinds(section))) or "none"
                raise ValueError(f"unknown {_named(section)} kind {tag!r} (installed plug-ins add: {added})")
        return handler(value)

    return SerializeAsAny[Annotated[union, WrapValidator(plugin_or_built_in)]]


def _named(section: Section) -> str:
    return "model source" if section == "source" else section


def _literal(spec_type: type, name: str) -> str | None:
    field = getattr(spec_type, "model_fields", {}).get(name)
    annotation = field.annotation if field is not None else None
    tags = get_args(annotation) if get_origin(annotation) is Literal else ()
    return tags[0] if len(tags) == 1 and isinstance(tags[0], str) else None


def tag_of(spec_type: type, section: Section) -> str | None:
    """The one tag a spec class answers to: its `kind: Literal["..."]`, or 'kind.variant' for a variant of
    a built-in kind (the kind alone for a class of that kind without a variant); None for a base class."""
    tag = _literal(spec_type, SELECTORS[section])
    if tag in _VARIANTS.get(section, {}):
        variant = _literal(spec_type, _VARIANTS[section][tag][0])
        return f"{tag}.{variant}" if variant is not None else tag
    return tag


def add_plugin_spec(section: Section, spec_type: type) -> None:
    """Make `spec_type` a kind recipes may name; a built-in kind or variant is not taken over."""
    tag = tag_of(spec_type, section)
    if tag is None:
        return
    if tag in _BUILT_IN.get(section, ()) or _built_in_variant(section, tag):
        if not spec_type.__module__.startswith("modelshrink."):
            raise TypeError(f"{_named(section)} kind {tag!r} is built in ({spec_type.__module__}); a plug-in "
                            "names a kind of its own")  # fmt: skip
        return
    taken = _PLUGIN_SPECS[section].get(tag)
    if taken is not None and taken is not spec_type:
        raise TypeError(f"{_named(section)} kind {tag!r} is registered twice ({taken.__module__}, "
                        f"{spec_type.__module__})")  # fmt: skip
    _PLUGIN_SPECS[section][tag] = spec_type


def _built_in_variant(section: Section, tag: str) -> bool:
    kind, _, variant = tag.partition(".")
    return kind in _VARIANTS.get(section, {}) and variant in _VARIANTS[section][kind][1]


def plugin_spec(section: Section, tag: str) -> type | None:
    """The plug-in spec class for a tag no built-in spec has, loading the installed plug-ins if needed.
    A plug-in that failed to load is named when no other one adds the tag: it may be the one that would."""
    if tag not in _PLUGIN_SPECS[section]:
        load_entry_points()
    if tag not in _PLUGIN_SPECS[section] and _failed:
        raise UserError(f"{_failed[0]} (it may add {_named(section)} kind {tag!r}; fix or uninstall that package)")
    return _PLUGIN_SPECS[section].get(tag)


def loaded_plugin_spec(section: Section, tag: str) -> type | None:
    """The spec class for a tag among the plug-ins imported so far; loads none."""
    return _PLUGIN_SPECS[section].get(tag)


def plugin_kinds(section: Section) -> list[str]:
    return sorted(_PLUGIN_SPECS[section])


def plugin_specs() -> list[type]:
    """Every plug-in spec class loaded so far."""
    return [spec for specs in _PLUGIN_SPECS.values() for spec in specs.values()]


def plugin_spec_named(values: dict[str, Any]) -> type | None:
    """The loaded plug-in spec a recipe section's scalar values name (`kind`, `kind` + `mode`, `format`)."""
    for section, selector in SELECTORS.items():
        tag = values.get(selector)
        variant = _VARIANTS.get(section, {}).get(tag) if isinstance(tag, str) else None
        if variant is not None:
            tag = f"{tag}.{values.get(variant[0])}"
        if isinstance(tag, str) and tag in _PLUGIN_SPECS[section]:
            return _PLUGIN_SPECS[section][tag]
    return None


def load_entry_points(select: Callable[[Any], Any] = entry_points) -> list[str]:
    """Import every module of group `modelshrink.plugins` (each registers its specs as it is imported),
    once; returns the names of those that loaded. One that fails to import does not stop the others: it
    is named (one line, no traceback) when a recipe's kind is then found in none (`plugin_spec`)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    _loaded = []
    for point in select(group=GROUP):
        try:
            point.load()
        except (Exception, SystemExit) as exc:  # whatever the plug-in's import raises (exit too): theirs to fix
            _failed.append(f"plug-in {point.name!r} ({point.value}) failed to load: {type(exc).__name__}: "
                           f"{first_line(exc)}")  # fmt: skip
            continue
        _loaded.append(point.name)
    return _loaded
