"""Stage specs: one class per stage kind and method (prune) or mode (quantize), each with its own fields.

A recipe's `{kind: prune, method: channel, ...}` becomes a `ChannelPruneSpec` through a nested tagged
union (kind, then method/mode with its default), so a key that belongs to another method is simply
unknown here and every YAML written for the flat specs stays valid. Each spec declares what it needs
and does (`training`, `needs_labels`, `replaces_head`, `quantizes`, `only_trains`, `may_change`); code asks the spec
instead of testing its type. A handler is registered for each spec type in `modelshrink/stages/`
(`stages.base.register`). Adding a quantization mode: one spec class here, added to `QUANTIZE_MODES`,
and one module in `modelshrink/stages/quantize/`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal, Self, Union

from pydantic import Discriminator, Field, Tag, TypeAdapter, model_validator

from modelshrink.recipe.kinds import extensible
from modelshrink.recipe.schema import (
    Fraction,
    ModelSpec,
    OutputName,
    PositiveFloat,
    PositiveInt,
    Probability,
    Repeats,
    Strict,
    Target,
)


class TrainingSettings(Strict):
    """Settings of the one training loop, shared by every stage that trains."""

    epochs: Repeats = Field(default=1, description="passes over the training split")
    optimizer: Literal["sgd", "adamw"] = Field(
        default="adamw", description="adamw, or sgd (Nesterov momentum when momentum > 0)"
    )
    lr: PositiveFloat = Field(
        default=1e-3,
        description="learning rate of the layers layer_lrs does not name (onecycle: the peak), e.g. 0.0002",
    )
    layer_lrs: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="discriminative learning rates: {name glob: lr}, first match wins"
    )
    weight_decay: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="weight decay, not applied to biases and norm weights (1-D tensors)"
    )
    momentum: Probability = Field(default=0.9, description="SGD momentum (Nesterov when > 0); unused by adamw")
    schedule: Literal["constant", "cosine", "step", "onecycle"] = Field(
        default="cosine",
        description="learning rate over the stage, stepped per batch: "
        "cosine (decays to 0), onecycle, step (step_size, gamma) or constant",
    )
    step_size: PositiveInt = Field(default=1, description="epochs between LR drops (schedule: step)")
    gamma: Fraction = Field(default=0.1, description="LR factor per drop (schedule: step)")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0, description="label smoothing of the default cross-entropy loss, in [0, 1)"
    )
    loss: Target | None = Field(
        default=None, description="'pkg.module:fn(outputs, targets) -> scalar'; default: cross-entropy on class indices"
    )
    keep_sparsity: bool = Field(default=True, description="weights that are exactly zero stay zero")
    max_batches_per_epoch: Repeats | None = Field(
        default=None, description="at most this many training batches per epoch; default: the whole training split"
    )
    early_stopping: PositiveInt | None = Field(
        default=None, description="stop after this many epochs without a better tuning-split accuracy"
    )
    keep_best: bool = Field(
        default=True,
        description="end with the best weights on the tuning split, the starting weights (epoch 0) included, "
        "so that training never hands on a model worse than it received",
    )

    @property
    def selects_epochs(self) -> bool:
        """Whether the loop chooses between epochs, which needs a tuning split held out of training."""
        return self.keep_best or self.early_stopping is not None


Measure = Literal["macs", "size", "latency"]  # what a search objective reads of a model, beside quality


class BaseStageSpec(Strict):
    """What every stage spec has: a name, and the capabilities the rest of the tool asks about."""

    name: str | None = Field(default=None, description="shown in reports; defaults to '<kind><index>'")

    quantizes: ClassVar[bool] = False  # leaves weights (int8, half) that no later stage can train
    only_trains: ClassVar[bool] = False  # changes the model by training alone (so it can end worse than it began)
    folds_batchnorm: ClassVar[bool] = False  # may remove batch norms, which later training would need

    @property
    def training(self) -> TrainingSettings | None:
        """The settings this stage runs the training loop with; None when it does not train."""
        return None

    @property
    def needs_labels(self) -> bool:
        return self.training is not None

    @property
    def replaces_head(self) -> bool:
        """Whether the stage gives the model a new classifier (so its output need not fit the data yet)."""
        return False

    def may_change(self, measure: Measure) -> bool:
        """Whether this stage may change the model's MACs, bytes on disk or speed: a search judges a candidate
        on these before its later stages run when none of them may (`tune.trials.settled`). Training
        changes values, not shapes or dtypes (though zeros fill in unless kept); quantization changes
        precision, not the count of multiply-accumulates; anything else may change all three."""
        if self.only_trains and not self.replaces_head:
            training = self.training
            return measure == "size" and training is not None and not training.keep_sparsity
        if self.quantizes:
            return measure != "macs"
        return True


# ------------------------------------------------------------------------------------------- training
class FinetuneSpec(TrainingSettings, BaseStageSpec):
    """Train the current model on the recipe's data (fine-tuning and transfer learning).

    `strategy` chooses what trains: `full` (everything), `head` (the top-level block holding the
    classifier, e.g. VGG's 3-layer classifier; the backbone is frozen), `last_layer` (only the final
    layer; BatchNorm statistics frozen too), `partial` (the `unfreeze` globs and/or the last
    `unfreeze_last` blocks, plus the classifier). `num_classes` replaces the classifier with a new one.
    """

    kind: Literal["finetune"] = Field(
        description="the stage: training on the recipe's data (fine-tuning, transfer learning)"
    )
    strategy: Literal["full", "head", "last_layer", "partial"] = Field(
        default="full",
        description="what trains: full (everything), head (the classifier's block), last_layer, "
        "or partial (unfreeze globs)",
    )
    unfreeze: list[str] = Field(default_factory=list, description="partial: module name globs that train")
    unfreeze_last: PositiveInt | None = Field(default=None, description="partial: train the last N blocks")
    num_classes: PositiveInt | None = Field(default=None, description="replace the classifier for N classes")

    only_trains: ClassVar[bool] = True

    @property
    def training(self) -> TrainingSettings:
        return self

    @property
    def replaces_head(self) -> bool:
        return self.num_classes is not None

    @model_validator(mode="after")
    def _partial(self) -> FinetuneSpec:
        chosen = bool(self.unfreeze) or self.unfreeze_last is not None
        if self.strategy == "partial" and not chosen:
            raise ValueError("strategy 'partial' needs 'unfreeze' globs or 'unfreeze_last'")
        if self.strategy != "partial" and chosen:
            raise ValueError("'unfreeze' / 'unfreeze_last' apply to strategy 'partial' only")
        return self


class HintSpec(Strict):
    """Feature distillation between two named layers; a learned 1x1 projection matches widths."""

    student: str = Field(description="the student's module whose output is matched, by name, e.g. layer4")
    teacher: str = Field(description="the teacher's module whose output is the target, by name, e.g. layer4")


class OutputLoss(Strict):
    """How one output of a model with several is matched to the teacher's in distillation."""

    weight: Annotated[float, Field(ge=0)] = Field(default=1.0, description="this output's share of the teacher term")
    loss: Literal["mse", "smooth_l1", "cosine", "kl"] = Field(
        default="mse", description="kl: softmax over this output's values at the stage's temperature (class scores)"
    )


