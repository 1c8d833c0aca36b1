"""The recipe's JSON Schema and the recipes reference page written from it, so that the schema's field
descriptions are the one source of every key: `modelshrink schema` prints the schema (editors complete and
check keys with it: `# yaml-language-server: $schema=...` atop a recipe), docs/reference/recipe.md is this
module's `markdown()`, and a test fails when the committed page or schema files are stale.

Two adjustments to what pydantic writes (a section's string shorthand is written by `schema.Shorthand`):
a stage variant's `method` / `mode` is required where it is not the default, so that a validator can tell
the variants apart, and, in the schema for `tune` recipes, `{search: [...]}` or `{search: {min, max,
step}}` may stand in place of any stage value.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"
SEARCH_SPACE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["search"],
    "properties": {
        "search": {
            "description": "the values `modelshrink tune` tries: a list, or a range {min, max, step}",
            "anyOf": [
                {"type": "array", "minItems": 1},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["min", "max", "step"],
                    "properties": {"min": {"type": "number"}, "max": {"type": "number"}, "step": {"type": "number"}},
                },
            ],
        }
    },
}


def json_schema(searchable: bool = False) -> dict[str, Any]:
    """The recipe's JSON Schema; `searchable`: as `tune` reads recipes, any stage value may be a search space."""
    from modelshrink.recipe.recipe import Recipe

    found = Recipe.model_json_schema()
    _selectors_required(found["$defs"])
    if searchable:
        found.setdefault("$defs", {})["SearchSpace"] = SEARCH_SPACE
        for name in _stage_definitions(found):
            for key, prop in found["$defs"][name].get("properties", {}).items():
                if key not in ("kind", "mode", "method", "name"):
                    found["$defs"][name]["properties"][key] = {
                        "anyOf": [prop, {"$ref": "#/$defs/SearchSpace"}],
                        **({"description": prop["description"]} if "description" in prop else {}),
                    }
    kind = "tune recipe (search spaces allowed in stages)" if searchable else "recipe"
    return {"$schema": SCHEMA_URL, **found, "title": f"modelshrink {kind}"}


def _selectors_required(defs: dict[str, Any]) -> None:
    """A stage's `method` / `mode` picks its variant and may be left out for the default one only: the
    other variants must name it, or `{kind: prune}` would match every prune variant (their selectors all
    have defaults) and no schema validator could tell which."""
    from modelshrink.recipe.stage_specs import VARIANTS

    for selector, default, variants in VARIANTS.values():
        for cls in {cls for tag, cls in variants.items() if tag != default}:
            definition = defs[cls.__name__]
            definition["properties"][selector].pop("default", None)
            definition["required"] = sorted({*definition.get("required", []), selector})


def _stage_definitions(found: dict[str, Any]) -> list[str]:
    """The definitions a stage may be (the members of `stages`' union)."""
    return sorted(_refs(found["properties"]["stages"]["items"]))


def _refs(node: Any) -> set[str]:
    """The definitions named anywhere under `node`."""
    if isinstance(node, dict):
        own = {node["$ref"].rsplit("/", 1)[1]} if "$ref" in node else set()
        return own.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def to_json(searchable: bool = False) -> str:
    return json.dumps(json_schema(searchable), indent=2, sort_keys=False) + "\n"


