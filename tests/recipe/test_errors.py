"""Recipe validation: every error names its path and YAML line (or --set), and nothing runs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from modelshrink.errors import UserError
from modelshrink.recipe import load_recipe, parse_recipe

VALID = textwrap.dedent(
    """\
    model:
      torchvision: resnet18
      num_classes: 10
    data:
      kind: digits
    stages:
      - kind: finetune
        epochs: 1
      - kind: prune
        amount: 0.3
    output:
      dir: runs/x
    """
)


def errors_of(text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(UserError) as info:
        parse_recipe(text, source="r.yaml", overrides=overrides or [])
    return str(info.value)


def test_valid_recipe_parses_into_typed_stages() -> None:
    recipe = parse_recipe(VALID)
    assert [s.kind for s in recipe.stages] == ["finetune", "prune"]
    assert recipe.stages[1].amount == 0.3
    assert recipe.stage_names() == ["finetune1", "prune2"]


def test_out_of_range_value_names_path_and_line() -> None:
    assert errors_of(VALID.replace("amount: 0.3", "amount: 1.5")) == (
        "r.yaml:10 stages[1].amount: must be in (0, 1), got 1.5"
    )


def test_unknown_key_is_rejected_with_a_suggestion() -> None:
    message = errors_of(VALID.replace("    epochs: 1", "    epoch: 1"))
    assert message == "r.yaml:8 stages[0].epoch: unknown key 'epoch' (did you mean 'epochs'?)"


def test_unknown_stage_kind_lists_the_known_ones() -> None:
    message = errors_of(VALID.replace("kind: prune", "kind: prun"))
    assert message.startswith("r.yaml:9 stages[1].kind: unknown kind 'prun'")
    assert "'prune'" in message and "'quantize'" in message


def test_missing_section_and_bad_type_are_both_reported() -> None:
    text = VALID.replace("output:\n  dir: runs/x\n", "").replace("epochs: 1", "epochs: many")
    lines = errors_of(text).splitlines()
    assert "r.yaml:1 output: required" in lines
    assert any(line.startswith("r.yaml:8 stages[0].epochs:") and "'many'" in line for line in lines)


def test_invalid_yaml_names_the_line() -> None:
    assert errors_of("model:\n  torchvision: [unclosed\ndata: x\n").startswith("r.yaml:3 invalid YAML")


def test_overrides_are_applied_and_validated_like_the_file() -> None:
    recipe = parse_recipe(VALID, overrides=["stages[1].amount=0.6", "model.num_classes=7", "seed=3"])
    assert recipe.stages[1].amount == 0.6 and recipe.model.num_classes == 7 and recipe.seed == 3
    assert errors_of(VALID, ["stages.1.amount=2"]) == "--set stages[1].amount: must be in (0, 1), got 2"
    assert "does not exist" in errors_of(VALID, ["stages[5].amount=0.1"])
    assert "expected KEY=VALUE" in errors_of(VALID, ["stages"])


def test_training_after_quantization_is_rejected() -> None:
    text = VALID.replace("  - kind: prune\n    amount: 0.3\n", "  - kind: quantize\n  - kind: finetune\n")
    assert "cannot train a model that an earlier 'quantize'" in errors_of(text)
    between = (
        "  - kind: quantize\n  - kind: prune\n    method: channel\n    amount: 0.3\n    steps: 2\n"
        "    finetune_between: {epochs: 1}\n"
    )
    assert "cannot train a model that an earlier 'quantize'" in errors_of(
        VALID.replace("  - kind: prune\n    amount: 0.3\n", between)
    )


def test_model_needs_exactly_one_architecture_source() -> None:
    text = VALID.replace("  torchvision: resnet18\n", "  torchvision: resnet18\n  factory: a.b:c\n")
    assert "give one of 'torchvision', 'factory', 'huggingface' or 'source'" in errors_of(text)
    assert "needs 'torchvision', 'factory', 'huggingface', 'source' or 'checkpoint'" in errors_of(
        VALID.replace("  torchvision: resnet18\n  num_classes: 10\n", "  num_classes: 10\n")
    )


def test_duplicate_stage_names_are_rejected() -> None:
    text = VALID.replace("    epochs: 1", "    epochs: 1\n    name: s")
    text = text.replace("    amount: 0.3", "    amount: 0.3\n    name: s")
    assert "repeated: s" in errors_of(text)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_prune_options_are_checked_against_the_method() -> None:
    channel = VALID.replace("    amount: 0.3", "    amount: 0.3\n    method: channel\n    round_to: 8")
    recipe = parse_recipe(channel)
    assert recipe.stages[1].scope == "layer" and recipe.stages[1].importance == "l1"
    assert parse_recipe(VALID).stages[1].scope == "global"
    assert "'round_to' applies to method channel only" in errors_of(channel.replace("method: channel", "method: block"))
    wrong = VALID.replace("    amount: 0.3", "    amount: 0.3\n    importance: taylor")
    assert "importance: Input should be 'l1' or 'random' with method 'unstructured', got 'taylor'" in errors_of(wrong)
    typo = channel.replace("method: channel", "method: chanel")
    assert "stages[1].method: unknown method 'chanel'" in errors_of(typo)
    between = channel.replace("round_to: 8", "finetune_between: {epochs: 1}")
    assert "finetune_between needs steps >= 2" in errors_of(between)
    assert "stages[1].finetune_between.epoch: unknown key" in errors_of(
        between.replace("{epochs: 1}", "{epoch: 1}\n    steps: 2")
    )


def test_export_errors_name_the_path_without_the_format_tag() -> None:
    text = VALID + "export:\n  - format: onnx\n    quantize: bogus\n  - format: openvino\n    precision: f16\n"
    message = errors_of(text)
    assert "r.yaml:15 export[0].quantize: Input should be 'none', 'dynamic' or 'static', got 'bogus'" in message
    assert "r.yaml:17 export[1].precision: Input should be 'f32' or 'auto', got 'f16'" in message