class DistillSpec(TrainingSettings, BaseStageSpec):
    """Knowledge distillation: loss = alpha * KL(teacher/T || student/T) * T^2 + (1 - alpha) * CE
    (+ hint_weight * MSE of projected hint features). A model with several outputs gets a teacher term
    per output: `outputs` weighs each and picks its loss, and each output's mse / smooth_l1 is divided
    by its teacher's variance (`normalize_outputs`) so that no output's scale swamps the others."""

    kind: Literal["distill"] = Field(
        description="the stage: knowledge distillation from `teacher` into the current model"
    )
    teacher: ModelSpec | None = Field(default=None, description="default: the model before any stage ran")
    temperature: PositiveFloat = Field(
        default=4.0, description="T that softens both models' logits in the KL term, which is scaled by T^2"
    )
    alpha: Probability = Field(
        default=0.7,
        description="weight of the teacher term; 1 - alpha weighs the label term "
        "(without labels: the teacher term alone)",
    )
    hints: list[HintSpec] = Field(
        default_factory=list,
        description="layer pairs whose features are matched by MSE, e.g. [{student: layer4, teacher: layer4}]",
    )
    hint_weight: Annotated[float, Field(ge=0)] = Field(default=1.0, description="weight of the hints' MSE in the loss")
    outputs: dict[OutputName, OutputLoss] = Field(
        default_factory=dict,
        description="per output of a model with several, by the name report.json's `outputs` gives it "
        "(`boxes`, `0`): {weight, loss}; outputs not named get weight 1 and mse",
    )
    normalize_outputs: bool = Field(
        default=True, description="divide each output's mse / smooth_l1 by its teacher's variance across inputs"
    )
    compare_finetune: bool = Field(
        default=False, description="also fine-tune a copy with the same settings and report which won"
    )

    only_trains: ClassVar[bool] = True

    @property
    def training(self) -> TrainingSettings:
        return self

    @property
    def needs_labels(self) -> bool:
        """Without labels the student learns from the teacher alone (the label term is dropped)."""
        return False


