"""An example modelshrink plug-in: a model source, a data kind, a stage and a metric, each a spec class
plus its handler.

Installed (`pip install examples/plugin`), a recipe can say `model: {source: {kind: iris_mlp}}`,
`data: {kind: iris}`, `stages: [{kind: clip_weights, percentile: 99.5}]` and
`evaluate: {metrics: [{kind: macro_f1}]}`; modelshrink imports this module the first time a recipe names
one of these kinds. A checkpoint of an `iris_mlp` model names this module, so loading it elsewhere
needs `--trust modelshrink_iris` (`trust=["modelshrink_iris"]` in Python), as a factory would.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from modelshrink.extend import (
    BaseDataSpec,
    BaseMetricSpec,
    BaseSourceSpec,
    BaseStageSpec,
    DataBundle,
    ModelSpec,
    Stage,
    StageContext,
    make_bundle,
    register,
)


# --------------------------------------------------------------------------------- a model source
class IrisMLPSource(BaseSourceSpec):
    """A small MLP sized for iris: 4 measurements in, 3 species out."""

    kind: Literal["iris_mlp"] = Field(description="the source: an MLP for the iris measurements")
    hidden: Annotated[int, Field(gt=0, le=4096)] = Field(default=32, description="hidden units")


@register(IrisMLPSource)
def build_iris_mlp(spec: IrisMLPSource, *, from_recipe: bool, where: Any) -> nn.Module:
    return nn.Sequential(nn.Linear(4, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, 3))


# ------------------------------------------------------------------------------------ a data kind
class IrisData(BaseDataSpec):
    """scikit-learn's bundled iris flowers: 150 samples, 4 measurements, 3 species."""

    kind: Literal["iris"] = Field(description="the source: scikit-learn's iris measurements")
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(default=0.3, description="share held out")


@register(IrisData)
def build_iris(spec: IrisData, seed: int, model: ModelSpec | None) -> DataBundle:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    x = torch.tensor(iris.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(iris.target, dtype=torch.long)
    train, val = train_test_split(range(len(y)), test_size=spec.val_fraction, random_state=seed % 2**32, stratify=y)
    dataset = torch.utils.data.TensorDataset
    return make_bundle(
        dataset(x[train], y[train]),
        dataset(x[val], y[val]),
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        seed=seed,
        num_classes=3,
        input_shape=(4,),
        class_names=list(iris.target_names),
    )


# ---------------------------------------------------------------------------------------- a stage
class ClipWeightsSpec(BaseStageSpec):
    """Clip each linear or conv weight at a percentile of its magnitudes: outliers stretch int8 ranges."""

    kind: Literal["clip_weights"] = Field(description="the stage: clip weight outliers before quantization")
    percentile: Annotated[float, Field(gt=50, le=100)] = Field(default=99.9, description="kept magnitudes")


@register(ClipWeightsSpec)
class ClipWeights(Stage[ClipWeightsSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        clipped = 0
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear | nn.Conv2d):
                    limit = torch.quantile(module.weight.abs().flatten().float(), self.spec.percentile / 100)
                    clipped += int((module.weight.abs() > limit).sum())
                    module.weight.clamp_(-limit, limit)
        ctx.notes_for(self.name).findings.append(f"clipped {clipped} weights at the {self.spec.percentile} percentile")
        return model


# --------------------------------------------------------------------------------------- a metric
class MacroF1Spec(BaseMetricSpec):
    """The mean over classes of F1: unlike accuracy, a rare class counts as much as a common one."""

    kind: Literal["macro_f1"] = Field(description="the metric: macro-averaged F1 over the validation split")


@register(MacroF1Spec)
def macro_f1(spec: MacroF1Spec, model: nn.Module, loader: torch.utils.data.DataLoader, where: str) -> dict[str, float]:
    from sklearn.metrics import f1_score

    predicted, expected = [], []
    for inputs, targets in loader:
        predicted.append(model(inputs).argmax(1))
        expected.append(targets)
    return {"macro_f1": float(f1_score(torch.cat(expected), torch.cat(predicted), average="macro"))}
