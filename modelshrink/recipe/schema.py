"""The recipe as typed, immutable objects.

Every section rejects unknown keys so that a typo ("epoch:" for "epochs:") fails loudly instead of
silently running with a default. Stage specs form a union tagged by `kind`; adding a stage kind means
adding one spec class here and one module in `modelshrink/stages/`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _open_fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError("must be in (0, 1)")
    return value


def _closed_fraction(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be in [0, 1]")
    return value


def _existing_file(path: Path) -> Path:
    """Inputs are checked when the recipe is read, so `validate` catches what `run` would refuse."""
    if not path.is_file():
        raise ValueError(f"{path} is a directory, not a file" if path.is_dir() else f"{path} does not exist")
    return path


def _existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a directory" if path.exists() else f"{path} does not exist")
    return path


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
ExistingDir = Annotated[Path, AfterValidator(_existing_dir)]
Fraction = Annotated[float, AfterValidator(_open_fraction)]
Probability = Annotated[float, AfterValidator(_closed_fraction)]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


# ----------------------------------------------------------------------------------------------- model
class HuggingFaceSpec(Strict):
    """A Hugging Face text model; a plain string is shorthand for `source`."""

    source: str = Field(description="a model directory, 'pkg.module:function' returning one, or a hub id")
    task: Literal["embedding", "classification"] = "embedding"
    pooling: Literal["mean", "cls", "max"] | None = Field(
        default=None, description="embedding pooling; default: the sentence-transformers config, else mean"
    )
    normalize: bool | None = Field(default=None, description="L2-normalize embeddings; default: as the model says")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data


class ModelSpec(Strict):
    """Where the model comes from: an architecture (torchvision name or factory), a checkpoint, or both.

    A modelshrink checkpoint describes its own architecture. A plain state_dict or safetensors file
    needs `torchvision`, `factory` or `huggingface` beside it to say which module to load it into.
    """

    torchvision: str | None = None
    factory: str | None = Field(default=None, description="'pkg.module:function' returning an nn.Module")
    huggingface: HuggingFaceSpec | None = None
    num_classes: PositiveInt | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: ExistingFile | None = None
    allow_pickle: bool = False
    trust: list[str] = Field(
        default_factory=list,
        description="modules whose factories a checkpoint may name and have run (this recipe's factory always may)",
    )

    @property
    def trusted(self) -> list[str]:
        """What a checkpoint loaded for this spec may name as its factory: `trust`, plus our own factory."""
        return [*self.trust, *([self.factory] if self.factory else [])]

    @model_validator(mode="after")
    def _one_architecture(self) -> ModelSpec:
        if sum(x is not None for x in (self.torchvision, self.factory, self.huggingface)) > 1:
            raise ValueError("give one of 'torchvision', 'factory' or 'huggingface'")
        if not (self.torchvision or self.factory or self.huggingface or self.checkpoint):
            raise ValueError("needs 'torchvision', 'factory', 'huggingface' or 'checkpoint'")
        if self.huggingface and self.kwargs:
            raise ValueError("kwargs do not apply to 'huggingface' models")
        if self.factory and not _FACTORY_RE.match(self.factory):
            raise ValueError(f"factory must look like 'package.module:function', got {self.factory!r}")
        if self.num_classes is not None and "num_classes" in self.kwargs:
            raise ValueError("num_classes is given twice (also in kwargs)")
        return self


# ------------------------------------------------------------------------------------------------ data
_TUNE_FRACTION_HELP = (
    "share of the training split held out (not trained on) to choose a training stage's best epoch "
    "(keep_best, early_stopping), so that the validation split that reports quality never chose the weights"
)


class _DataCommon(Strict):
    batch_size: PositiveInt = 64
    val_fraction: Fraction = 0.2
    tune_fraction: Fraction = Field(default=0.1, description=_TUNE_FRACTION_HELP)
    num_workers: Annotated[int, Field(ge=0)] = 0
    mean: list[float] | None = None
    std: list[float] | None = None

    @model_validator(mode="after")
    def _mean_std(self) -> _DataCommon:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both 'mean' and 'std', or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class DigitsData(_DataCommon):
    """scikit-learn's bundled 8x8 handwritten digits (1797 real images, no download)."""

    kind: Literal["digits"]
    image_size: Annotated[int, Field(ge=8)] = 32
    channels: Literal[1, 3] = 3


class ImageFolderData(_DataCommon):
    """A torchvision ImageFolder: `path/train` + `path/val`, or one folder split by `val_fraction`."""

    kind: Literal["imagefolder"]
    path: ExistingDir
    image_size: Annotated[int, Field(ge=8)] = 224
    channels: Literal[1, 3] = 3


