"""A corpus of bad and hostile inputs run through the CLI, each checked the same four ways (issue #10).

For every case: the documented exit code; for a refusal, exactly one `error:` line naming the problem
and no traceback; nothing new on disk (no output, resume state or lock); every input byte-for-byte as
it was; and a canary file that only code run from the input could create never appears. The focused
tests beside this file pin each fix; this corpus keeps the whole surface honest as the code grows.
`pytest tests/reliability/test_hostile_corpus.py -q` prints the count of inputs tried.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from modelshrink.cli import app
from tests.conftest import tiny_recipe

CANARY = "canary"
MLP = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 8}}
GOOD_CHECKPOINT = {
    "format": "modelshrink",
    "format_version": 1,
    "architecture": MLP,
    "transforms": [],
    "input_shape": [1, 8, 8],
}


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # makes the inputs in a fresh directory; returns the CLI arguments
    exit_code: int = 2
    message: str = ""  # part of the one error line


# ------------------------------------------------------------------------------------------ builders
def run_recipe(**sections: object) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        recipe = tiny_recipe(tmp, **sections)
        (tmp / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        return ["run", "r.yaml"]

    return setup


def recipe_text(text: str | bytes, command: str = "run") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / "r.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
        return [command, "r.yaml"]

    return setup


def with_set(*items: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        return [*run_recipe()(tmp), *(arg for item in items for arg in ("--set", item))]

    return setup


def checkpoint(payload: object, command: str = "inspect") -> Callable[[Path], list[str]]:
    """`inspect ck.pt`, or a recipe that loads it (`run`)."""

    def setup(tmp: Path) -> list[str]:
        value = payload(tmp) if callable(payload) else payload
        if isinstance(value, bytes):
            (tmp / "ck.pt").write_bytes(value)
        else:
            torch.save(value, tmp / "ck.pt")
        if command == "inspect":
            return ["inspect", "ck.pt"]
        return run_recipe(model={"checkpoint": "ck.pt"})(tmp)

    return setup


def mlp_state(fill: float | None = None) -> dict[str, torch.Tensor]:
    state = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10))
    weights = {k: v.detach().clone() for k, v in state.state_dict().items()}
    if fill is not None:
        weights["1.weight"][0, 0] = fill
    return weights


def good_checkpoint(**change: object) -> dict[str, object]:
    payload = {**GOOD_CHECKPOINT, "state_dict": mlp_state(), **change}
    return {k: v for k, v in payload.items() if v is not None}


def reshape(tensors: dict[str, list[int]], **attrs: object) -> dict[str, object]:
    """A structured-pruning record for the MLP's first Linear layer."""
    return {"kind": "reshape_modules", "version": 1, "modules": {"1": {"attrs": attrs, "tensors": tensors}}}


class Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.path}",))


def evil_pickle(tmp: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": Evil(str(tmp / CANARY))}, buffer)
    return buffer.getvalue()


def factory_runs_code(tmp: Path) -> dict[str, object]:
    return good_checkpoint(architecture={"factory": "os:system", "kwargs": {"command": f"touch {tmp / CANARY}"}})


def images(tmp: Path, classes: tuple[str, ...] = ("cat", "dog"), bad: bytes | None = None) -> None:
    for index, cls in enumerate(classes):
        for i in range(6):
            path = tmp / "imgs" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 40 * index, dtype=np.uint8)).save(path)
    if bad is not None:
        (tmp / "imgs" / classes[-1] / "5.png").write_bytes(bad)


def image_run(classes: tuple[str, ...] = ("cat", "dog"), bad: bytes | None = None) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        images(tmp, classes, bad)
        data = {"kind": "imagefolder", "path": "imgs", "image_size": 8, "channels": 1, "batch_size": 4}
        model = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 8, "num_classes": 2}}
        return run_recipe(data=data, model=model)(tmp)

    return setup


def text_run(content: str | bytes, name: str = "t.jsonl", label: str | None = "label") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        data = {
            "kind": "text",
            "path": name,
            "tokenizer": "bert-base-uncased",
            **({"label_field": label} if label else {}),
        }
        return run_recipe(data=data, model={"huggingface": "no_such_model_dir/"})(tmp)

    return setup


def cifar_evil(tmp: Path) -> list[str]:
    (tmp / "cifar").mkdir()
    for name in ("data_batch_1", "test_batch"):
        (tmp / "cifar" / name).write_bytes(pickle.dumps(Evil(str(tmp / CANARY))))
    return run_recipe(data={"kind": "cifar10", "path": "cifar", "image_size": 8, "channels": 1})(tmp)


