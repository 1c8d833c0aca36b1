"""Plug-ins: a package installed with pip adds a model source, a stage, a data kind and a metric through an
entry point of group `modelshrink.plugins`, registered by spec type with the same decorator as the built-in ones.

The example package (examples/plugin, also docs/extending.md's worked example) is installed with pip
into a folder of its own (`--target`) that the commands run with on their path: pip writes the
entry-point metadata there exactly as into a virtual environment, and the shared one stays untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IRIS_RECIPE = {
    "model": {"source": {"kind": "iris_mlp", "hidden": 32}},
    "data": {"kind": "iris", "batch_size": 16},
    "stages": [
        {"kind": "finetune", "epochs": 15, "lr": 0.01},
        {"kind": "clip_weights", "percentile": 99},
        {"kind": "prune", "amount": 0.3},
    ],
    "evaluate": {"metrics": [{"kind": "macro_f1"}], "latency": {"batch_size": 4, "warmup": 1, "iterations": 3}},
    "constraints": {"macro_f1": {"min": 0.6}},
}


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(ROOT / "examples" / "plugin")],
        check=True, capture_output=True, cwd=tmp_path_factory.mktemp("build"),
    )  # fmt: skip
    return target


def _modelshrink(args: list[str], plugin_path: Path, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "modelshrink.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _recipe(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump({**IRIS_RECIPE, "output": {"dir": str(tmp_path / "out")}, **changes}))
    return path


@pytest.fixture(scope="module")
def iris_run(plugin_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of the recipe of plug-in kinds, shared by the tests that read what it wrote."""
    tmp_path = tmp_path_factory.mktemp("iris")
    result = _modelshrink(["run", str(_recipe(tmp_path)), "--json"], plugin_path, tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "out"


def test_a_recipe_runs_the_plugins_source_stage_data_kind_and_metric(iris_run: Path) -> None:
    report = json.loads((iris_run / "report.json").read_text())
    assert [stage["kind"] for stage in report["stages"]] == ["finetune", "clip_weights", "prune"]
    assert report["stages"][1]["params"] == {"percentile": 99.0}
    assert any("clipped" in finding and "99.0 percentile" in finding for finding in report["findings"])
    assert report["custom_metrics"] == {"macro_f1": "higher"}
    assert report["final"]["custom"]["macro_f1"] > 0.6  # trained on the plug-in's data, scored by its metric
    assert report["recipe"]["data"] == {**report["recipe"]["data"], "kind": "iris", "val_fraction": 0.3}
    assert [gate["name"] for gate in report["constraints"]] == ["macro_f1.min"]
    assert report["recipe"]["model"]["source"] == {"kind": "iris_mlp", "hidden": 32}


def test_a_checkpoint_of_a_plugin_source_loads_only_when_its_module_is_trusted(
    plugin_path: Path, iris_run: Path, tmp_path: Path
) -> None:
    """The checkpoint names the plug-in's module, so loading it elsewhere imports that module only as the
    user's trust allows, exactly as for a factory; `inspect` shows it without importing it."""
    load = (
        "import sys, torch, modelshrink\n"
        "from modelshrink.errors import UserError\n"
        "try:\n"
        "    model = modelshrink.load({path!r}, trust={trust!r})\n"
        "except UserError as exc:\n"
        "    print('refused:', exc, 'modelshrink_iris' in sys.modules)\n"
        "else:\n"
        "    print(type(model).__name__, tuple(model(torch.zeros(2, 4)).shape), model[0].out_features)\n"
    )
    path = str(iris_run / "model.pt")
    refused = _modelshrink([], plugin_path, tmp_path, load.format(path=path, trust=[]))
    assert refused.stdout.startswith("refused:") and "--trust modelshrink_iris" in refused.stdout, refused.stderr
    assert refused.stdout.split()[-1] == "False"  # not imported to find out
    loaded = _modelshrink([], plugin_path, tmp_path, load.format(path=path, trust=["modelshrink_iris"]))
    assert loaded.stdout.split() == ["Sequential", "(2,", "3)", "32"], loaded.stderr
    shown = _modelshrink(["inspect", path, "--json"], plugin_path, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["untrusted_factory"] == "modelshrink_iris:iris_mlp"


def test_the_plugin_is_imported_only_for_a_kind_that_is_not_built_in(plugin_path: Path, tmp_path: Path) -> None:
    check = (
        "import sys, modelshrink\n"
        "before = 'modelshrink_iris' in sys.modules\n"
        "modelshrink.validate({!r})\n"
        "print(before, 'modelshrink_iris' in sys.modules)"
    )
    built_in = tmp_path / "built_in.yaml"
    zoo_mlp = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "num_classes": 10}}
    built_in.write_text(yaml.safe_dump({**IRIS_RECIPE, "model": zoo_mlp, "data": {"kind": "digits"}, "stages": [],
                                        "evaluate": {}, "constraints": {}, "output": {"dir": "out"}}))  # fmt: skip
    result = _modelshrink([], plugin_path, tmp_path, check.format(str(built_in)))
    assert result.stdout.split() == ["False", "False"], result.stderr
    result = _modelshrink([], plugin_path, tmp_path, check.format(str(_recipe(tmp_path))))
    assert result.stdout.split() == ["False", "True"], result.stderr