class Cifar10Data(_DataCommon):
    """CIFAR-10 in its python format (`cifar-10-batches-py`) from a local folder."""

    kind: Literal["cifar10"]
    path: ExistingDir
    image_size: Annotated[int, Field(ge=8)] = 32
    channels: Literal[1, 3] = 3


class SyntheticData(_DataCommon):
    """Random images with learnable labels, for smoke tests and benchmarks."""

    kind: Literal["synthetic"]
    num_classes: Annotated[int, Field(ge=2)] = 10
    num_samples: Annotated[int, Field(ge=4)] = 256
    image_size: Annotated[int, Field(ge=1)] = 32
    channels: PositiveInt = 3


class TextData(Strict):
    """Texts for Hugging Face models: a .txt file (one text per line), .jsonl or .csv (`text_field`,
    optional `label_field`); without `path`, ~100 bundled English sentences. Without labels the quality
    metric is the cosine similarity of each model's outputs to the original model's."""

    kind: Literal["text"]
    path: ExistingFile | None = None
    text_field: str = "text"
    label_field: str | None = None
    tokenizer: str | None = Field(default=None, description="default: the model's huggingface source")
    max_length: Annotated[int, Field(ge=2)] = 128
    batch_size: PositiveInt = 32
    val_fraction: Fraction = 0.5
    tune_fraction: Fraction = Field(default=0.1, description=_TUNE_FRACTION_HELP)
    num_workers: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _label_needs_table(self) -> TextData:
        if self.label_field and self.path is not None and self.path.suffix.lower() == ".txt":
            raise ValueError("label_field needs a .jsonl or .csv file; a .txt file holds texts only")
        return self

    @property
    def labeled(self) -> bool:
        return self.label_field is not None


DataSpec = Annotated[DigitsData | ImageFolderData | Cifar10Data | SyntheticData | TextData, Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------------- stages
class _StageCommon(Strict):
    name: str | None = Field(default=None, description="shown in reports; defaults to '<kind><index>'")


class TrainingSettings(Strict):
    """Settings of the one training loop, shared by every stage that trains."""

    epochs: PositiveInt = 1
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: PositiveFloat = 1e-3
    layer_lrs: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="discriminative learning rates: {name glob: lr}, first match wins"
    )
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Probability = 0.9
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "cosine"
    step_size: PositiveInt = Field(default=1, description="epochs between LR drops (schedule: step)")
    gamma: Fraction = Field(default=0.1, description="LR factor per drop (schedule: step)")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    keep_sparsity: bool = Field(default=True, description="weights that are exactly zero stay zero")
    max_batches_per_epoch: PositiveInt | None = None
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


class FinetuneSpec(TrainingSettings, _StageCommon):
    """Train the current model on the recipe's data (fine-tuning and transfer learning).

    `strategy` chooses what trains: `full` (everything), `head` (the top-level block holding the
    classifier, e.g. VGG's 3-layer classifier; the backbone is frozen), `last_layer` (only the final
    layer; BatchNorm statistics frozen too), `partial` (the `unfreeze` globs and/or the last
    `unfreeze_last` blocks, plus the classifier). `num_classes` replaces the classifier with a new one.
    """

    kind: Literal["finetune"]
    strategy: Literal["full", "head", "last_layer", "partial"] = "full"
    unfreeze: list[str] = Field(default_factory=list, description="partial: module name globs that train")
    unfreeze_last: PositiveInt | None = Field(default=None, description="partial: train the last N blocks")
    num_classes: PositiveInt | None = Field(default=None, description="replace the classifier for N classes")

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

    student: str
    teacher: str


class DistillSpec(TrainingSettings, _StageCommon):
    """Knowledge distillation: loss = alpha * KL(teacher/T || student/T) * T^2 + (1 - alpha) * CE
    (+ hint_weight * MSE of projected hint features)."""

    kind: Literal["distill"]
    teacher: ModelSpec | None = Field(default=None, description="default: the model before any stage ran")
    temperature: PositiveFloat = 4.0
    alpha: Probability = 0.7
    hints: list[HintSpec] = Field(default_factory=list)
    hint_weight: Annotated[float, Field(ge=0)] = 1.0
    compare_finetune: bool = Field(
        default=False, description="also fine-tune a copy with the same settings and report which won"
    )


def _only_for(spec: BaseModel, selector: str, table: dict[str, set[str]]) -> None:
    """Reject keys the user set that do not apply to the chosen method / mode."""
    chosen = getattr(spec, selector)
    for key, allowed in table.items():
        if key in spec.model_fields_set and chosen not in allowed:
            raise ValueError(f"{key!r} applies to {selector} {' / '.join(sorted(allowed))} only")


