"""Does pruning make ResNet-50 faster and smaller? Ratios measured side by side in one run.

Dense vs 50% unstructured (L1, global) vs 50% channel pruning (L1, per layer), at 224x224, batch 1
and batch N: median latency (all models timed round-robin), MACs, params, checkpoint bytes. Also
times our `prune` stage against Torch-Pruning called by hand with the same settings (the overhead of
our recipe binding, forward check and lineage record). Prints a table; writes JSON.

    .venv/bin/python scripts/bench_prune.py                      # ~3 minutes on 2 cores
    .venv/bin/python scripts/bench_prune.py --arch resnet18 --size 112 --iterations 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelshrink.atomic import write_file
from modelshrink.checkpoint import to_bytes
from modelshrink.data import build_data
from modelshrink.engine import compress
from modelshrink.environment import cpu_summary, environment
from modelshrink.lineage import Lineage
from modelshrink.metrics.latency import measure_latencies
from modelshrink.metrics.size import count_macs, count_parameters
from modelshrink.models import build_architecture
from modelshrink.recipe.schema import SyntheticData
from modelshrink.stages.selection import find_classifier


def prune_with_stage(model: nn.Module, size: int, **spec: Any) -> tuple[nn.Module, Lineage, float]:
    """Through `compress`; the time is the stage's own (`duration_s`), without compress's measuring."""
    data = build_data(SyntheticData(kind="synthetic", image_size=size, num_samples=8, batch_size=4), 0)
    quick = {"latency": {"batch_size": 1, "warmup": 0, "iterations": 1}}
    result = compress(model, [{"kind": "prune", **spec}], data=data, evaluate=quick)
    return result.model, result.lineage, result.stages[0].duration_s


def prune_by_hand(model: nn.Module, size: int, amount: float) -> tuple[nn.Module, float]:
    """The same channel pruning written directly against Torch-Pruning, as its README shows."""
    import torch_pruning as tp

    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=amount,
        ignored_layers=[model.get_submodule(find_classifier(model))],
    )
    pruner.step()
    return model.eval(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="pruning runs per variant for the overhead ratio")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json-out", default="runs/bench/prune.json")
    args = parser.parse_args()

    arch = {"torchvision": args.arch, "kwargs": {}}
    torch.manual_seed(0)
    dense = build_architecture(arch).eval()
    unstructured, unstructured_lineage, _ = prune_with_stage(
        copy.deepcopy(dense), args.size, amount=args.amount, module_types=["Conv2d", "Linear"]
    )
    stage_times, hand_times = [], []
    for _ in range(args.repeats):  # alternate, so that drift hits both alike
        # recalibrate_bn off: the same work as by hand (recalibration is extra work with its own benefit)
        channel, channel_lineage, seconds = prune_with_stage(
            copy.deepcopy(dense), args.size, method="channel", amount=args.amount, recalibrate_bn=False
        )
        stage_times.append(seconds)
        by_hand, seconds = prune_by_hand(copy.deepcopy(dense), args.size, args.amount)
        hand_times.append(seconds)
    identical = all(
        a.shape == b.shape for a, b in zip(channel.state_dict().values(), by_hand.state_dict().values(), strict=True)
    )

    variants = {
        "dense": (dense, Lineage(arch)),
        f"{args.amount:.0%} unstructured": (unstructured, unstructured_lineage),
        f"{args.amount:.0%} channel": (channel, channel_lineage),
        f"{args.amount:.0%} ch. TP by hand": (by_hand, channel_lineage),
    }
    one = torch.randn(1, 3, args.size, args.size)
    many = torch.randn(args.batch, 3, args.size, args.size)
    timings = measure_latencies(
        [m for m, _ in variants.values()], one, many, warmup=2, iterations=args.iterations, threads=args.threads
    )
    threads = timings[0]["threads"]
    rows = []
    for (name, (model, lineage)), timing in zip(variants.items(), timings, strict=True):
        counts = count_parameters(model)
        rows.append(
            {
                "variant": name,
                "batch1_median_ms": timing["batch1_median"],
                "batchN_median_ms": timing["batchN_median"],
                "macs": count_macs(model, one),
                "params": counts["params"],
                "nonzero_params": counts["nonzero_params"],
                "checkpoint_bytes": len(to_bytes(model, lineage, (3, args.size, args.size))),
            }
        )
    base = rows[0]
    for row in rows:
        row["speedup_batch1"] = base["batch1_median_ms"] / row["batch1_median_ms"]
        row["speedup_batchN"] = base["batchN_median_ms"] / row["batchN_median_ms"]
        row["macs_reduction"] = base["macs"] / row["macs"]
        row["checkpoint_reduction"] = base["checkpoint_bytes"] / row["checkpoint_bytes"]
    overhead = statistics.median(stage_times) / statistics.median(hand_times)
    result = {
        "arch": args.arch,
        "input": [3, args.size, args.size],
        "batch_n": args.batch,
        "threads": threads,
        "iterations": args.iterations,
        "rows": rows,
        "stage_seconds": stage_times,
        "by_hand_seconds": hand_times,
        "stage_overhead_ratio": overhead,
        "stage_matches_by_hand_shapes": identical,
        "environment": environment(),
    }

    print(f"cpu: {cpu_summary(result['environment'])}")
    print(f"{args.arch} at {args.size}x{args.size}, {threads} threads, median of {args.iterations} round-robin runs")
    print(
        f"{'variant':18s} {'b1 ms':>8s} {'b1 x':>6s} {f'b{args.batch} ms':>9s} {f'b{args.batch} x':>6s} "
        f"{'MACs':>9s} {'MACs x':>7s} {'params':>9s} {'ckpt MiB':>9s} {'ckpt x':>7s}"
    )
    for r in rows:
        print(
            f"{r['variant']:18s} {r['batch1_median_ms']:8.1f} {r['speedup_batch1']:6.2f} {r['batchN_median_ms']:9.1f} "
            f"{r['speedup_batchN']:6.2f} {r['macs'] / 1e9:8.2f}G {r['macs_reduction']:7.2f} "
            f"{r['params'] / 1e6:8.2f}M {r['checkpoint_bytes'] / 2**20:9.1f} {r['checkpoint_reduction']:7.2f}"
        )
    print(
        f"prune stage {statistics.median(stage_times):.2f}s vs Torch-Pruning by hand "
        f"{statistics.median(hand_times):.2f}s: overhead ratio {overhead:.3f} (same shapes: {identical})"
    )
    write_file(Path(args.json_out), (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
