"""Is the tuned model faster than the hand-written recipes' models? Loads the checkpoints the runs wrote
and times them side by side (round-robin, same process), with their reported accuracy (issue #15's target:
the tuned digits model at least 1.3x faster at batch 1 than the best hand-written recipe for that model).

    modelshrink run recipes/digits_resnet18_static_int8.yaml
    modelshrink run recipes/digits_resnet18_channel50_int8.yaml
    modelshrink run recipes/digits_resnet18_baseline.yaml
    modelshrink tune recipes/digits_resnet18_tune.yaml --objective latency_b1
    .venv/bin/python scripts/bench_tune.py runs/digits_resnet18_static_int8 runs/digits_resnet18_channel50_int8 \\
        --tuned runs/digits_resnet18_tune_tune/best

Prints the CPU's features beside every ratio; the ratios are against the fastest hand-written model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import modelshrink
from modelshrink.checkpoint import read_payload
from modelshrink.environment import cpu_summary
from modelshrink.metrics.latency import measure_latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output directories of the hand-written recipes")
    parser.add_argument("--tuned", type=Path, required=True, help="tune's best/ directory")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    dirs = [*args.runs, args.tuned]
    reports = [json.loads((d / "report.json").read_text()) for d in dirs]
    models = [modelshrink.load(d / "model.pt") for d in dirs]
    shape = read_payload(dirs[0] / "model.pt")["input_shape"]
    one, many = torch.randn(1, *shape), torch.randn(args.batch, *shape)
    with torch.inference_mode():
        timings = measure_latencies(models, one, many, warmup=3, iterations=args.iterations, threads=None)
    print(f"cpu: {cpu_summary()}; {timings[0]['threads']} threads, median of {args.iterations} round-robin runs")
    fastest = min(t["batch1_median"] for t in timings[:-1])
    for d, report, t in zip(dirs, reports, timings, strict=True):
        accuracy, b1 = report["final"].get("accuracy", float("nan")), t["batch1_median"]
        print(
            f"{d!s:45s} accuracy {accuracy:.4f}  b1 {b1:7.2f} ms ({fastest / b1:.2f}x)  b{args.batch} "
            f"{t['batchN_median']:8.2f} ms"
        )


if __name__ == "__main__":
    main()
