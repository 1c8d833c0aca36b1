"""The recipe's sections as typed, immutable objects: model and data sources, evaluation, output, gates.

Every section rejects unknown keys so that a typo ("epoch:" for "epochs:") fails loudly instead of
silently running with a default. Stage specs live in `stage_specs.py`, the whole recipe in `recipe.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
    model_validator,
)

from modelshrink.descriptors import METRICS
from modelshrink.recipe.kinds import extensible, tag_of
from modelshrink.user_code import TARGET_RE


class Strict(BaseModel):
    """A recipe section: unknown keys refused, immutable, and no NaN or infinite number (a NaN bound
    would pass every comparison; `.inf` is no limit a recipe needs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Shorthand(Strict):
    """A section a plain string may stand for, as `{<shorthand>: the string}` (its `_shorthand` validator);
    its JSON Schema says so too, so an editor accepts `huggingface: pkg.module:fn`."""

    shorthand: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {cls.shorthand: data} if isinstance(data, str) else data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        full = handler.resolve_ref_schema(handler(core_schema))
        return {"anyOf": [{"type": "string", "description": f"shorthand for {{{cls.shorthand}: ...}}"}, full]}


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


def _target(value: str) -> str:
    if not TARGET_RE.match(value):
        raise ValueError(f"must look like 'package.module:function', got {value!r}")
    return value


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
Target = Annotated[str, AfterValidator(_target)]  # the user's own code: 'package.module:function'

ExistingDir = Annotated[Path, AfterValidator(_existing_dir)]
Fraction = Annotated[float, AfterValidator(_open_fraction)]
Probability = Annotated[float, AfterValidator(_closed_fraction)]
PositiveInt = Annotated[int, Field(ge=1)]
# Sizes past what any real use needs, refused when the recipe is read instead of after minutes of work or
# by exhausting memory (a batch size of 10^7, an image size of 10^5, 10^9 epochs).
BatchSize = Annotated[int, Field(ge=1, le=65_536)]
ImageSize = Annotated[int, Field(ge=8, le=4096)]
Repeats = Annotated[int, Field(ge=1, le=1_000_000)]  # epochs, steps, batches, timed iterations
MAX_BATCH_BYTES = 16 * 2**30  # one batch of float32 inputs
PositiveFloat = Annotated[float, Field(gt=0)]
MAX_THREADS = 1024


def _position_as_name(value: Any) -> Any:
    """YAML reads `outputs: {0: ...}` with an integer key; report.json names that output "0"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be one line of printable text")
    return value


# one output of a model with several, as report.json's `outputs` names it: a key (`scores`) or a position
# (`0`); one line of printable text, as it is echoed in gate messages
OutputName = Annotated[
    str, BeforeValidator(_position_as_name), Field(min_length=1, max_length=200), AfterValidator(_printable)
]


# ----------------------------------------------------------------------------------------------- model
class HuggingFaceSpec(Shorthand):
    """A Hugging Face text model; a plain string is shorthand for `source`."""

    shorthand: ClassVar[str] = "source"
    source: str = Field(description="a model directory, 'pkg.module:function' returning one, or a hub id")
    task: Literal["embedding", "classification"] = Field(
        default="embedding",
        description="embedding: one pooled vector per text; classification: a sequence-classification head's logits",
    )
    pooling: Literal["mean", "cls", "max"] | None = Field(
        default=None, description="embedding pooling; default: the sentence-transformers config, else mean"
    )
    normalize: bool | None = Field(default=None, description="L2-normalize embeddings; default: as the model says")


class BaseSourceSpec(Strict):
    """A model source a plug-in adds: its `kind: Literal[...]` and fields, built by the function it
    registers (`modelshrink.registry.register`). A recipe names it as `model.source`; the checkpoints
    it writes name it too, and loading one imports the plug-in only when the user trusts its module."""

    kind: str = Field(description="the model source an installed plug-in adds")


SourceSpec = extensible("source", frozenset(), BaseSourceSpec)


class ModelSpec(Strict):
    """Where the model comes from: an architecture (torchvision name, factory, Hugging Face or a
    plug-in's source), a checkpoint, or both.

    A modelshrink checkpoint describes its own architecture. A plain state_dict or safetensors file
    needs `torchvision`, `factory`, `huggingface` or `source` beside it to say which module to load it into.
    """

    torchvision: str | None = Field(
        default=None,
        description="a torchvision classification model name, e.g. resnet50, built without downloaded weights",
    )
    factory: Target | None = Field(default=None, description="'pkg.module:function' returning an nn.Module")
    huggingface: HuggingFaceSpec | None = Field(
        default=None,
        description="a Hugging Face text model: its source as a string, or {source, task, pooling, "
        "normalize} (the hf extra)",
    )
    source: SourceSpec | None = Field(
        default=None,
        description="a model source an installed plug-in adds: {kind: ..., and that kind's keys} (docs/extending.md)",
    )
    num_classes: PositiveInt | None = Field(
        default=None,
        description="passed to the torchvision builder or the factory; also sizes a Hugging Face classifier head",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments for the torchvision builder or the factory (not for huggingface)",
    )
    checkpoint: ExistingFile | None = Field(
        default=None,
        description="a modelshrink checkpoint, or a state_dict (.pt/.pth) or .safetensors file "
        "with an architecture beside it",
    )
    allow_pickle: bool = Field(
        default=False,
        description="read a whole pickled nn.Module (runs code from the file: only files you trust); "
        "default: weights only",
    )
    trust: list[str] = Field(
        default_factory=list,
        description="modules whose factories a checkpoint may name and have run (this recipe's factory always may)",
    )

    @property
    def trusted(self) -> list[str]:
        """What a checkpoint loaded for this spec may name as its factory or plug-in source: `trust`, plus
        our own factory or source."""
        own = [self.factory] if self.factory else [type(self.source).__module__] if self.source else []
        return [*self.trust, *own]

    @model_validator(mode="after")
    def _one_architecture(self) -> ModelSpec:
        if sum(x is not None for x in (self.torchvision, self.factory, self.huggingface, self.source)) > 1:
            raise ValueError("give one of 'torchvision', 'factory', 'huggingface' or 'source'")
        if not (self.torchvision or self.factory or self.huggingface or self.source or self.checkpoint):
            raise ValueError("needs 'torchvision', 'factory', 'huggingface', 'source' or 'checkpoint'")
        if self.huggingface and self.kwargs:
            raise ValueError("kwargs do not apply to 'huggingface' models")
        if self.source and (self.kwargs or self.num_classes is not None):
            raise ValueError("kwargs and num_classes do not apply to a plug-in's 'source': give them as its own keys")
        if self.num_classes is not None and "num_classes" in self.kwargs:
            raise ValueError("num_classes is given twice (also in kwargs)")
        return self


# ------------------------------------------------------------------------------------------------ data
_TUNE_FRACTION_HELP = (
    "share of the training split held out (not trained on) to choose a training stage's best epoch "
    "(keep_best, early_stopping), so that the validation split that reports quality never chose the weights"
)


class BaseDataSpec(Strict):
    """How every data kind is loaded and held out; a plug-in's data kind subclasses it with its own
    `kind: Literal[...]` and fields (`modelshrink.registry`)."""

    label_hint: ClassVar[str] = "use labeled data"  # how to give this kind labels, for refusals that need them

    batch_size: BatchSize = Field(default=32, description="samples per batch, for training, evaluation and calibration")
    tune_fraction: Fraction = Field(default=0.1, description=_TUNE_FRACTION_HELP)
    num_workers: Annotated[int, Field(ge=0)] = Field(
        default=0, description="DataLoader worker processes; 0: loaded in the main process"
    )


class _Split(BaseDataSpec):
    """Data kinds that split one set into training and validation."""

    val_fraction: Fraction = Field(
        default=0.2,
        description="share of the data held out as the validation split (reports quality, "
        "gates the run) where the data has none of its own",
    )


class _DataCommon(_Split):
    """The image kinds."""

    batch_size: BatchSize = Field(default=64, description="samples per batch, for training, evaluation and calibration")
    mean: list[float] | None = Field(
        default=None,
        description="normalization mean: one value or one per channel (with std); "
        "default: ImageNet's for 3-channel imagefolder and cifar10, else 0.5",
    )
    std: list[float] | None = Field(
        default=None,
        description="normalization std: one value or one per channel (with mean), each > 0; "
        "default: ImageNet's for 3-channel imagefolder and cifar10, else 0.5",
    )

    @model_validator(mode="after")
    def _batch_fits(self) -> _DataCommon:
        """batch_size x channels x image_size^2 float32 values: a batch that no memory holds is refused now."""
        size = getattr(self, "image_size", 0)
        if self.batch_size * getattr(self, "channels", 3) * size * size * 4 > MAX_BATCH_BYTES:
            raise ValueError(f"batch_size {self.batch_size} of {size}x{size} images is more than "
                             f"{MAX_BATCH_BYTES // 2**30} GiB per batch")  # fmt: skip
        return self

    @property
    def labeled(self) -> bool:
        return True

    @model_validator(mode="after")
    def _mean_std(self) -> _DataCommon:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both 'mean' and 'std', or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class DigitsData(_DataCommon):
    """scikit-learn's bundled 8x8 handwritten digits (1797 real images, no download)."""

    kind: Literal["digits"] = Field(
        description="the source: scikit-learn's 1797 bundled 8x8 handwritten digits, 10 classes, no download"
    )
    image_size: ImageSize = Field(default=32, description="side in pixels the 8x8 images are upsampled to")
    channels: Literal[1, 3] = Field(default=3, description="1 (grayscale), or 3 (the gray repeated for RGB models)")


class ImageFolderData(_DataCommon):
    """A torchvision ImageFolder: `path/train` + `path/val`, or one folder split by `val_fraction`.
    With `labels: false`, any tree of images (no class folders): quality is then judged against the
    original model (agreement, cosine). `class_index: indices` reads class folder names as the
    model's class indices (`0/`, `207/`), so a 1000-class model can be scored on a few classes."""

    kind: Literal["imagefolder"] = Field(
        description="the source: a folder of image files, one subfolder per class (or any tree with labels: false)"
    )
    label_hint: ClassVar[str] = "use class folders with data.labels: true"
    path: ExistingDir = Field(description="the folder: path/train and path/val, or one folder split by val_fraction")
    image_size: ImageSize = Field(
        default=224, description="side in pixels: each image is resized (shorter side) and center-cropped to it"
    )
    channels: Literal[1, 3] = Field(default=3, description="3 (RGB) or 1 (grayscale); images are converted to it")
    labels: bool = Field(
        default=True,
        description="class folders give the labels; false: every image under path, "
        "unlabeled (judged against the original)",
    )
    class_index: Literal["folder_names", "indices"] = Field(
        default="folder_names",
        description="folder_names: sorted folders are classes 0..N-1; indices: a folder's name is its class index",
    )

    @model_validator(mode="after")
    def _index_needs_labels(self) -> ImageFolderData:
        if not self.labels and "class_index" in self.model_fields_set:
            raise ValueError("class_index applies to labeled folders (labels: true)")
        return self

    @property
    def labeled(self) -> bool:
        return self.labels


class Cifar10Data(_DataCommon):
    """CIFAR-10 in its python format (`cifar-10-batches-py`) from a local folder."""

    kind: Literal["cifar10"] = Field(
        description="the source: CIFAR-10 from a local folder; its test batch is the validation split"
    )
    path: ExistingDir = Field(
        description="a folder holding cifar-10-batches-bin or cifar-10-batches-py, or the batch files themselves"
    )
    image_size: ImageSize = Field(default=32, description="side in pixels the 32x32 images are resized to")
    channels: Literal[1, 3] = Field(default=3, description="3 (RGB), or 1 (converted to grayscale)")


class PythonData(BaseDataSpec):
    """Datasets from your own code: `factory(**kwargs)` returns `(train, val)` torch Datasets, or a
    dict with `train`, `val` and optional `calibration`. An item is `(input, target)`, or the input
    alone with `labeled: false`; an input is a tensor, a tuple or a dict of tensors."""

    kind: Literal["python"] = Field(description="the source: Datasets from your own code (factory)")
    label_hint: ClassVar[str] = "yield (input, target) items with data.labeled: true"
    factory: Target = Field(
        description="'pkg.module:function' returning (train, val) Datasets or {train, val, calibration}"
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments the factory is called with, e.g. {root: /data/val}"
    )
    labeled: bool = Field(default=True, description="items are (input, target); false: the input alone")


class TensorFileData(_Split):
    """Tensors in one file: `.pt` (read with weights_only), `.npz` or `.safetensors`, holding an
    `inputs` tensor (first dimension: samples) and optionally `targets`."""

    kind: Literal["tensors"] = Field(
        description="the source: named tensors in one .pt, .pth, .npz or .safetensors file"
    )
    label_hint: ClassVar[str] = "name the targets with data.targets"
    path: ExistingFile = Field(
        description="the file: .pt/.pth (read with weights_only), .npz (no pickles) or .safetensors"
    )
    inputs: str = Field(default="inputs", description="the key of the input tensor")
    targets: str | None = Field(default=None, description="the key of the targets; none: unlabeled")

    @model_validator(mode="after")
    def _known_format(self) -> TensorFileData:
        if self.path.suffix.lower() not in {".pt", ".pth", ".npz", ".safetensors"}:
            raise ValueError(f"path: {self.path.name} is not .pt, .pth, .npz or .safetensors")
        return self

    @property
    def labeled(self) -> bool:
        return self.targets is not None


class SyntheticData(_DataCommon):
    """Random images with learnable labels, for smoke tests and benchmarks."""

    kind: Literal["synthetic"] = Field(
        description="the source: random images with learnable labels (a noisy prototype per class), for smoke tests"
    )
    num_classes: Annotated[int, Field(ge=2)] = Field(
        default=10, description="how many classes (one prototype image each)"
    )
    num_samples: Annotated[int, Field(ge=4, le=10_000_000)] = Field(
        default=256, description="images generated in all, before the train/validation split"
    )
    image_size: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=32, description="side of the square images in pixels"
    )
    channels: Annotated[int, Field(ge=1, le=1024)] = Field(default=3, description="channels per image")


class TextData(_Split):
    """Texts for Hugging Face models: a .txt file (one text per line), .jsonl or .csv (`text_field`,
    optional `label_field`); without `path`, a bundled `sample`: ~100 English sentences, or 300
    held-out texts of other kinds (questions, commands, queries, support messages, reviews, passages)
    for `evaluate.data`. Without labels the quality metric is the cosine similarity of each model's
    outputs to the original model's."""

    kind: Literal["text"] = Field(
        description="the source: texts for Hugging Face models, tokenized to max_length token ids"
    )
    label_hint: ClassVar[str] = "set data.label_field"
    path: ExistingFile | None = Field(
        default=None, description="a .txt (one text per line), .jsonl or .csv file; none: the bundled `sample`"
    )
    sample: Literal["sentences", "held_out"] = Field(default="sentences", description="bundled texts, without path")
    text_field: str = Field(default="text", description="the .jsonl/.csv field holding each text")
    label_field: str | None = Field(
        default=None,
        description="the .jsonl/.csv field holding each text's class; "
        "none: unlabeled (quality: cosine to the original)",
    )
    tokenizer: str | None = Field(default=None, description="default: the model's huggingface source")
    max_length: Annotated[int, Field(ge=2, le=1_000_000)] = Field(
        default=128, description="tokens per text: longer texts are truncated, shorter ones padded"
    )
    val_fraction: Fraction = Field(
        default=0.5,
        description="share of the texts held out as the validation split, which reports quality and gates the run",
    )

    @model_validator(mode="after")
    def _label_needs_table(self) -> TextData:
        if self.label_field and self.path is not None and self.path.suffix.lower() == ".txt":
            raise ValueError("label_field needs a .jsonl or .csv file; a .txt file holds texts only")
        if self.path is not None and "sample" in self.model_fields_set:
            raise ValueError("give 'path' (your texts) or 'sample' (bundled ones), not both")
        return self

    @property
    def labeled(self) -> bool:
        return self.label_field is not None


_DATA_KINDS = (DigitsData, ImageFolderData, Cifar10Data, SyntheticData, TextData, PythonData, TensorFileData)
DataSpec = extensible(
    "data",
    frozenset(tag_of(cls, "data") for cls in _DATA_KINDS),
    Annotated[Union[_DATA_KINDS], Field(discriminator="kind")],  # noqa: UP007 (built from a tuple)
)


# ------------------------------------------------------------------------------- evaluation and output
class LatencySpec(Strict):
    batch_size: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=16, description="N in 'batch N'; batch 1 is always measured"
    )
    warmup: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        default=3, description="untimed calls of each model at batch 1 and at batch N before timing"
    )
    iterations: Repeats = Field(
        default=20, description="timed forward passes of each model at each batch size (round-robin, in bursts of 5)"
    )
    threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] | None = Field(
        default=None, description="threads of torch, ONNX Runtime and OpenVINO; default: all cores"
    )


