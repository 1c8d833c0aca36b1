"""modelshrink: make PyTorch models smaller and faster from a YAML recipe, and prove it with numbers.

Public API (mirrors the CLI; torch is imported only when a function is called):

    report = modelshrink.run_recipe("recipes/resnet50_prune20.yaml", overrides=["seed=1"])
    result = modelshrink.compress(model, [{"kind": "prune", "amount": 0.3}], data={"kind": "digits"})
    model = modelshrink.load("runs/resnet50_prune20/model.pt")
    info = modelshrink.inspect("runs/resnet50_prune20/model.pt")
    recipe = modelshrink.validate("recipes/resnet50_prune20.yaml")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelshrink.version import __version__

if TYPE_CHECKING:
    from torch import nn

    from modelshrink.engine import compress
    from modelshrink.recipe.recipe import Recipe

__all__ = ["__version__", "compress", "inspect", "load", "run_recipe", "validate"]


def validate(recipe: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Parse and validate a recipe file; raises `UserError` naming the field and line."""
    from modelshrink.recipe import load_recipe

    return load_recipe(recipe, overrides)


def run_recipe(
    recipe: str | Path | Recipe,
    *,
    output_dir: str | Path | None = None,
    force: bool = False,
    resume: bool = False,
    overrides: Sequence[str] = (),
    trust: Sequence[str] = (),
    junit: str | Path | None = None,
    verbose: bool | None = None,
    compare_to: str | Path | None = None,
) -> dict[str, Any] | None:
    """Run a recipe (a path or a `Recipe`) end to end; returns the report dict that report.json holds.

    Libraries' warnings are counted into the report's findings; `verbose` prints them as they come too
    (None: as an enclosing `quiet.collected` says, else not).

    `trust` adds modules whose factories the model checkpoint may name (as `model.trust` does).
    `junit` also writes the gates as JUnit XML to that file (checked writable before any work).
    `compare_to` gates regressions against an earlier report.json (as `constraints.compare_to` does).
    `resume` continues an interrupted run of the same recipe. Raises `UserError` for bad input and
    `ConstraintFailed` (after writing the reports) when a gate fails. Returns None on ranks other
    than 0 of a multi-process (torchrun) run."""
    from modelshrink import recipe_run
    from modelshrink.recipe import Recipe as RecipeType
    from modelshrink.recipe import load_recipe

    if isinstance(recipe, RecipeType):
        if overrides:
            raise TypeError("overrides apply to recipe files; use recipe.model_copy(update=...) for objects")
        parsed, source = recipe, None
    else:
        parsed, source = load_recipe(recipe, overrides), str(recipe)
    return recipe_run.run(
        parsed.trusting(trust),
        output_dir=Path(output_dir) if output_dir else None,
        force=force,
        resume=resume,
        recipe_source=source,
        junit=Path(junit) if junit else None,
        verbose=verbose,
        compare_to=Path(compare_to) if compare_to else None,
    )


def __getattr__(name: str) -> Any:
    """`modelshrink.compress` is `engine.compress`, imported (with torch) on first use."""
    if name == "compress":
        from modelshrink.engine import compress

        return compress
    raise AttributeError(f"module 'modelshrink' has no attribute {name!r}")


def load(path: str | Path, *, allow_pickle: bool = False, trust: Sequence[str] = ()) -> nn.Module:
    """Rebuild a compressed model from its checkpoint, in eval mode, without the recipe.

    A checkpoint that names a factory outside modelshrink (`pkg.module:fn`) is rebuilt only when
    `trust` names that module: building it imports and runs that code."""
    from modelshrink.loading import load_checkpoint

    return load_checkpoint(path, allow_pickle=allow_pickle, trust=trust)


def inspect(path: str | Path, *, allow_pickle: bool = False, trust: Sequence[str] = ()) -> dict[str, Any]:
    """Per-layer and total parameters, sparsity, dtypes and bytes of a checkpoint or state_dict.

    An untrusted factory is not built: the layers then come from the state_dict alone (no MACs)."""
    from modelshrink.inspection import inspect_file

    return inspect_file(path, allow_pickle=allow_pickle, trust=trust)