# -------------------------------------------------------------------------------------------- pruning
class BasePruneSpec(BaseStageSpec):
    kind: Literal["prune"] = Field(description="the stage: pruning, by `method` (unstructured by default)")
    amount: Fraction = Field(description="fraction of weights (unstructured), channels or blocks to remove")
    exclude: list[str] = Field(
        default_factory=list, description="never pruned; channel/block always keep the classifier"
    )


class PruneSchedule(Strict):
    """Gradual magnitude pruning (Zhu & Gupta, 2017) inside one stage: sparsity rises from where the
    weights are to `amount` over ceil(epochs / frequency) steps along `kind`'s curve; after each step the
    `train` stage runs for `frequency` epochs (the last step for the rest) and keeps its best epoch, so a
    step never hands on a model worse than the pruning left it. A high sparsity reached in one cut loses
    what small steps with training between them keep."""

    kind: Literal["cubic", "linear"] = Field(
        default="cubic",
        description="how sparsity rises per step: cubic (fast at first, gently near the end, as Zhu & Gupta) or linear",
    )
    epochs: Repeats = Field(description="training epochs over the whole schedule, e.g. 12")
    frequency: Repeats = Field(
        default=1, description="epochs of training after each pruning step; steps = ceil(epochs / frequency)"
    )
    train: Annotated[FinetuneSpec | DistillSpec, Field(discriminator="kind")] = Field(
        default_factory=lambda: FinetuneSpec(kind="finetune"),
        description="the training after each step: a finetune or distill stage's settings without `epochs` "
        "(the schedule gives them), e.g. {kind: distill, lr: 0.0005}",
    )

    @property
    def steps(self) -> int:
        return math.ceil(self.epochs / self.frequency)

    @model_validator(mode="after")
    def _train(self) -> PruneSchedule:
        if "epochs" in self.train.model_fields_set:
            raise ValueError("schedule.train takes no epochs: schedule.epochs and frequency give them")
        if self.train.replaces_head:
            raise ValueError("schedule.train cannot replace the classifier (num_classes): do that in its own stage")
        if self.frequency > self.epochs:
            raise ValueError(f"frequency {self.frequency} is more than the schedule's {self.epochs} epochs")
        return self