class BaseMetricSpec(Strict):
    """A metric kind of `evaluate.metrics`: its handler returns `{name: float}` for a model on the
    validation data, higher is better unless the name is in `lower_is_better`. A plug-in's metric
    subclasses it with its own `kind: Literal[...]` and fields (`modelshrink.registry`)."""

    lower_is_better: list[str] = Field(
        default_factory=list, description="names of the returned metrics for which lower is better, e.g. [mae]"
    )


class CustomMetricSpec(Shorthand, BaseMetricSpec):
    """Your own metric: `function(model, val_loader) -> {name: float}`, higher is better unless the
    name is in `lower_is_better`. A plain string is shorthand for `function`."""

    shorthand: ClassVar[str] = "function"
    kind: Literal["python"] = Field(default="python", description="the metric: your own function (the default)")
    function: Target = Field(description="'pkg.module:fn' called as fn(model, val_loader), returning {name: float}")


def _metric_kind(value: Any) -> Any:
    """A metric's kind: a plain string is the `python` shorthand, as is a mapping without `kind`."""
    if isinstance(value, str):
        return "python"
    return value.get("kind", "python") if isinstance(value, dict) else getattr(value, "kind", None)


_metric_kind.__name__ = "kind"  # pydantic names the discriminator in its errors by this
MetricSpec = extensible(
    "metric",
    frozenset({"python"}),
    Annotated[Union[Annotated[CustomMetricSpec, Tag("python")]], Discriminator(_metric_kind)],  # noqa: UP007
)


