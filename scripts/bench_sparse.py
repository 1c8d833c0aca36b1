"""Issue #27's sparse storage targets, side by side in one run: model.pt sizes of the main job's
ResNet-50 (digits head) dense, pruned as the main recipe prunes, 90% pruned, and 50% pruned + static
int8; and the load time of each against the same model stored dense (interleaved, median of --repeats).

    .venv/bin/python scripts/bench_sparse.py [--repeats 7]

Sizes depend only on how many weights are zero, so the model is ResNet-50 as torchvision initializes
it (no training needed); the main job's prune stage is read from recipes/resnet50_prune20.yaml. The
int8 case calibrates on the bundled digits. Targets: main job <= 0.85x, 90% <= 0.15x, 50% + int8
<= 0.16x of the dense fp32 file; loading <= 1.5x the time of the same model stored dense.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

import modelshrink
from modelshrink.checkpoint import to_bytes
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
    args = parser.parse_args()
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
        for _ in range(args.repeats):  # interleaved, so a busy moment hits every case alike
            for key, path in paths.items():
                times[key].append(load_seconds(path))
        fp32_bytes = paths["dense fp32", "dense"].stat().st_size
        print(f"CPU: {cpu_summary(environment())}")
        print(f"{'checkpoint':32s} {'MiB':>7s} {'of fp32':>8s} {'target':>10s} {'load s':>7s} {'vs dense':>9s}")
        for label in cases:
            size, target = paths[label, "sparse"].stat().st_size, TARGETS.get(label)
            load = statistics.median(times[label, "sparse"]) / statistics.median(times[label, "dense"])
            verdict = "" if target is None else f"<={target:.2f} " + ("ok" if size / fp32_bytes <= target else "MISS")
            print(f"{label:32s} {size / 2**20:7.2f} {size / fp32_bytes:7.3f}x {verdict:>10s} "
                  f"{statistics.median(times[label, 'sparse']):7.3f} {load:8.2f}x" + ("" if load <= 1.5 else " MISS"))

if __name__ == "__main__":
    sys.exit(main())
