"""Read a recipe file, apply `--set` overrides, validate, and explain every error by path and line.

PyYAML's composed node tree keeps line marks that `safe_load` drops; we walk it beside pydantic's
error locations so that a message reads `recipe.yaml:14 stages[1].amount: must be in (0, 1), got 1.5`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from modelshrink.errors import UserError
from modelshrink.recipe.recipe import Recipe

_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# A recipe is a page of settings. These bound what a hostile or broken file can cost before it is
# rejected: YAML aliases can expand a few lines into billions of nodes ("billion laughs").
MAX_RECIPE_BYTES = 1_000_000
MAX_EXPANDED_NODES = 100_000


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Parse and validate a recipe file; raise UserError with file:line messages on any problem."""
    return parse_recipe(read_recipe_text(path), source=str(path), overrides=overrides)


def read_recipe_text(path: str | Path) -> str:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise UserError(f"{path}: recipe is larger than {MAX_RECIPE_BYTES:,} bytes")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read recipe ({exc})") from None


def parse_recipe(text: str, source: str = "<recipe>", overrides: Sequence[str] = ()) -> Recipe:
    parsed = parse_raw(text, source, overrides)
    _refuse_search_spaces(parsed)
    return validate_raw(parsed)


class RawRecipe:
    """A recipe's YAML data (overrides applied) with what explains errors in it by line."""

    def __init__(self, data: dict[str, Any], root: yaml.Node | None, source: str, overridden: list[list[str | int]]):
        self.data, self.root, self.source, self.overridden = data, root, source, overridden

    def where(self, path: Sequence[str | int]) -> str:
        """`file:line path` (or `--set path`) for a location in the recipe."""
        _, node = _locate(tuple(path), self.root)
        for over in self.overridden:
            if list(path[: len(over)]) == over:
                return f"--set {format_path(path)}"
        return f"{self.source}:{node.start_mark.line + 1} {format_path(path)}" if node is not None else self.source


def is_search_space(node: Any) -> bool:
    """`{search: ...}`: a value `modelshrink tune` chooses (`recipe.search`)."""
    return isinstance(node, dict) and set(node) == {"search"}


def containers(data: Any) -> Iterator[tuple[list[str | int], Any]]:
    """Every value in the recipe's data with its path, each dict or list once (a recursive YAML alias
    makes the data contain itself; validation then refuses it in one line)."""
    seen: set[int] = set()
    stack: list[tuple[list[str | int], Any]] = [([], data)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if isinstance(node, dict | list) and id(node) not in seen:
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend(([*path, key], value) for key, value in reversed(list(items)))


def _refuse_search_spaces(parsed: RawRecipe) -> None:
    for path, node in containers(parsed.data):
        if is_search_space(node):
            raise UserError(
                f"{parsed.where(path)}: a search space; run `modelshrink tune` on this recipe, or choose a value"
            )


def validate_raw(parsed: RawRecipe, data: dict[str, Any] | None = None) -> Recipe:
    """Validate `data` (default: the parsed data) as a recipe, explaining errors by the parsed file's lines."""
    try:
        return Recipe.model_validate(parsed.data if data is None else data)
    except ValidationError as exc:
        lines = [_explain(err, parsed.root, parsed.source, parsed.overridden) for err in exc.errors()]
        raise UserError(*dict.fromkeys(lines)) from None


def parse_raw(text: str, source: str = "<recipe>", overrides: Sequence[str] = ()) -> RawRecipe:
    if len(text) > MAX_RECIPE_BYTES:
        raise UserError(f"{source}: recipe is larger than {MAX_RECIPE_BYTES:,} bytes")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            _check_tree(root, source)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{where} invalid YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{source}: recipe is nested too deeply") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a YAML mapping (model, data, stages, output, ...)")
    overridden = [apply_override(data, item) for item in overrides]
    parsed = RawRecipe(data, root, source, overridden)
    _refuse_surrogates(parsed)
    return parsed