class EvaluateSpec(Strict):
    latency: LatencySpec = Field(
        default_factory=LatencySpec,
        description="how latency is timed: batch size N, warm-up calls, timed iterations, threads",
    )
    max_val_batches: Repeats | None = Field(
        default=None,
        description="at most this many validation (and tuning) batches scored per model; default: all of them",
    )
    data: DataSpec | None = Field(
        default=None,
        description="a separate held-out set that reports quality and gates the run (all of it); the recipe's "
        "data then only trains, tunes and calibrates",
    )
    metrics: list[MetricSpec] = Field(
        default_factory=list, description="your own metrics, 'pkg.module:fn' returning {name: value}"
    )
    task: Literal["auto", "classification", "other"] = Field(
        default="auto",
        description="classification: outputs are (batch, classes) logits, so top-1 agreement applies; auto: "
        "one 2-D output that is neither L2-normalised nor from a model declaring itself an embedding model",
    )


class OutputSpec(Strict):
    dir: Path = Field(
        description="the run's output directory (the CLI's --output overrides it); an existing one needs --force"
    )
    checkpoint_name: str = Field(default="model.pt", description="file name of the final model's checkpoint in dir")
    html: bool = Field(default=False, description="also write a self-contained report.html (the plots extra)")

    @model_validator(mode="after")
    def _plain_name(self) -> OutputSpec:
        name = self.checkpoint_name
        if "/" in name or "\\" in name or name in {"", ".", "..", "report.json", "report.md"}:
            raise ValueError("checkpoint_name must be a plain file name other than the reports")
        return self