def then(
    setup: Callable[[Path], list[str]],
    *extra: str,
    prepare: Callable[[Path], object] | None = None,
    command: str | None = None,
) -> Callable[[Path], list[str]]:
    """`setup` after `prepare`, with `extra` arguments and optionally another command."""

    def composed(tmp: Path) -> list[str]:
        if prepare:
            prepare(tmp)
        argv = setup(tmp)
        return [command or argv[0], *argv[1:], *extra]

    return composed


def args(*argv: str) -> Callable[[Path], list[str]]:
    return lambda tmp: list(argv)


def mkdir(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).mkdir()


def earlier_output(tmp: Path) -> None:
    mkdir("out")(tmp)
    (tmp / "out" / "report.json").write_text(json.dumps({"schema_version": 1, "recipe": {}}))


def checkpoint_in_a_folder(tmp: Path) -> list[str]:
    mkdir("models")(tmp)
    torch.save(good_checkpoint(), tmp / "models" / "ck.pt")
    return run_recipe(model={"checkpoint": "models/ck.pt"})(tmp)


def busy_output(tmp: Path) -> None:
    (tmp / ".out.lock").write_text(str(os.getppid()))  # a live process that is not this one


def big_recipe(tmp: Path) -> list[str]:
    (tmp / "r.yaml").write_text("name: x\n" + "# padding\n" * 200_000)
    return ["run", "r.yaml"]


def zip_of_junk() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"not a pickle")
    return buffer.getvalue()


# ----------------------------------------------------------------- every other command (issue #24)
REPORT = {
    "schema_version": 1,
    "recipe": {"name": "tiny"},
    "environment": {"torch": "2", "torch_threads": 2, "cpu_model": "x"},
    "final": {
        "accuracy": 0.5, "agreement": 1.0, "cosine": 1.0, "loss": 1.0, "max_abs_error": 0.0, "params": 10,
        "nonzero_params": 10, "sparsity": 0.0, "macs": 10, "size_bytes": 100,
        "latency_ms": {"batch1_median": 1.0, "batch1_p95": 1.1, "batchN_median": 2.0, "batchN_p95": 2.2,
                       "batch_n": 4, "threads": 2},
    },
}  # fmt: skip


def reports(last: object, *extra: str, raw: bytes | None = None) -> Callable[[Path], list[str]]:
    """`compare a.json b.json ...`, b.json holding `last` (or the bytes `raw`)."""

    def setup(tmp: Path) -> list[str]:
        (tmp / "a.json").write_text(json.dumps(REPORT))
        (tmp / "b.json").write_bytes(raw if raw is not None else json.dumps(last).encode())
        return ["compare", "a.json", "b.json", *extra]

    return setup


def with_final(**change: object) -> dict[str, object]:
    return {**REPORT, "final": {**REPORT["final"], **change}}


def exported(*extra: str, payload: object = None) -> Callable[[Path], list[str]]:
    """`export ck.pt ...` of a good (or the given) checkpoint."""

    def setup(tmp: Path) -> list[str]:
        torch.save(payload if payload is not None else good_checkpoint(), tmp / "ck.pt")
        valid_recipe(tmp)
        return ["export", "ck.pt", *extra]

    return setup


def valid_recipe(tmp: Path) -> None:
    (tmp / "r.yaml").write_text(VALID_TEXT)


SEARCHED = [{"kind": "prune", "amount": {"search": [0.3, 0.5]}}]


def searched(*extra: str, journal: bytes | Callable[[Path], None] | None = None, command: str = "tune"
             ) -> Callable[[Path], list[str]]:  # fmt: skip
    """`tune t.yaml ...` (or `analyze`) of a tiny recipe with a search space; `journal` an earlier study's
    journal (its bytes, or a function that writes it)."""

    def setup(tmp: Path) -> list[str]:
        (tmp / "t.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp, stages=SEARCHED), sort_keys=False))
        if journal is not None:
            (tmp / "search").mkdir()
            if isinstance(journal, bytes):
                (tmp / "search" / "study.journal").write_bytes(journal)
            else:
                journal(tmp / "search" / "study.journal")
        return [command, "t.yaml", *extra]

    return setup


def other_study(path: Path) -> None:
    """A real Optuna journal holding a study of the recipe's name that another recipe made."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="tiny")
    study.set_user_attr("modelshrink", "another recipe")


def foreign_study(path: Path) -> None:
    """A plain Optuna study of the recipe's name, made by someone else's script (not by tune)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="tiny")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)


def app_database(tmp: Path) -> None:
    """Another application's SQLite database, which Optuna would add its tables to."""
    import sqlite3

    with sqlite3.connect(tmp / "app.db") as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")


def nested(depth: int) -> bytes:
    return b'{"schema_version": 1, "final": ' + b"[" * depth + b"]" * depth + b"}"