def _refuse_surrogates(parsed: RawRecipe) -> None:
    """A lone surrogate (non-UTF-8 bytes in `--set`, which the shell passes surrogate-escaped, or a YAML
    "\\udcff" escape) cannot be written into report.md: refused now rather than after the whole run."""
    for path, node in containers(parsed.data):
        texts = (
            [f"key {k!r}" for k in node if isinstance(k, str) and not _encodable(k)] if isinstance(node, dict) else []
        )
        texts += [repr(node)] if isinstance(node, str) and not _encodable(node) else []
        if texts:  # the location names the key's parent: a key that cannot be printed cannot name itself
            raise UserError(f"{parsed.where(path)}: {texts[0]} is not valid unicode text (a lone surrogate)")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_tree(root: yaml.Node, source: str) -> None:
    """Reject duplicate keys (PyYAML keeps the last silently) and alias expansions past the node budget.

    Sizes are memoised per node, so an alias bomb is measured without being expanded."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a recursive alias counts once instead of looping
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    line, first = key.start_mark.line + 1, seen.get(key.value)
                    if first is not None:
                        raise UserError(f"{source}:{line} key {key.value!r} is given twice (also line {first})")
                    seen[key.value] = line
                total += size(key) + size(value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        if total > MAX_EXPANDED_NODES:
            raise UserError(f"{source}: recipe expands to more than {MAX_EXPANDED_NODES:,} values (YAML aliases?)")
        sizes[id(node)] = total
        return total

    size(root)


def apply_override(data: dict[str, Any], item: str) -> list[str | int]:
    """Set `a.b[1].c=value` (value parsed as YAML) inside `data`; return the path that was set."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.checkpoint=nightly.pt")
    path = parse_path(key.strip())
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"--set {key}: value {raw!r} is not valid YAML; quote it, e.g. --set '{key}=\"...\"'") from None
    node: Any = data
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise UserError(f"--set {key}: {format_path(path[: i + 1])} does not exist in the recipe")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {format_path(path[:i])} is not a mapping")
            node = node.setdefault(part, [] if isinstance(nxt, int) else {})
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise UserError(f"--set {key}: {format_path(path)} does not exist in the recipe")
    elif not isinstance(node, dict):
        raise UserError(f"--set {key}: {format_path(path[:-1])} is not a mapping")
    node[last] = value
    return path


def parse_path(key: str) -> list[str | int]:
    """`stages[1].amount` or `stages.1.amount` -> ['stages', 1, 'amount']."""
    parts: list[str | int] = []
    for name, index in _PATH_TOKEN.findall(key):
        if index:
            parts.append(int(index))
        else:
            parts.append(int(name) if name.isdecimal() else name)  # isdigit() admits "¹", which int() refuses
    if not parts:
        raise UserError(f"--set {key!r}: empty key")
    return parts


def format_path(path: Iterable[str | int]) -> str:
    """`stages[0].amount`; a key that is not one line of printable text is shown as its repr, so that an
    error about it stays one line and shows what is odd about the key."""
    out = ""
    for part in path:
        key = part if isinstance(part, int) or part.isprintable() else repr(part)
        out += f"[{key}]" if isinstance(part, int) else (f".{key}" if out else key)
    return out or "recipe"


def _explain(err: dict[str, Any], root: yaml.Node | None, source: str, overridden: list[list[str | int]]) -> str:
    loc = err["loc"]
    if err["type"] == "union_tag_invalid":  # point at the key holding the unknown tag
        loc = (*loc, _selector(err))
    path, node = _locate(loc, root)
    message = _message(err, path)
    spec_type = _plugin_spec_at(path[:-1], root) if err["type"] == "extra_forbidden" else None
    if spec_type is not None:  # a plug-in's section: its own keys, which the schema's unions do not know
        message = f"unknown key {path[-1]!r}" + _did_you_mean(path[-1], sorted(spec_type.model_fields))
    for over in overridden:
        if path[: len(over)] == over or over[: len(path)] == path:
            return f"--set {format_path(path)}: {message}"
    where = f"{source}:{node.start_mark.line + 1}" if node is not None else source
    return f"{where} {format_path(path)}: {message}"


def _locate(loc: tuple[Any, ...], root: yaml.Node | None) -> tuple[list[str | int], yaml.Node | None]:
    """Follow pydantic's location through the YAML tree, dropping union tags that are not in the file."""
    path: list[str | int] = []
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
            if child is None:
                if isinstance(part, str) and part in _union_tags():
                    continue
                path.append(part)
                node = next((k for k, _ in node.value if k.value == part), node)
                continue
            path.append(part)
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            path.append(part)
            node = node.value[part]
        elif isinstance(part, str) and part in _union_tags():
            continue
        else:
            path.append(part)
    return path, node


def _union_tags() -> set[str]:
    """Tag values pydantic puts into locations of tagged unions (e.g. 'prune', 'channel', 'digits')."""
    from modelshrink.recipe import export_specs, schema, stage_specs

    tags: set[str] = set(stage_specs.KINDS) | set(export_specs.FORMATS)
    for _, _, variants in stage_specs.VARIANTS.values():
        tags.update(variants)
    for cls in vars(schema).values():
        if isinstance(cls, type) and issubclass(cls, BaseModel) and "kind" in cls.model_fields:
            tags.update(getattr(cls.model_fields["kind"].annotation, "__args__", ()))
    return tags