class Bounds(Strict):
    """Limits on one metric of the final model: absolute, or against the baseline's value."""

    min: float | None = Field(default=None, description="the final model's value at least (absolute)")
    max: float | None = Field(
        default=None, description="the final model's value at most (absolute), e.g. 5.0e6 for size_bytes"
    )
    max_drop: Annotated[float, Field(ge=0)] | None = Field(default=None, description="baseline - final at most")
    max_rise: Annotated[float, Field(ge=0)] | None = Field(default=None, description="final - baseline at most")
    min_ratio: PositiveFloat | None = Field(default=None, description="final / baseline at least")
    max_ratio: PositiveFloat | None = Field(default=None, description="final / baseline at most, e.g. 0.8")

    @model_validator(mode="after")
    def _some_limit(self) -> Bounds:
        if not self.model_fields_set:
            raise ValueError(f"give at least one of {', '.join(type(self).model_fields)}")
        return self


class SpeedBounds(Bounds):
    """Limits on a latency: also as a speed-up over the baseline, the convention reports use."""

    min_speedup: PositiveFloat | None = Field(
        default=None, description="baseline / final at least: 2.0 = at least twice as fast as the original"
    )


class OutputBounds(Strict):
    """Limits on one output of a model with several (a detector's boxes, scores), against the original's."""

    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        default=None, description="mean cosine of this output to the original model's, at least"
    )
    max_rel_error: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="||output - original|| / ||original|| over the validation split, at most"
    )

    @model_validator(mode="after")
    def _some_limit(self) -> OutputBounds:
        if not self.model_fields_set:
            raise ValueError("give min_cosine, max_rel_error or both")
        return self


