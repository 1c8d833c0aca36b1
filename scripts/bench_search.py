"""Does `tune` on Optuna pay? Runs `modelshrink tune` on one recipe in several ways, one after another on this
machine, and prints each target's ratio beside the CPU's features (issue #28):

- sampler: TPE with half the grid's trials against the whole grid (both without pruning), the best
  objective each found (target: TPE within noise of the grid's best in <= 50% of its trials);
- pruning: the whole grid with the pruner (`hopeless`: the gate mid-training, settled objectives before
  training) against without (target: >= 30% less wall time, same winner);
- workers: `--workers 2` (1 thread each) against `--workers 1` (2 threads) on the same `--max-trials`
  (target: <= 0.7x the wall time; on 2 cores the note says why not when it is not).

    modelshrink run recipes/digits_resnet18_baseline.yaml          # the model the tune recipe starts from
    .venv/bin/python scripts/bench_search.py recipes/digits_resnet18_tune.yaml \\
        --set 'stages[0].amount={search: [0.2, 0.4, 0.6, 0.8, 0.9]}' --set 'stages[1].amount={search: [0.3, 0.5, 0.7]}'

- deployed (`--only deployed`, with `--baseline CHECKPOINT`): the recipe searched with `--objective
  model.int8.xml:latency_b1` (its `export:` must write an OpenVINO int8 IR; `--set` can add one), then the
  winner's IR and the unpruned checkpoint's OpenVINO int8 export timed side by side at batch 1 (target:
  >= 1.5x faster, the winner within the accuracy gate on validation, as its best/ run reports).

    modelshrink run recipes/digits_resnet50_baseline.yaml
    .venv/bin/python scripts/bench_search.py recipes/digits_resnet50_tune.yaml --only deployed \
        --baseline runs/digits_resnet50_baseline/model.pt --set 'export=[{format: openvino, quantize: int8}]'

`--only sampler|pruning|workers|deployed` runs one part (all but deployed by default). Objective:
`--objective` (default latency_b1; `macs` is exact on any CPU, so TPE against grid is then free of timing
noise). Each run goes to a fresh directory under
`--work` (default runs/bench_search).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from modelshrink.environment import cpu_summary


def tune(recipe: Path, out: Path, sets: list[str], *options: str, threads: int | None = None) -> dict[str, Any]:
    """One `modelshrink tune` in its own process; returns its trials.json with the wall time added."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    command = [sys.executable, "-m", "modelshrink", "tune", str(recipe), "-o", str(out), *options]
    for override in sets:
        command += ["--set", override]
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode not in (0, 1):
        sys.exit(f"tune failed ({done.returncode}): {done.stderr[-2000:]}")
    found = json.loads((out / "trials.json").read_text())
    found["wall_s"] = wall
    return found


def best_value(found: dict[str, Any]) -> float:
    passed = [t["objective"] for t in found["trials"] if t["status"] == "passed" and t["objective"] is not None]
    return min(passed) if passed else math.nan