class UnstructuredPruneSpec(BasePruneSpec):
    """Zero the least important weights with torch.nn.utils.prune, made permanent (no masks left);
    at once, or gradually with training between the steps (`schedule`)."""

    method: Literal["unstructured"] = Field(
        default="unstructured",
        description="unstructured (default): zero single weights; model.pt stores them smaller "
        "(bitmask + non-zero values), dense kernels run no faster",
    )
    importance: Literal["l1", "random"] = Field(
        default="l1", description="which weights go first: l1 (smallest magnitude) or random"
    )
    scope: Literal["global", "layer"] = Field(
        default="global",
        description="global: weights ranked across all selected layers together; layer: `amount` of each layer",
    )
    include: list[str] = Field(
        default_factory=lambda: ["*"],
        description="module name globs that may be pruned (exclude wins), e.g. ['layer4.*']",
    )
    module_types: list[Literal["Linear", "Conv1d", "Conv2d", "Conv3d"]] = Field(
        default_factory=lambda: ["Linear", "Conv1d", "Conv2d", "Conv3d"],
        description="the layer types whose weights are pruned",
    )
    schedule: PruneSchedule | None = Field(
        default=None,
        description="reach `amount` gradually, training between steps, e.g. {kind: cubic, epochs: 12, frequency: 2}",
    )

    @property
    def training(self) -> TrainingSettings | None:
        return self.schedule.train if self.schedule is not None else None

    @property
    def needs_labels(self) -> bool:
        return self.schedule is not None and self.schedule.train.needs_labels


class NMPruneSpec(BasePruneSpec):
    """N:M semi-structured sparsity: in every group of `m` consecutive input weights of a layer, the `n`
    largest in magnitude stay and the rest become zero (2:4 is what sparse tensor cores run)."""

    method: Literal["nm"] = Field(
        description="nm: keep n of every m consecutive weights along the input (2:4 by default); NVIDIA sparse "
        "tensor cores can run 2:4 faster on large matrices, on a CPU model.pt gets smaller",
    )
    amount: Fraction | None = Field(default=None, description="follows from n:m (1 - n/m): leave it out")
    n: PositiveInt = Field(default=2, description="weights kept in each group")
    m: PositiveInt = Field(default=4, description="the group: consecutive weights along the input dimension")
    include: list[str] = Field(
        default_factory=lambda: ["*"],
        description="module name globs that may be pruned (exclude wins), e.g. ['layer4.*']",
    )
    module_types: list[Literal["Linear", "Conv1d", "Conv2d", "Conv3d"]] = Field(
        default_factory=lambda: ["Linear", "Conv1d", "Conv2d", "Conv3d"],
        description="the layer types whose weights are pruned; a layer whose inputs are not a multiple of m "
        "is left dense (and named)",
    )

    @model_validator(mode="before")
    @classmethod
    def _amount(cls, data: Any) -> Any:
        """`amount` follows from n:m: filled in, or checked when given."""
        if not isinstance(data, dict):
            return data
        n, m = data.get("n", 2), data.get("m", 4)
        if not (isinstance(n, int) and isinstance(m, int)) or not 0 < n < m:
            raise ValueError(f"n:m must keep fewer than m weights of each m, got {n}:{m}")
        implied = 1 - n / m
        if data.get("amount") is not None and not math.isclose(data["amount"], implied):
            raise ValueError(f"amount of method nm is 1 - n/m = {implied:g}; leave it out")
        return {**data, "amount": implied}


class BaseRemovingPruneSpec(BasePruneSpec):
    """Pruning that removes structure, after which BatchNorm statistics are re-estimated."""

    calibration_batches: Repeats = Field(
        default=4, description="training batches for taylor / block scores and BatchNorm recalibration"
    )
    recalibrate_bn: bool = Field(default=True, description="re-estimate BatchNorm statistics after removal")