# fmt: off
COMMAND_CASES = [
    # compare: reports are someone else's files
    Case("compare one report", args("compare", "a.json"), message="at least two"),
    Case("compare missing report", reports(REPORT, "nope.json"), message="nope.json"),
    Case("compare a list", reports([1, 2]), message="b.json"),
    Case("compare deep nesting", reports(None, raw=nested(100_000)), message="b.json"),
    Case("compare huge int", reports(None, raw=json.dumps(REPORT).replace("0.5", "9" * 5000).encode())),
    Case("compare -Infinity", reports(None, raw=json.dumps(REPORT).replace("0.5", "-Infinity").encode())),
    Case("compare NaN", reports(None, raw=json.dumps(REPORT).replace("0.5", "NaN").encode()), message="b.json"),
    Case("compare accuracy a string", reports(with_final(accuracy="high")), message="b.json"),
    Case("compare no latency", reports(with_final(latency_ms=None)), message="b.json"),
    Case("compare no final", reports({**REPORT, "final": None}), message="b.json"),
    Case("compare newer schema", reports({**REPORT, "schema_version": 2}), message="b.json"),
    Case("compare not UTF-8", reports(None, raw=b'{"schema_version": 1, "recipe": "\\xff\xff"}'), message="b.json"),
    Case("compare --junit over a report", reports(REPORT, "--junit", "b.json"), message="input report"),
    Case("compare --plot over a report", reports(REPORT, "--plot", "a.json"), message="input report"),
    Case("compare --junit over a foreign file", then(reports(REPORT, "--junit", "r.yaml"), prepare=valid_recipe),
         message="not written by modelshrink"),
    Case("compare --plot under a file", reports(REPORT, "--plot", "a.json/p.png"), message="not a writable"),
    # run's secondary outputs and --compare-to
    Case("run --junit over the recipe", then(run_recipe(), "--junit", "r.yaml"), message="input recipe"),
    Case("run --junit inside the output", then(run_recipe(), "--junit", "out/g.xml"), message="written as a whole"),
    Case("run --junit under a file", then(run_recipe(), "--junit", "r.yaml/g.xml"), message="not a writable"),
    Case("run --compare-to a damaged report", then(run_recipe(), "--compare-to", "b.json",
         prepare=lambda tmp: (tmp / "b.json").write_text('{"schema_version": 1}')), message="b.json"),
    Case("a directory at the lock", then(run_recipe(), prepare=mkdir(".out.lock")), message="in the way"),
    # export
    Case("export over the recipe", exported("-o", "r.yaml", "--force"), message="must end in .onnx"),
    Case("export over the checkpoint", exported("-o", "ck.pt", "--force"), message="must end in .onnx"),
    Case("export openvino to a .bin", exported("--format", "openvino", "-o", "out.bin"), message="must end in .xml"),
    Case("export unknown format", exported("--format", "tflite"), message="--format"),
    Case("export unknown quantize", exported("--quantize", "int3"), message="--quantize"),
    Case("export static without data", exported("--quantize", "static"), message="--data"),
    Case("export under a file", exported("-o", "r.yaml/m.onnx"), message="not a writable"),
    Case("export runs no untrusted factory", then(args("export", "ck.pt"), prepare=lambda tmp: torch.save(
        factory_runs_code(tmp), tmp / "ck.pt")), message="would import and run code"),
    Case("export our own resolver", then(args("export", "ck.pt", "--trust", "modelshrink"), prepare=lambda tmp:
         torch.save(good_checkpoint(architecture={"factory": "modelshrink.models.factory:build", "kwargs": {
             "target": "os:system", "kwargs": {"command": f"touch {tmp / CANARY}"}}}), tmp / "ck.pt")),
         message="ck.pt"),
    Case("export a missing checkpoint", args("export", "nope.pt"), message="nope.pt"),
    # analyze
    Case("analyze into the current directory", searched("-o", ".", "--force", command="analyze"),
         message="current directory"),
    Case("analyze over a foreign directory", then(searched("-o", "imgs", "--force", command="analyze"),
         prepare=mkdir("imgs")), message="not written by modelshrink"),
    Case("analyze an untrusted checkpoint", then(run_recipe(model={"checkpoint": "ck.pt"}), command="analyze",
         prepare=lambda tmp: torch.save(factory_runs_code(tmp), tmp / "ck.pt")), message="would import"),
    Case("analyze missing recipe", args("analyze", "nope.yaml"), message="nope.yaml"),
    # tune
    Case("tune without search spaces", then(run_recipe(), command="tune"), message="no search spaces"),
    Case("tune --resume without a study", searched("--resume", "-o", "search"), message="no study.journal"),
    Case("tune over a foreign directory", then(searched("-o", "imgs", "--force"), prepare=mkdir("imgs")),
         message="not written by modelshrink"),
    Case("tune into the current directory", searched("-o", ".", "--force"), message="current directory"),
    Case("tune bad objective", searched("--objective", "speed"), message="--objective"),
    Case("tune damaged journal", searched("--resume", "-o", "search", journal=b"{not json\n"), message="no study"),
    Case("tune journal a list", searched("--resume", "-o", "search", journal=b"[1]\n"), message="as an Optuna storage"),
    Case("tune empty journal", searched("--resume", "-o", "search", journal=b""), message="holds no earlier search"),
    Case("tune journal of another recipe", searched("--resume", "-o", "search", journal=other_study),
         message="made for other stages"),
    Case("tune bad sampler", searched("--sampler", "bayes"), message="--sampler"),
    Case("tune grid too large", then(args("tune", "t.yaml", "--sampler", "grid"), prepare=lambda tmp: (
        tmp / "t.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp, stages=[{"kind": "prune", "amount": {"search": {
            "min": 0.1, "max": 0.999, "step": 0.001}}} for _ in range(3)])))), message="--sampler grid"),
    Case("tune worker without a storage", searched("--worker"), message="--storage"),
    Case("tune unknown storage scheme", searched("--storage", "ftp://x/y"), message="--storage"),
    Case("tune storage over the recipe", searched("--storage", "t.yaml"), message="is or lies in the input recipe"),
    Case("tune storage over a foreign file", then(searched("--storage", "notes.txt"),
         prepare=lambda tmp: (tmp / "notes.txt").write_text("my notes")), message="not an Optuna journal"),
    Case("tune --resume of a new storage file", searched("--resume", "--storage", "new.journal"),
         message="new.journal holds no earlier search"),
    Case("tune in-memory sqlite", searched("--storage", "sqlite://"), message="in-memory"),
    Case("tune in-memory sqlite named", searched("--storage", "sqlite:///:memory:"), message="in-memory"),
    Case("tune sqlite of another application", then(searched("--storage", "sqlite:///app.db"),
         prepare=app_database), message="a database of something else"),
    Case("tune storage is the output directory", searched("-o", "search", "--storage", "search"),
         message="lies in the output directory"),
    Case("tune storage over a file the search writes", searched("-o", "search", "--storage", "search/trials.json"),
         message="lies in the output directory"),
    Case("tune storage name with a line break", searched("--resume", "--storage", "no\nerror: forged"),
         message="no\\nerror: forged"),
    Case("tune journal cut off mid-record", searched("--resume", "-o", "search",
         journal=b'{"op_code": 0, "worker_id": "w", "study_name": "tiny", "directions": [1]}\n{"op_code": 5, "tr'),
         message="is cut off"),
    Case("tune someone else's study in a storage", then(searched("--storage", "s.journal"),
         prepare=lambda tmp: foreign_study(tmp / "s.journal")), message="is not a candidate of this recipe"),
    Case("tune --force over a shared study", then(searched("--force", "--storage", "s.journal"),
         prepare=lambda tmp: other_study(tmp / "s.journal")), message="already holds study 'tiny'"),
    Case("tune a ballot study's name", searched("--study", "tiny:finish:3"), message="the tool's own"),
    Case("tune more workers than cores", searched("--workers", "100000"), message="cores"),
    Case("validate 10^14 candidates at once", then(args("validate", "t.yaml"), prepare=lambda tmp: (
        tmp / "t.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp, stages=[{"kind": "prune", "amount": {"search": {
            "min": 0.1, "max": 0.999, "step": 0.001}}}] * 5)))), exit_code=0),
    Case("export --force over a foreign .onnx", then(exported("-o", "e.onnx", "--force"),
         prepare=lambda tmp: (tmp / "e.onnx").write_text("hello")), message="not written by modelshrink"),
    Case("export --force over a link to the recipe", then(exported("-o", "e.onnx", "--force"),
         prepare=lambda tmp: (tmp / "e.onnx").symlink_to(tmp / "r.yaml")), message="not written by modelshrink"),
    Case("run --force into a linked output", then(run_recipe(), "-o", "lo", "--force", prepare=lambda tmp: (
        earlier_output(tmp), (tmp / "lo").symlink_to(tmp / "out"))), message="symbolic link"),
    # inspect: names from the file are shown, never obeyed
    Case("inspect a key with rich markup", checkpoint({"a[/bold].weight": torch.zeros(2, 2)}), exit_code=0),
    Case("inspect a key with terminal escapes", checkpoint({"a\x1b]0;pwned\x07.weight": torch.zeros(2)}),
         exit_code=0),
]
# fmt: on