def _plugins(path: list[str | int]) -> str:
    """The kinds installed plug-ins add to this section (none are loaded for a recipe of built-in kinds)."""
    from modelshrink.recipe.kinds import load_entry_points, plugin_kinds

    sections = {"stages": "stage", "export": "export", "data": "data", "metrics": "metric"}
    section = next((sections[p] for p in reversed(path) if isinstance(p, str) and p in sections), None)
    if not load_entry_points() or section is None:
        return ""
    added = plugin_kinds(section)  # type: ignore[arg-type]
    if not added:
        return " (installed plug-ins add none)"
    return f", or one an installed plug-in adds: {', '.join(map(repr, added))}"


def _selector(err: dict[str, Any]) -> str:
    """The key a tagged union chose by: pydantic writes "'kind'" for a field and "method()" for a function."""
    return str((err.get("ctx") or {}).get("discriminator", "kind")).removesuffix("()").strip("'")


def _stage_variant(loc: tuple[Any, ...]) -> tuple[str, str, type[BaseModel]] | None:
    """(kind, variant tag, spec class) for an error on a field of a stage whose kind has variants
    (`{kind: prune, method: channel}`): loc is (..., 'prune', 'channel', field)."""
    from modelshrink.recipe.stage_specs import VARIANTS

    if len(loc) >= 3 and loc[-3] in VARIANTS and loc[-2] in VARIANTS[loc[-3]][2]:
        return loc[-3], loc[-2], VARIANTS[loc[-3]][2][loc[-2]]
    return None


def _message(err: dict[str, Any], path: list[str | int]) -> str:
    from modelshrink.recipe.stage_specs import VARIANTS, where_key_applies

    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    variant = _stage_variant(err["loc"])
    if kind == "extra_forbidden":
        field = path[-1] if path else "?"
        if variant is not None:
            applies = where_key_applies(variant[0], str(field))
            if applies is not None:
                return f"{field!r} applies to {applies[0]} {' / '.join(applies[1])} only"
            return f"unknown key {field!r}" + _did_you_mean(field, sorted(variant[2].model_fields))
        return f"unknown key {field!r}" + _did_you_mean(field, _section_fields(path[:-1]))
    if kind == "missing":
        return "required"
    if kind == "union_tag_invalid":
        return (
            f"unknown {_selector(err)} {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}{_plugins(path)}"
        )
    if kind == "union_tag_not_found":
        return "missing 'kind'"
    msg = msg.removeprefix("Value error, ")
    if kind == "literal_error" and variant is not None:
        msg += f" with {VARIANTS[variant[0]][0]} {variant[1]!r}"
    shown = "input" in err and str(err["input"]) in msg  # a message that names its value already
    if "input" in err and not isinstance(err["input"], dict | list) and not shown:
        msg += f", got {err['input']!r}"
    return msg


def _did_you_mean(field: Any, here: list[str] | None) -> str:
    """A close key of the same section; else that section's keys; else a close key anywhere."""
    close = difflib.get_close_matches(str(field), here if here is not None else _known_keys(), n=1)
    if close and close[0] != str(field):
        return f" (did you mean {close[0]!r}?)"
    elsewhere = " here: it belongs to other sections" if close else ""  # a real key in the wrong place
    return f"{elsewhere} (keys here: {', '.join(here)})" if here else elsewhere


def _section_fields(path: list[str | int]) -> list[str] | None:
    """The keys allowed at `path`, for sections of a single model type (not unions such as stages or data)."""
    cls: Any = Recipe
    for part in path:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        models = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and
                  issubclass(a, BaseModel)]  # fmt: skip
        if len(models) != 1:  # no section, or a union of several (stages, data)
            return None
        cls = models[0]
    return sorted(cls.model_fields)


def _plugin_spec_at(path: list[str | int], root: yaml.Node | None) -> type[BaseModel] | None:
    """The plug-in spec class of the YAML mapping at `path`, by its kind (and mode) or format; None for
    a built-in section or one that is not in the file (a --set override)."""
    from modelshrink.recipe.kinds import plugin_spec_named

    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return None
    if not isinstance(node, yaml.MappingNode):
        return None
    values = {k.value: v.value for k, v in node.value if isinstance(v, yaml.ScalarNode)}
    return plugin_spec_named(values)


def _known_keys() -> list[str]:
    from modelshrink.recipe import kinds, schema, stage_specs

    keys: set[str] = set()
    for cls in [*vars(schema).values(), *vars(stage_specs).values(), *kinds.plugin_specs()]:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            keys.update(cls.model_fields)
    return sorted(keys)