class ChannelPruneSpec(BaseRemovingPruneSpec):
    """Physically remove conv filters / Linear neurons with Torch-Pruning's dependency graph, so residual
    and depthwise couplings stay valid and the model gets faster and smaller."""

    method: Literal["channel"] = Field(
        default="channel",
        description="channel: remove conv filters and Linear neurons, so that the model gets smaller and faster",
    )
    importance: Literal["l1", "l2", "bn_scale", "taylor", "random"] = Field(
        default="l1",
        description="how channels are ranked: "
        "l1 / l2 weight norm, bn_scale (BatchNorm gamma), taylor (needs labels), random",
    )
    scope: Literal["global", "layer"] = Field(
        default="layer", description="layer: `amount` of each layer's channels; global: channels ranked across layers"
    )
    include: list[str] = Field(
        default_factory=lambda: ["*"],
        description="module name globs that may be pruned (exclude wins), e.g. ['layer4.*']",
    )
    layer_amounts: dict[str, Fraction] = Field(default_factory=dict, description="per-layer ratios by name glob")
    round_to: PositiveInt | None = Field(default=None, description="keep channel counts multiples of this")
    steps: Repeats = Field(default=1, description="reach `amount` gradually over this many steps")
    finetune_between: TrainingSettings | None = Field(default=None, description="training between steps")

    @property
    def training(self) -> TrainingSettings | None:
        return self.finetune_between

    @property
    def needs_labels(self) -> bool:
        return self.training is not None or self.importance == "taylor"  # taylor scores are loss gradients

    @model_validator(mode="after")
    def _steps(self) -> ChannelPruneSpec:
        if self.finetune_between is not None and self.steps < 2:
            raise ValueError("finetune_between needs steps >= 2")
        return self


class BlockPruneSpec(BaseRemovingPruneSpec):
    """Drop whole shape-preserving (residual) blocks, the least important first."""

    method: Literal["block"] = Field(
        default="block",
        description="block: replace whole shape-preserving (residual) blocks by identity, the least important first",
    )
    importance: Literal["output_change", "random"] = Field(
        default="output_change",
        description="output_change: how far the outputs move on calibration batches without the block; or random",
    )


# --------------------------------------------------------------------------------------- quantization
class MixedSpec(Strict):
    """Keep the layers most sensitive to this quantization in float until the measured drop fits."""

    max_drop: Annotated[float, Field(ge=0, le=1)] = Field(
        description="largest drop allowed on the calibration batches: 1 - top-1 agreement with the model before "
        "the stage (classifiers), else 1 - mean cosine"
    )
    calibration_batches: Repeats = Field(default=4, description="batches each layer's sensitivity is scored on")


class BaseQuantizeSpec(BaseStageSpec):
    kind: Literal["quantize"] = Field(description="the stage: quantization, by `mode` (dynamic by default)")
    exclude: list[str] = Field(default_factory=list, description="module name globs kept in float")
    mixed: MixedSpec | None = Field(
        default=None,
        description="mixed precision by sensitivity: each layer quantized alone is scored, and the most sensitive "
        "stay float until the whole model's drop fits max_drop",
    )
    compile: Literal["auto"] | bool = Field(
        default="auto",
        description="run the quantized model through torch.compile (inductor, freezing) as it will be deployed; "
        "the report times it so, a reload compiles on its first call; auto: always for PT2E int8 (its eager "
        "graph runs float kernels between quantize and dequantize), and for per-token int8 and fp16/bf16 "
        "where compiled measures faster on the calibration batches",
    )

    quantizes: ClassVar[bool] = True

    @property
    def kept_precision(self) -> str:
        """What `mixed` keeps a sensitive layer at: float here, a higher precision where a mode has one."""
        return "float"

    def keeping(self, layers: list[str]) -> Self:
        """This spec with `layers` kept at `kept_precision`."""
        return self.model_copy(update={"exclude": [*self.exclude, *layers]})


