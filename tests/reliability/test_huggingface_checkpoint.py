"""A checkpoint's Hugging Face config is data: no remote code, no hub kernels, bounded sizes (issue #24).

Each hostile variant must end in exit 2 and one line naming the checkpoint, quickly: a size check that came
after the allocation would not finish in time, and a config that reached transformers' remote-code path
would fetch or prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import modelshrink
from modelshrink.cli import app
from modelshrink.errors import UserError

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra")
runner = CliRunner()


def tiny_config() -> dict[str, Any]:
    return transformers.BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=32,
    ).to_dict()  # fmt: skip


def tiny_arch(**changes: Any) -> dict[str, Any]:
    arch = {"huggingface": "tiny-bert", "task": "embedding", "config": tiny_config(), "pooling": "mean",
            "normalize": False}  # fmt: skip
    return {**arch, **changes}


def write_checkpoint(path: Path, arch: dict[str, Any]) -> Path:
    """A checkpoint as `modelshrink run` writes one for a Hugging Face model, with the tiny BERT's weights."""
    from modelshrink.models import huggingface

    payload = {
        "format": "modelshrink",
        "format_version": 1,
        "architecture": arch,
        "transforms": [],
        "input_shape": [16],
        "state_dict": huggingface.build(tiny_arch()).state_dict(),
    }
    torch.save(payload, path)
    return path


def with_config(**changes: Any) -> dict[str, Any]:
    return tiny_arch(config={**tiny_config(), **changes})


def test_a_tiny_bert_checkpoint_loads_and_inspects(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "ck.pt", tiny_arch())
    model = modelshrink.load(path)
    assert model(torch.randint(1, 50, (2, 16))).shape == (2, 8)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output


HOSTILE = {  # name: (architecture record, what the one line must say)
    "unknown model_type": (with_config(model_type="evil"), "config model_type 'evil' is not"),
    "model_type not a string": (with_config(model_type=["bert"]), "config model_type ['bert'] is not"),
    "auto_map": (with_config(auto_map={"AutoModel": "evil--modeling.Evil"}), "config auto_map would"),
    "remote attention kernel": (
        with_config(attn_implementation="kernels-community/flash-attn"),
        "config attn_implementation = 'kernels",
    ),
    "remote attention kernel, internal key": (
        with_config(_attn_implementation="kernels-community/flash-attn"),
        "config _attn_implementation = 'kernels",
    ),
    "remote attention kernel in a map": (
        with_config(attn_implementation={"": "kernels-community/flash-attn"}),
        "config attn_implementation = {",
    ),
    "quantization_config": (
        with_config(quantization_config={"quant_method": "bitsandbytes", "load_in_8bit": True}),
        "config quantization_config would",
    ),
    "dtype naming a torch function": (with_config(dtype="manual_seed"), "config dtype = 'manual_seed' is not"),
    "vocab_size 10**12": (with_config(vocab_size=10**12), "config vocab_size = 1000000000000 is beyond"),
    "hidden_size -1": (with_config(hidden_size=-1), "config hidden_size = -1 is not a positive number"),
    "hidden_size not a number": (with_config(hidden_size="big"), "config hidden_size = 'big' is not"),
    "num_hidden_layers 10**6": (with_config(num_hidden_layers=10**6), "config num_hidden_layers = 1000000 is beyond"),
    "intermediate_size beyond the parameter bound": (
        with_config(intermediate_size=2**22, num_hidden_layers=512),
        "parameters) are beyond",
    ),
    "rejected by transformers": (with_config(hidden_size=9), "cannot rebuild its Hugging Face model: The hidden size"),
    "task evil": (tiny_arch(task="evil"), "task 'evil' is not one of"),
    "pooling evil": (tiny_arch(pooling="evil"), "pooling 'evil' is not one of"),
    "normalize not a bool": (tiny_arch(normalize="yes"), "normalize 'yes' is not one of False, True"),
    "config not a dict": (tiny_arch(config=["bert"]), "config is not a mapping"),
}


def models_built(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """From now on, the config of each Hugging Face model built (a test's timing would judge the machine)."""
    from modelshrink.models import huggingface

    built: list[Any] = []
    real = huggingface._auto_class

    class Recorded:  # the auto class, noting each model it is asked to build
        def __init__(self, auto: Any) -> None:
            self.auto = auto

        def from_config(self, config: Any) -> Any:
            built.append(config)
            return self.auto.from_config(config)

    monkeypatch.setattr(huggingface, "_auto_class", lambda *args: Recorded(real(*args)))
    return built


@pytest.mark.parametrize(("arch", "message"), HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_config_gets_one_line_and_exit_2(
    tmp_path: Path, arch: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_checkpoint(tmp_path / "ck.pt", arch)
    built = models_built(monkeypatch)
    result = runner.invoke(app, ["inspect", str(path)])
    if not message.startswith("cannot rebuild"):  # what transformers itself refuses, it refuses while building
        assert built == [], "refused before any model was built (a config of 10^12 parameters would take it all)"
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: damaged checkpoint") and message in lines[0], lines
    assert "Traceback" not in result.output
    with pytest.raises(UserError, match="damaged checkpoint") as refused:
        modelshrink.load(path)
    assert message in str(refused.value)


def test_a_model_bigger_than_this_machine_is_refused_before_it_is_built(tmp_path: Path, monkeypatch) -> None:
    """Within the absolute bound, but more memory than the machine has: refused, not killed for memory."""
    from modelshrink.models import huggingface

    monkeypatch.setattr(huggingface, "physical_memory", lambda: 2**30)
    big = with_config(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096)
    path = write_checkpoint(tmp_path / "ck.pt", tiny_arch(config=big["config"]))
    built = models_built(monkeypatch)
    with pytest.raises(UserError, match=r"needs about \d+ GiB in float32, more than this machine's 1 GiB"):
        modelshrink.load(path)
    assert built == [], "refused from the config, before any allocation"