# ------------------------------------------------------------------------------------------- markdown
def markdown() -> str:
    """docs/reference/recipe.md: each section of a recipe with every key's type, default and description,
    in the order a recipe is written (sections reached first, a union's members as its `kind` names them)."""
    found = json_schema()
    defs = found["$defs"]
    lines = [
        "# Recipe reference",
        "",
        "<!-- Written by `modelshrink schema --markdown` from the recipe's schema; edit the descriptions in",
        "     modelshrink/recipe/, not this page (tests/test_reference.py fails when it is stale). -->",
        "",
        "Every key a recipe takes, section by section. A recipe is YAML; unknown keys and bad values are",
        "refused with one line naming the file, line and key (exit 2). The JSON Schema behind this page is",
        "`modelshrink schema` (and `docs/recipe.schema.json`, `docs/tune-recipe.schema.json` for recipes with",
        "search spaces): start a recipe with `# yaml-language-server: $schema=<path to it>` and an editor",
        "completes and checks its keys.",
        "",
        "## The recipe",
        "",
        *_table(found, defs),
    ]
    for name, where in _sections(found, defs):
        definition = defs[name]
        lines += ["", f'<a id="{name}"></a>', "", f"## {where}", ""]
        if definition.get("description"):
            lines += [_one_line(definition["description"]), ""]
        target = next((d for d in definition.get("anyOf", []) if "properties" in d), definition)
        lines += _table(target, defs)
    return "\n".join(lines) + "\n"


def _sections(found: dict[str, Any], defs: dict[str, Any]) -> list[tuple[str, str]]:
    """Each definition with the path where a recipe first reaches it (breadth first from the top)."""
    order: list[tuple[str, str]] = []
    seen: set[str] = set()
    queue: list[tuple[dict[str, Any], str]] = [(found, "")]
    while queue:
        node, prefix = queue.pop(0)
        target = next((d for d in node.get("anyOf", []) if "properties" in d), node)
        properties = target.get("properties", {})
        for key, prop in properties.items():
            for name in sorted(_refs(prop), key=_ref_order(prop)):
                if name in seen or name not in defs:
                    continue
                seen.add(name)
                # keys of this section that hold the same kind of value (a bound on each metric)
                keys = [other for other, p in properties.items() if name in _refs(p)]
                path = f"{prefix}{key}" if len(keys) == 1 else f"{prefix}<key>"
                label = _variant(defs[name]) or (f"key: {', '.join(keys)}" if len(keys) > 1 else "")
                order.append((name, f"`{path}`" + (f" ({label})" if label else "")))
                queue.append((defs[name], f"{path}{'[]' if _is_list(prop) else ''}."))
    return order


def _ref_order(prop: dict[str, Any]) -> Any:
    """Definitions in the order the schema lists them (a union's members as declared)."""
    text = json.dumps(prop)
    return lambda name: text.find(f'"$ref": "#/$defs/{name}"')


def _is_list(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "array" or any(p.get("type") == "array" for p in prop.get("anyOf", []))


def _variant(definition: dict[str, Any]) -> str:
    """`kind: quantize, mode: static`: the fixed values that pick this member of a union."""
    props = definition.get("properties", {})
    fixed = [f"{key}: {' or '.join(map(str, props[key].get('enum', [props[key].get('const')])))}"
             for key in ("kind", "method", "mode", "format")
             if key in props and ("const" in props[key] or "enum" in props[key])]  # fmt: skip
    return ", ".join(fixed)


def _table(node: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    required = set(node.get("required", []))
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, prop in node.get("properties", {}).items():
        default = "required" if key in required else _default(prop)
        rows.append(f"| `{key}` | {_type(prop)} | {default} | {_one_line(prop.get('description', ''))} |")
    if isinstance(node.get("additionalProperties"), dict):
        extra = node["additionalProperties"]
        rows.append(f"| *any other key* | {_type(extra)} | | {_one_line(extra.get('description', ''))} |")
    return rows


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return ""
    return f"`{json.dumps(prop['default'])}`".replace("|", "\\|")


def _type(prop: dict[str, Any]) -> str:
    """A property's type in words: `integer ≥ 1`, `list of [StageSpec](#...)`, `"a" \\| "b"`."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name})"
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    for union in ("anyOf", "oneOf"):
        if union in prop:
            return " or ".join(dict.fromkeys(_type(p) for p in prop[union]))
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"mapping of name to {_type(prop['additionalProperties'])}"
    bounds = [f"{sign} {prop[key]}" for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"),
              ("maximum", "≤"), ("exclusiveMaximum", "<")) if key in prop]  # fmt: skip
    if prop.get("format") == "path":
        kind = "path"
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