def line(name: str, found: dict[str, Any]) -> str:
    statuses = [t["status"] for t in found["trials"]]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    return (f"  {name:28s} {len(statuses):3d} trials ({counts}), {found['wall_s']:7.1f} s, best {found['best']} "
            f"({found['objective']} {best_value(found):.4g})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe overrides, as tune's")
    parser.add_argument("--objective", default="latency_b1")
    parser.add_argument("--only", choices=("sampler", "pruning", "workers", "deployed"))
    parser.add_argument("--baseline", type=Path, help="the unpruned checkpoint (deployed part)")
    parser.add_argument("--worker-trials", type=int, default=6, help="--max-trials of the workers' part")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_search"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"cpu: {cpu_summary()}; {cores} cores")
    base = ["--objective", args.objective]
    grid: dict[str, Any] | None = None
    if args.only == "deployed":
        deployed(args)
        return
    if args.only in (None, "sampler", "pruning"):
        grid = tune(args.recipe, args.work / "grid", args.sets, *base, "--sampler", "grid", "--pruner", "none",
                    "--max-trials", "100000")  # fmt: skip
        print(line("grid, no pruning", grid))
    if args.only in (None, "sampler"):
        assert grid is not None
        half = max(1, len(grid["trials"]) // 2)
        tpe = tune(args.recipe, args.work / "tpe", args.sets, *base, "--sampler", "tpe", "--pruner", "none",
                   "--max-trials", str(half))  # fmt: skip
        print(line(f"tpe, {half} trials", tpe))
        ratio = best_value(tpe) / best_value(grid)
        print(f"sampler: TPE's best / the grid's best = {ratio:.3f} in {half}/{len(grid['trials'])} trials "
              f"(target: within noise, <= 50% of the trials); same winner: {tpe['best'] == grid['best']}")  # fmt: skip
    if args.only in (None, "pruning"):
        assert grid is not None
        pruned = tune(args.recipe, args.work / "pruned", args.sets, *base, "--sampler", "grid", "--pruner",
                      "hopeless", "--max-trials", "100000")  # fmt: skip
        print(line("grid, hopeless pruner", pruned))
        notes = [t["note"] for t in pruned["trials"] if t["status"] == "pruned"]
        settled = sum("settled" in note for note in notes)
        print(f"  stopped: {settled} beaten on settled objectives before training, {len(notes) - settled} by the "
              "accuracy gate mid-training")  # fmt: skip
        print(f"pruning: wall time {pruned['wall_s'] / grid['wall_s']:.2f}x of the unpruned search (target <= 0.70x); "
              f"same winner: {pruned['best'] == grid['best']}")  # fmt: skip
    if args.only in (None, "workers"):
        trials = ["--max-trials", str(args.worker_trials), "--sampler", "random", "--pruner", "none"]
        one = tune(args.recipe, args.work / "one_worker", args.sets, *base, *trials, "--workers", "1", threads=cores)
        print(line(f"1 worker x {cores} threads", one))
        two = tune(args.recipe, args.work / "two_workers", args.sets, *base, *trials, "--workers", "2", threads=cores)
        print(line(f"2 workers x {max(1, cores // 2)} threads", two))
        print(f"workers: 2 workers took {two['wall_s'] / one['wall_s']:.2f}x the wall time of 1 (target <= 0.70x); "
              "each worker also loads the model and measures the baseline once")  # fmt: skip


def deployed(args: argparse.Namespace) -> None:
    if args.baseline is None:
        sys.exit("--only deployed needs --baseline CHECKPOINT (the unpruned model)")
    found = tune(args.recipe, args.work / "deployed", args.sets, "--objective", "model.int8.xml:latency_b1")
    print(line("openvino int8 b1 objective", found))
    unpruned = args.work / "unpruned.int8.xml"
    subprocess.run([sys.executable, "-m", "modelshrink", "export", str(args.baseline), "--format", "openvino",
                    "--quantize", "int8", "--data", str(args.work / "deployed" / "tuned.yaml"), "-o", str(unpruned),
                    "--force"],
                   check=True, capture_output=True)  # fmt: skip
    winner = args.work / "deployed" / "best" / "model.int8.xml"
    report = json.loads((args.work / "deployed" / "best" / "report.json").read_text())
    times = side_by_side([unpruned, winner])
    gates = ", ".join(f"{g['name']} {'passed' if g['passed'] else 'FAILED'}" for g in report["constraints"])
    print(f"deployed: OpenVINO int8 at batch 1, unpruned {times[0]:.3f} ms, tuned {times[1]:.3f} ms: "
          f"{times[0] / times[1]:.2f}x (target >= 1.5x); winner on validation: {gates}")


def side_by_side(irs: list[Path], rounds: int = 200) -> list[float]:
    """Median batch-1 milliseconds of each IR, run round-robin in one process with the same threads (a plain
    loop: the files are OpenVINO's, outside modelshrink's PyTorch timing helper)."""
    import statistics

    import numpy as np
    import openvino

    from modelshrink.distributed import DEFAULT_THREADS
    from modelshrink.runtimes.sessions import openvino_config

    core = openvino.Core()
    requests = []
    for ir in irs:
        compiled = core.compile_model(core.read_model(str(ir)), "CPU", openvino_config(DEFAULT_THREADS, "auto"))
        shape = [1, *list(compiled.inputs[0].get_partial_shape().get_min_shape())[1:]]
        requests.append((compiled.create_infer_request(), np.random.rand(*shape).astype(np.float32)))
    samples: list[list[float]] = [[] for _ in irs]
    for _ in range(rounds):
        for (request, data), kept in zip(requests, samples, strict=True):
            began = time.perf_counter()
            request.infer([data])
            kept.append((time.perf_counter() - began) * 1000)
    return [statistics.median(kept[rounds // 10 :]) for kept in samples]


if __name__ == "__main__":
    main()