# -------------------------------------------------------------------------------------------- corpus
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
VALID_TEXT = yaml.safe_dump(tiny_recipe(Path()), sort_keys=False)

CASES = [
    # the recipe file itself
    Case("missing recipe", args("run", "nope.yaml"), message="nope.yaml"),
    Case("recipe is a directory", args("run", ".")),
    Case("empty recipe", recipe_text(""), message="r.yaml"),
    Case("recipe is a list", recipe_text("- a\n- b\n"), message="must be a YAML mapping"),
    Case("recipe is a scalar", recipe_text("42\n"), message="must be a YAML mapping"),
    Case("recipe is not YAML", recipe_text("a: [b\n"), message="r.yaml"),
    Case("recipe is binary", recipe_text(b"\x00\xff\xfe\x00junk"), message="r.yaml"),
    Case("recipe is not UTF-8", recipe_text(b"name: caf\xe9\n"), message="r.yaml"),
    Case("recipe uses tabs", recipe_text("name: x\nmodel:\n\tfactory: a:b\n"), message="r.yaml"),
    Case("alias bomb (run)", recipe_text(BOMB), message="expands to more than"),
    Case("alias bomb (validate)", recipe_text(BOMB, "validate"), message="expands to more than"),
    Case("alias bomb in model.kwargs", recipe_text(VALID_TEXT.replace("kwargs:", f"{BOMB}\nkw:")), message="r.yaml"),
    Case("recursive alias", recipe_text("a: &a [*a]\n"), message="r.yaml"),
    Case("deep nesting", recipe_text("a: " + "[" * 5000 + "]" * 5000 + "\n"), message="r.yaml"),
    Case("huge recipe file", big_recipe, message="r.yaml"),
    Case("duplicate key", recipe_text(VALID_TEXT + "seed: 1\n"), message="given twice"),
    Case("unknown top-level key", recipe_text(VALID_TEXT + "stagse: []\n"), message="unknown key 'stagse'"),
    Case("python tag", recipe_text("!!python/object/apply:os.system ['touch canary']\n"), message="r.yaml"),
    Case("python name tag", recipe_text("name: !!python/name:os.system\n"), message="r.yaml"),
    # recipe values
    Case("seed beyond 64 bits", run_recipe(seed=99999999999999999999999), message="seed"),
    Case("seed is text", run_recipe(seed="zero"), message="seed"),
    Case("seed is a float", run_recipe(seed=1.5), message="seed"),
    Case("name is a list", run_recipe(name=[1]), message="name"),
    Case("stages is a mapping", run_recipe(stages={"kind": "prune"}), message="stages"),
    Case("stage is a string", run_recipe(stages=["prune"]), message="stages[0]"),
    Case("stage without kind", run_recipe(stages=[{"amount": 0.5}]), message="missing 'kind'"),
    Case("unknown stage kind", run_recipe(stages=[{"kind": "shrink"}]), message="unknown kind 'shrink'"),
    Case("misspelt stage key", run_recipe(stages=[{"kind": "finetune", "epoch": 2}]), message="unknown key 'epoch'"),
    Case("amount above 1", run_recipe(stages=[{"kind": "prune", "amount": 1.5}]), message="amount"),
    Case("amount negative", run_recipe(stages=[{"kind": "prune", "amount": -0.1}]), message="amount"),
    Case("amount zero", run_recipe(stages=[{"kind": "prune", "amount": 0}]), message="amount"),
    Case("amount is text", run_recipe(stages=[{"kind": "prune", "amount": "half"}]), message="amount"),
    Case("amount is NaN", run_recipe(stages=[{"kind": "prune", "amount": float("nan")}]), message="amount"),
    Case("lr zero", run_recipe(stages=[{"kind": "finetune", "lr": 0}]), message="lr"),
    Case("lr negative", run_recipe(stages=[{"kind": "finetune", "lr": -1}]), message="lr"),
    Case("lr infinite", run_recipe(stages=[{"kind": "finetune", "lr": float("inf")}]), message="lr"),
    Case("epochs zero", run_recipe(stages=[{"kind": "finetune", "epochs": 0}]), message="epochs"),
    Case("gate bound NaN", run_recipe(constraints={"accuracy": {"min": float("nan")}}), message="constraints"),
    Case("gate bound infinite", run_recipe(constraints={"latency_b1": {"max": float("inf")}}), message="constraints"),
    Case("distill weight infinite", run_recipe(stages=[{"kind": "distill", "outputs": {"0": {"weight": math.inf}}}]),
         message="weight"),
    Case("output name with a newline", run_recipe(constraints={"outputs": {"a\nb": {"min_cosine": 0.9}}}),
         message="outputs"),
    Case("latency threads 10^9", run_recipe(evaluate={"latency": {"threads": 10**9}}), message="threads"),
    Case("min_speedup on accuracy", run_recipe(constraints={"accuracy": {"min_speedup": 2}}),
         message="unknown key 'min_speedup' (keys here: max, max_drop"),
    Case("unknown optimizer", run_recipe(stages=[{"kind": "finetune", "optimizer": "lion"}]), message="optimizer"),
    Case("unknown quantize mode", run_recipe(stages=[{"kind": "quantize", "mode": "int3"}]), message="mode"),
    Case("batch size zero", run_recipe(data={"kind": "synthetic", "batch_size": 0}), message="batch_size"),
    Case("val_fraction 1", run_recipe(data={"kind": "synthetic", "val_fraction": 1.0}), message="val_fraction"),
    Case("val_fraction 0", run_recipe(data={"kind": "synthetic", "val_fraction": 0}), message="val_fraction"),
    Case("tune_fraction 1", run_recipe(data={"kind": "synthetic", "tune_fraction": 1}), message="tune_fraction"),
    Case("image_size too small", run_recipe(data={"kind": "digits", "image_size": 2}), message="image_size"),
    Case("two channels", run_recipe(data={"kind": "digits", "channels": 2}), message="channels"),
    Case("unknown data kind", run_recipe(data={"kind": "imagenet"}), message="unknown kind 'imagenet'"),
    Case("mean without std", run_recipe(data={"kind": "digits", "mean": [0.5]}), message="'mean' and 'std'"),
    Case("std zero", run_recipe(data={"kind": "digits", "mean": [0.5], "std": [0]}), message="std"),
    Case("one synthetic class", run_recipe(data={"kind": "synthetic", "num_classes": 1}), message="num_classes"),
    Case("no output dir", run_recipe(output={}), message="output.dir"),
    Case("checkpoint_name ..", run_recipe(output={"dir": "out", "checkpoint_name": ".."}), message="plain file name"),
    Case("checkpoint_name .", run_recipe(output={"dir": "out", "checkpoint_name": "."}), message="plain file name"),
    Case("checkpoint_name empty", run_recipe(output={"dir": "out", "checkpoint_name": ""}), message="plain file"),
    Case("checkpoint_name a/b", run_recipe(output={"dir": "out", "checkpoint_name": "a/b.pt"}), message="plain file"),
    Case("checkpoint_name a\\b", run_recipe(output={"dir": "out", "checkpoint_name": "a\\b"}), message="plain file"),
    Case("report name as checkpoint", run_recipe(output={"dir": "out", "checkpoint_name": "report.json"})),
    Case("gate of unknown name", run_recipe(constraints={"max_speed": 2}), message="unknown key 'max_speed'"),
    Case("gate above 1", run_recipe(constraints={"min_accuracy": 2}), message="min_accuracy"),
    # models
    Case("no architecture", run_recipe(model={}), message="needs 'torchvision'"),
    Case("two architectures", run_recipe(model={**MLP, "torchvision": "resnet18"}), message="give one of"),
    Case("malformed factory", run_recipe(model={"factory": "os.system"}), message="model.factory: must look like"),
    Case("factory module missing", run_recipe(model={"factory": "no_such_mod:fn"}), message="no_such_mod"),
    Case("factory function missing", run_recipe(model={"factory": "modelshrink.models.zoo:nothing"})),
    Case("factory returns no module", run_recipe(model={"factory": "builtins:dict"}), message="not a torch.nn.Module"),
    Case("factory kwargs unknown", run_recipe(model={**MLP, "kwargs": {"colour": 3}}), message="colour"),
    Case("torchvision kwargs unknown", run_recipe(model={"torchvision": "resnet18", "kwargs": {"colour": 3}})),
    Case("factory width negative", run_recipe(model={**MLP, "kwargs": {"in_features": 64, "hidden": -3}})),
    Case("unknown torchvision", run_recipe(model={"torchvision": "resnet1000"}), message="resnet1000"),
    Case("torchvision num_classes -5", run_recipe(model={"torchvision": "resnet18", "kwargs": {"num_classes": -5}})),
    Case("num_classes zero", run_recipe(model={**MLP, "num_classes": 0}), message="num_classes"),
    Case("num_classes twice", run_recipe(model={**MLP, "num_classes": 3, "kwargs": {"num_classes": 3}})),
    Case("kwargs with huggingface", run_recipe(model={"huggingface": "x", "kwargs": {"a": 1}}), message="kwargs"),
    Case("model does not fit data", run_recipe(model={**MLP, "kwargs": {"in_features": 10, "hidden": 8}})),
    Case("huggingface dir missing", run_recipe(model={"huggingface": "./no_model"}, data={"kind": "text"})),
    # checkpoints
    Case("checkpoint factory runs code (inspect)", checkpoint(factory_runs_code), exit_code=0),
    Case(
        "checkpoint factory runs code (run)", checkpoint(factory_runs_code, "run"), message="would import and run code"
    ),
    Case("code-running pickle (inspect)", checkpoint(evil_pickle), message="--allow-pickle"),
    Case("code-running pickle (run)", checkpoint(evil_pickle, "run"), message="--allow-pickle"),
    Case("pickled module", checkpoint(lambda tmp: nn.Linear(2, 2)), message="--allow-pickle"),
    Case("missing architecture", checkpoint(good_checkpoint(architecture=None)), message="no architecture"),
    Case("missing state_dict", checkpoint(good_checkpoint(state_dict=None)), message="no state_dict"),
    Case("transforms a string", checkpoint(good_checkpoint(transforms="reshape")), message="transforms"),
    Case("transforms of ints", checkpoint(good_checkpoint(transforms=[1])), message="transforms"),
    Case("format_version text", checkpoint(good_checkpoint(format_version="1")), message="not an integer"),
    Case("format_version newer", checkpoint(good_checkpoint(format_version=99)), message="newer"),
    Case("architecture a string", checkpoint(good_checkpoint(architecture="mlp"))),
    Case("state_dict a list", checkpoint(good_checkpoint(state_dict=[1, 2]))),
    Case("reshape to a huge tensor", checkpoint(good_checkpoint(transforms=[reshape({"weight": [2**31, 2**31]})])),
         message="not a pruned or new-head shape"),
    Case("reshape replacing a method", checkpoint(good_checkpoint(transforms=[reshape({}, forward=1)])),
         message="not a plain attribute"),
    Case("input_shape text", checkpoint(good_checkpoint(input_shape="big")), message="input_shape"),
    Case("input_shape negative", checkpoint(good_checkpoint(input_shape=[1, -8, 8])), message="input_shape"),
    Case("input_shape that does not fit", checkpoint(good_checkpoint(input_shape=[3, 32, 32]))),
    Case("wrong weight shapes (run)", checkpoint(good_checkpoint(state_dict={"1.weight": torch.zeros(3)}), "run")),
    Case("NaN weights (run)", checkpoint(good_checkpoint(state_dict=mlp_state(float("nan"))), "run"), message="NaN"),
    Case("Inf weights (run)", checkpoint(good_checkpoint(state_dict=mlp_state(float("inf"))), "run"), message="Inf"),
    Case("NaN weights (inspect)", checkpoint(good_checkpoint(state_dict=mlp_state(float("nan")))), exit_code=0),
    Case("empty checkpoint file", checkpoint(b"")),
    Case("junk checkpoint", checkpoint(b"\x80\x04junkjunk")),
    Case("truncated zip", checkpoint(lambda tmp: zip_of_junk()[:30])),
    Case("zip without a pickle", checkpoint(lambda tmp: zip_of_junk())),
    Case("text as checkpoint", checkpoint(b"hello world\n")),
    Case("a bare tensor", checkpoint(torch.zeros(3)), message="expected a state_dict"),
    Case("a list of tensors", checkpoint([torch.zeros(3)])),
    Case("missing checkpoint (inspect)", args("inspect", "nope.pt"), message="nope.pt"),
    Case("directory as checkpoint", args("inspect", "."), message="directory"),
    Case("missing checkpoint (run)", run_recipe(model={"checkpoint": "nope.pt"}), message="nope.pt does not exist"),
    Case(
        "missing checkpoint (validate)",
        then(run_recipe(model={"checkpoint": "x.pt"}), command="validate"),
        message="x.pt does not exist",
    ),
    Case(
        "junk safetensors",
        then(
            args("inspect", "w.safetensors"), prepare=lambda tmp: (tmp / "w.safetensors").write_bytes(b"\x08\x00junk")
        ),
        message="safetensors",
    ),
    Case("trusting another module", then(checkpoint(factory_runs_code), "--trust", "subprocess"), exit_code=0),
    # --set
    Case("--set without =", with_set("seed"), message="--set"),
    Case("--set empty key", with_set("=3"), message="--set"),
    Case("--set unknown key", with_set("sede=3"), message="sede"),
    Case("--set missing stage", with_set("stages[9].amount=0.3"), message="stages[9]"),
    Case("--set bad index", with_set("stages[x].amount=0.3"), message="--set"),
    Case("--set unparseable value", with_set("seed=[1"), message="--set"),
    Case("--set bad type", with_set("seed=abc"), message="seed"),
    Case("--set through a scalar", with_set("seed.x=1"), message="--set"),
    Case("--set alias", with_set("name=*a"), message="--set"),
    # data
    Case("image folder missing", run_recipe(data={"kind": "imagefolder", "path": "imgs"}), message="does not exist"),
    Case("image folder is a file", run_recipe(data={"kind": "imagefolder", "path": "r.yaml"}), message="not a dir"),
    Case(
        "empty image folder",
        then(run_recipe(data={"kind": "imagefolder", "path": "imgs"}), prepare=mkdir("imgs")),
        message="imgs",
    ),
    Case("one image class", image_run(classes=("cat",)), message="at least 2"),
    Case("corrupt image", image_run(bad=b"not an image"), message="cannot read image"),
    Case("empty image file", image_run(bad=b""), message="cannot read image"),
    Case("truncated png", image_run(bad=b"\x89PNG\r\n\x1a\n\x00\x00"), message="cannot read image"),
    Case("cifar10 folder missing", run_recipe(data={"kind": "cifar10", "path": "cifar"}), message="does not exist"),
    Case(
        "cifar10 folder empty",
        then(run_recipe(data={"kind": "cifar10", "path": "cifar"}), prepare=mkdir("cifar")),
        message="no CIFAR-10 batches",
    ),
    Case("cifar10 pickle runs code", cifar_evil, message="refusing to unpickle"),
    Case("text file missing", run_recipe(data={"kind": "text", "path": "t.jsonl", "tokenizer": "x"})),
    Case("labels in a .txt", text_run("a\nb\n", name="t.txt"), message="label_field needs"),
    Case("one text only", text_run('{"text": "a", "label": 1}\n'), message="need at least 2"),
    Case("bad jsonl line", text_run('{"text": "a", "label": 1}\n\n{"text": "b"\n'), message="t.jsonl:3"),
    Case("jsonl record without label", text_run('{"text": "a", "label": 1}\n{"text": "b"}\n'), message="t.jsonl:2"),
    Case("jsonl of lists", text_run("[1]\n[2]\n"), message="t.jsonl:1"),
    Case("csv without the column", text_run("a,b\n1,2\n3,4\n", name="t.csv"), message="t.csv:2"),
    Case("text not UTF-8", text_run(b"caf\xe9\nthe\n", name="t.txt", label=None), message="t.txt"),
    # output paths and --force
    Case("output exists", then(run_recipe(), prepare=earlier_output), message="already exists"),
    Case("output is a file", then(run_recipe(), "--output", "r.yaml"), message="not a directory"),
    Case("output is cwd", then(run_recipe(), "--output", ".", "--force"), message="current directory"),
    Case("output is a parent", then(run_recipe(), "--output", "..", "--force"), message="current directory"),
    Case("output is the root", then(run_recipe(), "--output", "/", "--force"), message="current directory"),
    Case("force over the data", then(image_run(), "--output", "imgs", "--force"), message="holds the input data"),
    Case("force over the recipe dir", then(run_recipe(output={"dir": "."}), "--force"), message="current directory"),
    Case(
        "force over a foreign dir",
        then(run_recipe(), "--force", prepare=lambda tmp: (tmp / "out").mkdir()),
        message="not written by modelshrink",
    ),
    Case(
        "force over the checkpoint dir",
        then(checkpoint_in_a_folder, "-o", "models", "--force"),
        message="holds the input checkpoint",
    ),
    Case(
        "dangling symlink output",
        then(run_recipe(), prepare=lambda tmp: (tmp / "out").symlink_to(tmp / "gone")),
        message="symbolic link to nothing",
    ),
    Case("output under a file", then(run_recipe(), "--output", "r.yaml/out"), message="not a writable directory"),
    Case(
        "output in /proc", then(run_recipe(), "--output", "/proc/modelshrink-out"), message="not a writable directory"
    ),
    Case("output in use", then(run_recipe(), prepare=busy_output), message="in use by another run"),
    Case("--nproc 0", then(run_recipe(), "--nproc", "0"), message="Invalid value for '--nproc'"),
    *COMMAND_CASES,
]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = case.setup(work)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == case.exit_code, f"{argv}: {result.output}"
    assert "Traceback" not in result.output, result.output
    if case.exit_code != 0:
        if "Invalid value" in case.message:  # click's own usage errors: a usage line and a boxed reason
            assert case.message in result.stderr, result.stderr
        else:  # one line per problem (a recipe can have several), each naming where it is
            lines = result.stderr.splitlines()
            errors = [line for line in lines if line.startswith("error:")]
            assert errors and lines[-len(errors) :] == errors and case.message in errors[0], result.stderr
    assert _snapshot(tmp_path) == before, "inputs intact and nothing written"
    assert not (work / CANARY).exists(), "nothing executed"
