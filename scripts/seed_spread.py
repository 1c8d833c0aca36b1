"""How much do a recipe's results depend on the seed and the CPU? Run a chain of recipes over seeds.

Float results differ between CPUs (AVX2 vs AVX-512 kernels, other reduction orders) just as they
differ between seeds, so a gate that passes on one machine by a hair fails on the next. This runs
each chain once per seed (`--set seed=S`; each recipe after the first reads the previous one's
checkpoint), prints baseline and final accuracy (or cosine) per seed with the min-max spread and the
gate's verdict, with this CPU's features beside them, and writes JSON.

    .venv/bin/python scripts/seed_spread.py recipes/digits_resnet50_baseline.yaml recipes/resnet50_prune20.yaml
    .venv/bin/python scripts/seed_spread.py --seeds 0 1 2 --isa avx2 recipes/digits_cnn_static_int8.yaml

`--isa avx2` runs PyTorch's AVX2 kernels on an AVX-512 CPU (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA,
MKL_ENABLE_INSTRUCTIONS), which approximates an AVX2-only machine's numerics (not its speed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from modelshrink.atomic import write_file
from modelshrink.environment import cpu_summary

AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def run_chain(recipes: list[Path], seed: int, out_root: Path, env: dict[str, str], overrides: list[str]) -> list[dict]:
    reports, previous = [], None
    for recipe in recipes:
        out = out_root / f"seed{seed}" / recipe.stem
        command = [sys.executable, "-m", "modelshrink.cli", "run", str(recipe), "-o", str(out), "--force"]
        command += ["--set", f"seed={seed}", *(arg for item in overrides for arg in ("--set", item))]
        if previous is not None:
            command += ["--set", f"model.checkpoint={previous}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode not in (0, 1):
            sys.exit(f"{recipe} (seed {seed}) failed with exit {result.returncode}:\n{result.stderr[-3000:]}")
        report = json.loads((out / "report.json").read_text())
        reports.append(report)
        previous = out / report["checkpoint"]
    return reports


def quality(metrics: dict) -> tuple[str, float]:
    return ("accuracy", metrics["accuracy"]) if metrics["accuracy"] is not None else ("cosine", metrics["cosine"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--out", type=Path, default=Path("runs/spread"))
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    args = parser.parse_args()
    env = {**os.environ, **(AVX2_ONLY if args.isa == "avx2" else {})}
    out_root = args.out / f"{args.recipes[-1].stem}-{args.isa}"
    print(f"cpu: {cpu_summary()}; kernels: {args.isa}", flush=True)
    rows = []
    for seed in args.seeds:
        for report in run_chain(args.recipes, seed, out_root, env, args.set):
            name, base = quality(report["baseline"])
            _, final = quality(report["final"])
            row = {"seed": seed, "recipe": report["recipe"]["name"], "metric": name, "baseline": base, "final": final}
            row["passed"] = report["passed"]
            row["findings"] = report["findings"]
            rows.append(row)
            verdict = "pass" if row["passed"] else "FAIL"
            print(f"seed {seed} {row['recipe']}: {name} {base:.4f} -> {final:.4f}, gate {verdict}", flush=True)
    print("spread (min-max over seeds):")
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        base, final = [r["baseline"] for r in mine], [r["final"] for r in mine]
        passed = sum(r["passed"] for r in mine)
        print(
            f"  {recipe}: baseline {min(base):.4f}-{max(base):.4f}, final {min(final):.4f}-{max(final):.4f}, "
            f"gate passed {passed}/{len(mine)}"
        )
    json_out = args.json_out or out_root / "spread.json"
    write_file(json_out, json.dumps({"cpu": cpu_summary(), "isa": args.isa, "rows": rows}, indent=2).encode())
    print(f"wrote {json_out}")


if __name__ == "__main__":
    main()
