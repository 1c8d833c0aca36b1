"""Recipe: YAML in, typed immutable `Recipe` out (no torch import here, so `validate` stays fast)."""

from modelshrink.recipe.parse import load_recipe, parse_recipe
from modelshrink.recipe.recipe import Recipe

__all__ = ["Recipe", "load_recipe", "parse_recipe"]
