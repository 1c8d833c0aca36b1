"""Training never hands on a model worse than it received: the starting weights are scored as epoch 0
on a tuning split held out of training (never on validation), and the report says when training hurt."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modelshrink import train
from modelshrink.data import build_data
from modelshrink.models.zoo import small_cnn
from modelshrink.recipe.recipe import Recipe
from modelshrink.recipe.schema import DigitsData, SyntheticData
from modelshrink.recipe.stage_specs import TrainingSettings
from modelshrink.report import findings
from modelshrink.train import fit

SYNTHETIC = SyntheticData(kind="synthetic", channels=1, image_size=8, num_samples=320, batch_size=32)


def trained_model() -> tuple[nn.Module, object]:
    data = build_data(SYNTHETIC, 0, tuning_split=True)
    torch.manual_seed(0)
    model = small_cnn(in_channels=1, width=8)
    fit(model, data, TrainingSettings(epochs=6, lr=0.01), label="pretrain")
    return model, data


def wrong_labels(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A loss that can only make the model worse: it teaches every class as the next one."""
    return F.cross_entropy(model(inputs), (targets + 1) % 10)


def test_keep_best_keeps_the_starting_weights_when_training_hurts() -> None:
    model, data = trained_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, data, TrainingSettings(epochs=2, lr=0.01), label="hurt", loss_fn=wrong_labels)
    assert result.kept_epoch == 0 and result.epochs_run == 2
    assert result.start is not None and result.start["accuracy"] > 0.5
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items()), "the starting weights come back"

    hurt = fit(model, data, TrainingSettings(epochs=2, lr=0.01, keep_best=False), label="hurt", loss_fn=wrong_labels)
    assert hurt.best is not None and hurt.best["accuracy"] < result.start["accuracy"], "without keep_best it is worse"


def test_epochs_are_chosen_on_the_tuning_split_never_on_validation(monkeypatch) -> None:
    model, data = trained_model()
    scored = []
    real = train.evaluate_classifier

    def spy(model: nn.Module, loader: object, *args: object) -> dict:
        scored.append(loader)
        return real(model, loader, *args)

    monkeypatch.setattr(train, "evaluate_classifier", spy)
    fit(model, data, TrainingSettings(epochs=2, lr=0.001), label="t")
    assert len(scored) == 3 and all(loader is data.tune for loader in scored)  # epoch 0, 1 and 2


def test_the_tuning_split_is_held_out_of_training_and_validation_is_untouched() -> None:
    spec = DigitsData(kind="digits", image_size=8, channels=1)
    plain, held = build_data(spec, 0), build_data(spec, 0, tuning_split=True)
    assert plain.tune is None
    train_ids = {i for i in held.train.dataset.indices}
    tune_ids = set(held.tune.dataset.indices)
    assert not train_ids & tune_ids and len(train_ids | tune_ids) == len(plain.train.dataset)
    assert 0.08 < len(tune_ids) / len(plain.train.dataset) < 0.12
    tune_labels = torch.cat([labels for _, labels in held.tune])
    assert torch.bincount(tune_labels, minlength=10).min() >= 10, "stratified: every class held out in proportion"
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain.val, held.val, strict=True))


def test_a_tuning_split_is_made_only_when_a_stage_chooses_epochs() -> None:
    def needs(stages: list[dict]) -> bool:
        recipe = {"model": {"torchvision": "resnet18"}, "data": {"kind": "digits"}, "output": {"dir": "o"}}
        return Recipe.model_validate({**recipe, "stages": stages}).needs_tuning_split

    assert needs([{"kind": "finetune"}])  # keep_best is the default
    assert needs([{"kind": "quantize", "mode": "qat"}])
    assert needs([{"kind": "prune", "method": "channel", "amount": 0.5, "steps": 2, "finetune_between": {}}])
    assert needs([{"kind": "finetune", "keep_best": False, "early_stopping": 2}])
    assert not needs([{"kind": "finetune", "keep_best": False}])
    assert not needs([{"kind": "prune", "amount": 0.5}, {"kind": "quantize"}])


def _metrics(accuracy: float) -> dict:
    latency = {"batch1_median": 1, "batchN_median": 1, "batch1_p95": 1, "batchN_p95": 1}
    return {"accuracy": accuracy, "latency_ms": latency}


def test_findings_say_when_training_did_not_help() -> None:
    run = {"label": "recover", "epochs_run": 1, "kept_epoch": 0, "start": {"accuracy": 0.95, "loss": 0.2}}
    stages = [
        {"name": "prune", "kind": "prune", "params": {"method": "channel"}, "metrics": _metrics(0.90)},
        {"name": "recover", "kind": "finetune", "params": {}, "metrics": _metrics(0.88), "notes": {"training": [run]}},
    ]
    assert any("no epoch of training beat the starting weights" in n for n in findings(_metrics(0.95), stages))
    stages[1]["notes"]["training"][0]["kept_epoch"] = 1
    assert not any("recover" in n for n in findings(_metrics(0.95), stages))


def test_a_stage_that_only_trains_is_called_out_when_it_ends_worse(monkeypatch) -> None:
    """Pruning is expected to cost accuracy; a stage whose only work is training is not (`only_trains`)."""
    from modelshrink.engine import compress
    from modelshrink.recipe.stage_specs import FinetuneSpec
    from modelshrink.registry import STAGES
    from modelshrink.stages import Stage

    class Scramble(Stage):  # a training stage gone wrong: the classifier forgets everything
        def apply(self, model: nn.Module, ctx: object) -> nn.Module:
            with torch.no_grad():
                model[-1].weight.zero_()
            return model

    model, data = trained_model()
    monkeypatch.setitem(STAGES.handlers, FinetuneSpec, Scramble)
    stages = [{"kind": "prune", "method": "channel", "amount": 0.5, "name": "p"}, {"kind": "finetune", "name": "ft"}]
    result = compress(model, stages, data=data, evaluate={"latency": {"batch_size": 2, "iterations": 1}})
    pruned, tuned = result.stages
    assert pruned.metrics["accuracy"] < result.baseline["accuracy"] and not pruned.notes.findings
    assert tuned.metrics["accuracy"] < pruned.metrics["accuracy"]
    [finding] = tuned.notes.findings
    assert finding.startswith("ended worse than it started: validation accuracy")
    assert any(n.startswith("ft: ended worse") for n in findings(result.baseline, [s.to_json() for s in result.stages]))