def test_a_plugins_spec_is_validated_like_a_built_in_one(plugin_path: Path, tmp_path: Path) -> None:
    bad_stage = [{"kind": "clip_weights", "percentile": 20}]
    result = _modelshrink(["run", str(_recipe(tmp_path, stages=bad_stage))], plugin_path, tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "stages[0].percentile" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
    unknown = _modelshrink(["run", str(_recipe(tmp_path, data={"kind": "irsi"}))], plugin_path, tmp_path)
    assert unknown.returncode == 2 and "data" in unknown.stderr and unknown.stderr.count("\n") == 1, unknown.stderr
    source = {"source": {"kind": "iris_mlp", "hidden": 32, "width": 3}}
    typo = _modelshrink(["run", str(_recipe(tmp_path, model=source))], plugin_path, tmp_path)
    assert typo.returncode == 2 and "model.source" in typo.stderr and "hidden" in typo.stderr, typo.stderr
    unknown_source = _recipe(tmp_path, model={"source": {"kind": "iris_cnn"}})
    missing = _modelshrink(["run", str(unknown_source)], plugin_path, tmp_path)
    assert missing.returncode == 2 and "iris_mlp" in missing.stderr and missing.stderr.count("\n") == 1, missing.stderr


@pytest.mark.parametrize("failure", ["raise RuntimeError('needs a GPU driver')", "raise SystemExit(0)"])
def test_a_plugin_that_fails_to_import_is_one_line_and_blocks_no_other(
    plugin_path: Path, tmp_path: Path, failure: str
) -> None:
    broken = tmp_path / "site"
    (broken / "broken_plugin-0.1.dist-info").mkdir(parents=True)
    (broken / "broken_plugin-0.1.dist-info" / "METADATA").write_text("Name: broken-plugin\nVersion: 0.1\n")
    (broken / "broken_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[modelshrink.plugins]\nbroken = broken_plugin\n"
    )
    (broken / "broken_plugin.py").write_text(f"{failure}\n")
    recipe = str(_recipe(tmp_path))
    alone = _modelshrink(["run", recipe], broken, tmp_path)  # the kinds are in no plug-in that loads
    assert alone.returncode == 2 and not (tmp_path / "out").exists()
    reason = "RuntimeError: needs a GPU driver" if "Runtime" in failure else "SystemExit: 0"
    assert alone.stderr.strip() == (
        f"error: plug-in 'broken' (broken_plugin) failed to load: {reason} (it may add model source kind 'iris_mlp'; "
        "fix or uninstall that package)"
    ), alone.stderr
    beside = _modelshrink(["validate", recipe], Path(f"{plugin_path}{os.pathsep}{broken}"), tmp_path)
    assert beside.returncode == 0, beside.stderr  # the iris plug-in still serves its kinds


def test_a_quantization_mode_registers_as_a_variant_of_the_built_in_kind() -> None:
    """A quantize backend is a mode's spec and its stage, registered with the same decorator: `kind: quantize`
    with a mode no built-in spec has picks it, and `mode: auto` could list it among its candidates."""
    import torch
    from torch import nn

    from modelshrink.engine import compress
    from modelshrink.extend import Stage, StageContext, register
    from modelshrink.recipe.stage_specs import BaseQuantizeSpec, parse_stage
    from tests.conftest import FAST_EVAL, tensor_data

    class RoundedSpec(BaseQuantizeSpec):
        mode: Literal["rounded_test"]

    @register(RoundedSpec)
    class Rounded(Stage[RoundedSpec]):
        def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.copy_(torch.round(parameter * 16) / 16)
            return model

    assert type(parse_stage({"kind": "quantize", "mode": "rounded_test"})) is RoundedSpec
    assert type(parse_stage({"kind": "quantize", "mode": "static"})).__name__ == "StaticQuantSpec"
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    result = compress(model, [{"kind": "quantize", "mode": "rounded_test"}], data=tensor_data(torch.randn(8, 1, 4, 4),
                      num_classes=4), evaluate=FAST_EVAL)  # fmt: skip
    assert result.stages[0].kind == "quantize" and result.stages[0].params["mode"] == "rounded_test"
    assert torch.equal(model[1].weight * 16, torch.round(model[1].weight * 16))


def test_register_refuses_what_is_no_spec_a_kind_taken_twice_and_a_built_in_one() -> None:
    from modelshrink.extend import BaseMetricSpec, BaseStageSpec, register
    from modelshrink.recipe.stage_specs import UnstructuredPruneSpec

    with pytest.raises(TypeError, match="is not a spec of any seam"):
        register(dict)

    class Prune(BaseStageSpec):  # a plug-in may not stand in for a built-in kind, nor its handler
        kind: Literal["prune"]

    with pytest.raises(TypeError, match="stage kind 'prune' is built in"):
        register(Prune)(lambda *args: None)
    with pytest.raises(TypeError, match="UnstructuredPruneSpec is handled by modelshrink's UnstructuredPrune"):
        register(UnstructuredPruneSpec)(type("Evil", (), {}))

    class First(BaseMetricSpec):
        kind: Literal["twice_test"]

    class Second(BaseMetricSpec):
        kind: Literal["twice_test"]

    register(First)(lambda *args: {})
    with pytest.raises(TypeError, match="registered twice"):
        register(Second)(lambda *args: {})