class DynamicQuantSpec(BaseQuantizeSpec):
    """int8 weights, activations quantized on the fly (Linear/LSTM/GRU), int8 embedding tables."""

    mode: Literal["dynamic"] = Field(
        default="dynamic",
        description="dynamic (default): int8 weights, activations quantized on the fly; int8 embedding tables",
    )
    module_types: list[Literal["Linear", "LSTM", "GRU", "Embedding"]] = Field(
        default_factory=lambda: ["Linear", "LSTM", "GRU", "Embedding"],
        description="the layer types quantized: Linear, LSTM, GRU (int8 weights) and Embedding (int8 tables)",
    )
    per_channel: bool = Field(default=True, description="one weight scale per output channel (Linear)")
    activations: Literal["auto", "per_token", "per_tensor"] = Field(
        default="auto",
        description="Linear activation scales: per_token (one per row: a sample's output does not depend on "
        "its batch-mates), per_tensor (torch.ao: one per batch), auto: measured on the calibration batches, "
        "per_tensor kept only where it is as good and faster (per_token is not tried where the CPU's int8 "
        "matmul is over 2x slower than float32's, as without VNNI)",
    )
    smoothing: Annotated[float, Field(gt=0, lt=1)] | Literal["auto"] | None = Field(
        default=None,
        description="SmoothQuant alpha (e.g. 0.7), moving activation outliers into the weights, "
        "calibrated on calibration_batches; auto: the alpha that keeps outputs closest to float on them; "
        "costs one multiply per Linear",
    )
    calibration_batches: Repeats = Field(
        default=8, description="batches (the data's calibration set, else training) for smoothing and auto choices"
    )


class _GraphQuantCommon(BaseQuantizeSpec):
    """int8 through a captured graph: torch.ao FX, or torch.export + torchao PT2E."""

    per_channel: bool = Field(default=True, description="one weight scale per output channel (Linear, Conv)")
    backend: Literal["auto", "fx", "pt2e"] = Field(
        default="auto",
        description="fx: torch.ao FX graph mode; pt2e: torch.export + torchao (x86 defaults: histogram, "
        "per-channel); auto: fx, or pt2e when torch.fx cannot trace the model",
    )

    @model_validator(mode="after")
    def _pt2e_defaults(self) -> _GraphQuantCommon:
        if self.backend == "pt2e" and self.fx_only_settings():
            raise ValueError(
                f"backend pt2e uses torchao's x86 defaults (histogram observers, per-channel weights, no bias "
                f"correction): {', '.join(self.fx_only_settings())} needs backend fx or auto"
            )
        return self

    def fx_only_settings(self) -> list[str]:
        """The settings given that only the fx backend applies (PT2E runs torchao's x86 defaults)."""
        observer = getattr(self, "observer", "histogram")
        given = {
            f"observer: {observer}": observer != "histogram",
            "per_channel: false": not self.per_channel,
            "bias_correction: true": getattr(self, "bias_correction", False),
        }
        return [setting for setting, differs in given.items() if differs]


class StaticQuantSpec(_GraphQuantCommon):
    """int8 weights and activations, activation ranges calibrated on training batches."""

    mode: Literal["static"] = Field(
        default="static",
        description="static: int8 weights and activations, activation ranges calibrated on calibration batches",
    )
    calibration_batches: Repeats = Field(default=8, description="training batches to calibrate ranges")
    observer: Literal["minmax", "histogram", "auto"] = Field(
        default="histogram",
        description="activation ranges: histogram (minimizes the quantization error), minmax, or auto: both built "
        "(backend fx) and the one whose outputs are closer to float on calibration batches kept",
    )
    bias_correction: bool = Field(
        default=False,
        description="backend fx: subtract from each int8 layer's bias the mean shift its rounded weights cause on "
        "the calibration batches; pays where a few large weights set a per-tensor scale (off: on the bundled "
        "detector it moved no output's cosine by more than 0.0004)",
    )
    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        default=None,
        description="the int8 model's mean cosine to the float model (the worst output's) on calibration batches, "
        "at least: below it the most sensitive layers stay float, as mixed does, until it is met (none can: exit 2)",
    )

    @model_validator(mode="after")
    def _one_quality_rule(self) -> StaticQuantSpec:
        if self.min_cosine is not None and self.mixed is not None:
            raise ValueError("min_cosine and mixed both choose which layers stay float: give one")
        return self


class QatSpec(_GraphQuantCommon):
    """Quantization-aware training (fake-quant, then the same training loop), then int8."""

    mode: Literal["qat"] = Field(
        default="qat", description="qat: quantization-aware training (fake-quant, the same training loop), then int8"
    )
    qat: TrainingSettings = Field(default_factory=TrainingSettings, description="training settings")

    @property
    def training(self) -> TrainingSettings:
        return self.qat