class _NamedGates(Strict):
    """The first gates, kept by name: each is a bound on one metric (see `constraints.gates`)."""

    max_accuracy_drop: Probability | None = Field(
        default=None, description="absolute top-1 drop allowed against the baseline, e.g. 0.01"
    )
    min_accuracy: Probability | None = Field(
        default=None, description="top-1 accuracy of the final model at least (= accuracy.min), e.g. 0.9"
    )
    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        default=None, description="mean cosine similarity of the final model's outputs to the original's"
    )
    outputs: dict[OutputName, OutputBounds] = Field(
        default_factory=dict,
        description="per output of a model with several, by the name report.json's `outputs` gives it "
        "(a key such as `scores`, or a position such as `0`), e.g. {scores: {min_cosine: 0.99}}",
    )
    compare_to: ExistingFile | None = Field(
        default=None, description="an earlier report.json (e.g. last night's) to gate regressions against"
    )
    max_regression: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="per metric, how much worse than compare_to's final model: a difference for accuracy, "
        "cosine, loss, sparsity and your own metrics (0.005), a ratio for latency, size, MACs and params (1.10)",
    )

    @model_validator(mode="after")
    def _regressions(self) -> _NamedGates:
        """max_regression alone is allowed: the report may come with the run (`run --compare-to`), which
        then requires it (`recipe_run.compared_report`)."""
        if self.compare_to is not None and not self.max_regression:
            raise ValueError(
                "compare_to and max_regression go together: the report to compare with, and how much worse"
            )
        return self