_IMPORTANCE_BY_METHOD = {
    "unstructured": ("l1", "random"),
    "channel": ("l1", "l2", "bn_scale", "taylor", "random"),
    "block": ("output_change", "random"),
}
_ONLY_FOR = {
    "module_types": {"unstructured"},
    "layer_amounts": {"channel"},
    "round_to": {"channel"},
    "steps": {"channel"},
    "finetune_between": {"channel"},
    "scope": {"unstructured", "channel"},
    "include": {"unstructured", "channel"},
    "recalibrate_bn": {"channel", "block"},
}


class PruneSpec(_StageCommon):
    """Pruning, three ways.

    - `unstructured`: zero the least important weights (made permanent, no masks left);
    - `channel`: physically remove conv filters / Linear neurons with Torch-Pruning's dependency
      graph, so residual and depthwise couplings stay valid and the model gets faster and smaller;
    - `block`: drop whole shape-preserving (residual) blocks, the least important first.
    """

    kind: Literal["prune"]
    method: Literal["unstructured", "channel", "block"] = "unstructured"
    importance: Literal["l1", "l2", "bn_scale", "taylor", "random", "output_change"] = Field(
        default=None, validate_default=False, description="default: l1, or output_change for blocks"
    )
    amount: Fraction = Field(description="fraction of weights (unstructured), channels or blocks to remove")
    scope: Literal["global", "layer"] = Field(
        default=None, validate_default=False, description="default: global (unstructured), layer (channel)"
    )
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(
        default_factory=list, description="never pruned; channel/block always keep the classifier"
    )
    module_types: list[Literal["Linear", "Conv1d", "Conv2d", "Conv3d"]] = Field(
        default_factory=lambda: ["Linear", "Conv1d", "Conv2d", "Conv3d"]
    )
    layer_amounts: dict[str, Fraction] = Field(default_factory=dict, description="per-layer ratios by name glob")
    round_to: PositiveInt | None = Field(default=None, description="keep channel counts multiples of this")
    steps: PositiveInt = Field(default=1, description="reach `amount` gradually over this many steps")
    finetune_between: TrainingSettings | None = Field(default=None, description="training between steps")
    calibration_batches: PositiveInt = Field(
        default=4, description="training batches for taylor / block scores and BatchNorm recalibration"
    )
    recalibrate_bn: bool = Field(default=True, description="re-estimate BatchNorm statistics after removal")

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            method = data.get("method", "unstructured")
            if method in _IMPORTANCE_BY_METHOD:
                data = {**data}
                data.setdefault("importance", "output_change" if method == "block" else "l1")
                if method != "block":
                    data.setdefault("scope", "layer" if method == "channel" else "global")
        return data

    @model_validator(mode="after")
    def _method_specific(self) -> PruneSpec:
        allowed = _IMPORTANCE_BY_METHOD[self.method]
        if self.importance not in allowed:
            raise ValueError(
                f"importance {self.importance!r} does not apply to method {self.method!r}; "
                f"use one of {', '.join(allowed)}"
            )
        _only_for(self, "method", _ONLY_FOR)
        if self.finetune_between is not None and self.steps < 2:
            raise ValueError("finetune_between needs steps >= 2")
        return self


_QUANTIZE_ONLY_FOR = {
    "module_types": {"dynamic"},
    "calibration_batches": {"static", "dynamic"},
    "smoothing": {"dynamic"},
    "observer": {"static"},
    "per_channel": {"dynamic", "static", "qat"},
    "qat": {"qat"},
}


class QuantizeSpec(_StageCommon):
    """Quantization, one mode per stage:

    - `dynamic`: int8 weights, activations quantized on the fly (Linear/LSTM/GRU), int8 embedding tables;
    - `static`: int8 weights and activations, activation ranges calibrated on training batches;
    - `qat`: quantization-aware training (fake-quant, then the same training loop), then int8;
    - `weight_only`: int8 weights (per output channel) with float activations and compute;
    - `fp16` / `bf16`: half-precision weights and compute (inputs cast on the way in, logits back to fp32).
    """

    kind: Literal["quantize"]
    mode: Literal["dynamic", "static", "qat", "weight_only", "fp16", "bf16"] = "dynamic"
    exclude: list[str] = Field(default_factory=list, description="module name globs kept in float")
    module_types: list[Literal["Linear", "LSTM", "GRU", "Embedding"]] = Field(
        default_factory=lambda: ["Linear", "LSTM", "GRU", "Embedding"]
    )
    calibration_batches: PositiveInt = Field(default=8, description="training batches to calibrate ranges")
    observer: Literal["minmax", "histogram"] = "histogram"
    per_channel: bool = Field(default=True, description="one weight scale per output channel (Linear, Conv)")
    smoothing: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None,
        description="dynamic: SmoothQuant alpha (e.g. 0.7), moving activation outliers into the weights, "
        "calibrated on calibration_batches; costs one multiply per Linear",
    )
    qat: TrainingSettings = Field(default_factory=TrainingSettings, description="training settings for mode qat")

    @model_validator(mode="after")
    def _mode_specific(self) -> QuantizeSpec:
        _only_for(self, "mode", _QUANTIZE_ONLY_FOR)
        return self