class WeightOnlySpec(BaseQuantizeSpec):
    """int8 weights (per output channel) or int4 weights (Linear, group-wise scales), float compute."""

    mode: Literal["weight_only"] = Field(
        default="weight_only", description="weight_only: int8 or int4 weights, float activations and compute"
    )
    bits: Literal[8, 4] = Field(default=8, description="8: Linear, Conv, Embedding; 4: Linear layers")
    group_size: Literal[32, 64, 128] = Field(
        default=128, description="int4: input channels sharing one scale (smaller: closer to float, larger file)"
    )
    int8: list[str] = Field(
        default_factory=list, description="bits 4: Linear layers (name globs) that get int8 weights instead"
    )

    @model_validator(mode="after")
    def _int4_fields(self) -> WeightOnlySpec:
        for field in ("group_size", "int8"):
            if field in self.model_fields_set and self.bits != 4:
                raise ValueError(f"{field} applies to bits: 4")
        return self

    @property
    def kept_precision(self) -> str:
        return "int8" if self.bits == 4 else "float"

    def keeping(self, layers: list[str]) -> Self:
        if self.bits == 4:
            return self.model_copy(update={"int8": [*self.int8, *layers]})
        return super().keeping(layers)


class HalfSpec(BaseQuantizeSpec):
    """Half-precision weights and compute (inputs cast on the way in, logits back to fp32)."""

    mode: Literal["fp16", "bf16"] = Field(
        description="fp16 or bf16: half-precision weights and compute; pays only on CPUs with native arithmetic in it"
    )


_AUTO_CANDIDATES = ("dynamic", "static", "weight_only", "bf16", "fp16")


class AutoQuantSpec(BaseQuantizeSpec):
    """Measure the candidate modes on this CPU and keep the fastest whose outputs stay within
    `min_cosine` of the float model's on the calibration data; float when none is faster."""

    mode: Literal["auto"] = Field(
        default="auto", description="auto: time the candidates on this CPU and keep the fastest that meets min_cosine"
    )
    candidates: list[Literal["dynamic", "static", "weight_only", "bf16", "fp16"]] = Field(
        default_factory=lambda: list(_AUTO_CANDIDATES),
        min_length=1,
        description="the modes built with their defaults, timed and compared",
    )
    min_cosine: Annotated[float, Field(ge=-1, le=1)] = Field(
        default=0.99, description="quality bar on the calibration data, mean cosine to the float outputs"
    )
    calibration_batches: Repeats = Field(default=8, description="batches to calibrate and judge the candidates")

    @model_validator(mode="after")
    def _one_search_at_a_time(self) -> AutoQuantSpec:
        if self.mixed is not None:
            raise ValueError("mixed applies to one mode; choose it (auto already trades quality against speed)")
        return self

    def candidate_specs(self) -> list[BaseStageSpec]:
        """Each candidate with its defaults, this stage's `exclude` and calibration batches."""
        specs = []
        for mode in dict.fromkeys(self.candidates):
            fields: dict[str, Any] = {
                "kind": "quantize",
                "mode": mode,
                "exclude": self.exclude,
                "compile": self.compile,
            }
            if "calibration_batches" in QUANTIZE_MODES[mode].model_fields:
                fields["calibration_batches"] = self.calibration_batches
            specs.append(parse_stage(fields))
        return specs


# ------------------------------------------------------------------------------------------- the union
def _tag_of(selector: str, default: str | None) -> Callable[[Any], Any]:
    """Read the tag of a dict (with the default a recipe may leave out) or of a spec object."""

    def tag(value: Any) -> Any:
        found = value.get(selector, default) if isinstance(value, dict) else getattr(value, selector, None)
        return found if isinstance(found, str) or found is None else repr(found)

    tag.__name__ = selector  # pydantic names the discriminator in its errors by this
    return tag