class _CustomGates(_NamedGates):
    """Keys beyond the built-in metrics gate the user's own metrics (`evaluate.metrics`), each a
    `Bounds`; whether such a metric exists is known once the metrics ran (checked then, exit 2)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, Bounds] = Field(init=False)  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _extra_is_a_gate(cls, data: Any) -> Any:
        """A key that is no metric and holds no bounds is a typo: say so in the words for unknown keys."""
        if isinstance(data, dict):
            for key, value in data.items():
                if key not in cls.model_fields and not isinstance(value, dict | Bounds):
                    raise ValueError(
                        f"unknown key {key!r} (a gate on a metric of your own is a mapping such as {{min: 0.5}})"
                    )
        return data


# One optional `Bounds` per metric the report knows (descriptors.METRICS), e.g.
# `constraints: {accuracy: {max_drop: 0.01}, latency_b1_ms: {min_speedup: 1.25}, size_bytes: {max: 5.0e6}}`.
ConstraintsSpec = create_model(
    "ConstraintsSpec",
    __base__=_CustomGates,
    __module__=__name__,
    **{
        name: (
            (SpeedBounds if d.change == "speedup" else Bounds) | None,
            Field(default=None, description=f"{d.label}: {d.better} is better"),
        )
        for name, d in METRICS.items()
    },
)