StageSpec = Annotated[PruneSpec | QuantizeSpec | FinetuneSpec | DistillSpec, Field(discriminator="kind")]


def training_settings(spec: BaseModel) -> TrainingSettings | None:
    """The settings a stage runs the training loop with (finetune, distill, QAT, pruning with training
    between steps), or None for a stage that does not train."""
    if isinstance(spec, QuantizeSpec):
        return spec.qat if spec.mode == "qat" else None
    if isinstance(spec, PruneSpec):
        return spec.finetune_between
    return spec if isinstance(spec, TrainingSettings) else None


def _trains(spec: BaseModel) -> bool:
    return training_settings(spec) is not None


# ------------------------------------------------------------------------------- evaluation and output
class LatencySpec(Strict):
    batch_size: PositiveInt = Field(default=16, description="N in 'batch N'; batch 1 is always measured")
    warmup: Annotated[int, Field(ge=0)] = 3
    iterations: PositiveInt = 20
    threads: PositiveInt | None = Field(default=None, description="torch threads; default: all cores")


class EvaluateSpec(Strict):
    latency: LatencySpec = Field(default_factory=LatencySpec)
    max_val_batches: PositiveInt | None = None


class OutputSpec(Strict):
    dir: Path
    checkpoint_name: str = "model.pt"

    @model_validator(mode="after")
    def _plain_name(self) -> OutputSpec:
        name = self.checkpoint_name
        if "/" in name or "\\" in name or name in {"", ".", "..", "report.json", "report.md"}:
            raise ValueError("checkpoint_name must be a plain file name other than the reports")
        return self


class ConstraintsSpec(Strict):
    max_accuracy_drop: Probability | None = Field(
        default=None, description="absolute top-1 drop allowed against the baseline, e.g. 0.01"
    )
    min_accuracy: Probability | None = None
    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        default=None, description="mean cosine similarity of the final model's outputs to the original's"
    )


class Recipe(Strict):
    name: str | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] = 0  # what torch.manual_seed accepts
    model: ModelSpec
    data: DataSpec
    stages: list[StageSpec] = Field(default_factory=list)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    output: OutputSpec
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)

    @property
    def needs_tuning_split(self) -> bool:
        """Whether any stage chooses between training epochs (see `TrainingSettings.selects_epochs`)."""
        settings = [training_settings(spec) for spec in self.stages]
        return any(s is not None and s.selects_epochs for s in settings)

    def stage_names(self) -> list[str]:
        """Names used in reports: the recipe's own, or '<kind><index>' (1-based)."""
        return [spec.name or f"{spec.kind}{i}" for i, spec in enumerate(self.stages, start=1)]

    @model_validator(mode="after")
    def _trainable_after_quantize(self) -> Recipe:
        quantized = False
        for spec in self.stages:
            if _trains(spec) and quantized:
                raise ValueError(
                    f"stage {spec.kind!r} cannot train a model that an earlier 'quantize' stage "
                    "made int8; put training stages before quantization"
                )
            quantized = quantized or isinstance(spec, QuantizeSpec)
        return self

    @model_validator(mode="after")
    def _text_data_fits(self) -> Recipe:
        if not isinstance(self.data, TextData):
            return self
        if self.data.tokenizer is None and self.model.huggingface is None:
            raise ValueError("data.tokenizer is needed when the model is not given by model.huggingface")
        if not self.data.labeled:
            for spec in self.stages:
                if _trains(spec):
                    raise ValueError(f"stage {spec.kind!r} trains, which needs labels: set data.label_field")
                if isinstance(spec, PruneSpec) and spec.importance == "taylor":
                    raise ValueError("importance 'taylor' needs labels (gradients of the loss): set data.label_field")
            for gate in ("max_accuracy_drop", "min_accuracy"):
                if getattr(self.constraints, gate) is not None:
                    raise ValueError(f"constraints.{gate} needs labels: set data.label_field, or gate on min_cosine")
        return self

    @model_validator(mode="after")
    def _unique_stage_names(self) -> Recipe:
        names = self.stage_names()
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique, repeated: {', '.join(duplicates)}")
        return self