def tagged_union(selector: str, default: str | None, variants: dict[str, type]) -> Any:
    members = tuple(Annotated[cls, Tag(tag)] for tag, cls in variants.items())
    return Annotated[Union[members], Discriminator(_tag_of(selector, default))]  # noqa: UP007 (built at run time)


class OptimizeSpec(BaseStageSpec):
    """Deployment rewrites that keep the model float and its outputs the same: batch norms folded into
    the convolutions before them, and channels_last memory format for convolutions where it pays."""

    kind: Literal["optimize"] = Field(
        description="the stage: float rewrites for deployment that keep the outputs (batch norm folding, channels_last)"
    )
    fold_batchnorm: bool = Field(default=True, description="fold each batch norm into the convolution feeding it")
    channels_last: bool | Literal["auto"] = Field(
        default="auto",
        description="store 4-D weights channels_last (NHWC), which oneDNN convolutions prefer; auto: where it "
        "measures faster on the calibration batches with the same outputs",
    )
    calibration_batches: Repeats = Field(default=2, description="batches that time channels_last (auto)")

    folds_batchnorm: ClassVar[bool] = True  # checked by the recipe: no stage trains after it


PRUNE_METHODS: dict[str, type[BaseStageSpec]] = {
    "unstructured": UnstructuredPruneSpec,
    "nm": NMPruneSpec,
    "channel": ChannelPruneSpec,
    "block": BlockPruneSpec,
}
QUANTIZE_MODES: dict[str, type[BaseStageSpec]] = {
    "dynamic": DynamicQuantSpec,
    "static": StaticQuantSpec,
    "qat": QatSpec,
    "weight_only": WeightOnlySpec,
    "fp16": HalfSpec,
    "bf16": HalfSpec,
    "auto": AutoQuantSpec,
}
# kind -> (the key choosing the variant, its default, the variants); kinds without variants map to their class
VARIANTS: dict[str, tuple[str, str, dict[str, type[BaseStageSpec]]]] = {
    "prune": ("method", "unstructured", PRUNE_METHODS),
    "quantize": ("mode", "dynamic", QUANTIZE_MODES),
}
KINDS: dict[str, Any] = {
    "prune": tagged_union("method", "unstructured", PRUNE_METHODS),
    "quantize": tagged_union("mode", "dynamic", QUANTIZE_MODES),
    "finetune": FinetuneSpec,
    "distill": DistillSpec,
    "optimize": OptimizeSpec,
}
StageSpec = extensible(
    "stage",
    frozenset(KINDS),
    tagged_union("kind", None, KINDS),
    {kind: (selector, frozenset(variants)) for kind, (selector, _, variants) in VARIANTS.items()},
)
_ADAPTER: TypeAdapter[BaseStageSpec] = TypeAdapter(StageSpec)


def parse_stage(value: dict[str, Any] | BaseStageSpec) -> BaseStageSpec:
    """A stage spec from its recipe form (`{"kind": "prune", "method": "channel", ...}`) or as given."""
    return value if isinstance(value, BaseStageSpec) else _ADAPTER.validate_python(value)


def needs_tuning_split(specs: Sequence[BaseStageSpec]) -> bool:
    """Whether any stage chooses between training epochs (see `TrainingSettings.selects_epochs`), which
    needs a split held out of the training data."""
    return any(spec.training is not None and spec.training.selects_epochs for spec in specs)


def stage_names(specs: Sequence[BaseStageSpec]) -> list[str]:
    """Names used in reports: each spec's own, or '<kind><index>' (1-based)."""
    return [spec.name or f"{spec.kind}{i}" for i, spec in enumerate(specs, start=1)]


def where_key_applies(kind: str, key: str) -> tuple[str, list[str]] | None:
    """For a key unknown to one variant of `kind`: the selector and the variants that do have it."""
    if kind not in VARIANTS:
        return None
    selector, _, variants = VARIANTS[kind]
    owners = sorted({tag for tag, cls in variants.items() if key in cls.model_fields})
    return (selector, owners) if owners else None
