"""Does multi-process training add overhead? The same fine-tuning epochs in 1 and in N processes.

Writes a recipe (a model from torchvision or the zoo, on the bundled digits), runs `modelshrink run`
with --nproc 1 and --nproc N on this machine, reads each epoch's wall time from the logs and prints
the ratio of mean epoch times (N processes / 1 process; 1.0 = no overhead). Writes JSON.

    .venv/bin/python scripts/bench_ddp.py --nproc 2 --model resnet18 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from modelshrink.atomic import write_file
from modelshrink.environment import cpu_summary, environment

EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: .*\(([\d.]+)s\)")


def epoch_times(recipe: Path, out: Path, nproc: int) -> list[float]:
    result = subprocess.run(
        [sys.executable, "-m", "modelshrink.cli", "run", str(recipe), "-o", str(out), "--force", "--nproc", str(nproc)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"--nproc {nproc} failed:\n{result.stderr}")
    return [float(m.group(2)) for m in EPOCH_LINE.finditer(result.stderr)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", default="resnet18", help="torchvision name")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json-out", default="runs/bench/ddp.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "recipe.yaml"
        recipe.write_text(
            yaml.safe_dump(
                {
                    "name": "ddp-bench",
                    "model": {"torchvision": args.model, "num_classes": 10},
                    "data": {"kind": "digits", "image_size": 32, "batch_size": 32},
                    "stages": [{"kind": "finetune", "epochs": args.epochs, "lr": 0.001}],
                    "evaluate": {"latency": {"iterations": 2, "warmup": 1, "batch_size": 2}},
                    "output": {"dir": str(Path(tmp) / "out")},
                }
            )
        )
        single = epoch_times(recipe, Path(tmp) / "one", 1)
        multi = epoch_times(recipe, Path(tmp) / "many", args.nproc)
    # the first epoch also pays for start-up (process group, allocator warm-up): compare the rest
    one, many = statistics.mean(single[1:] or single), statistics.mean(multi[1:] or multi)
    result = {
        "model": args.model,
        "nproc": args.nproc,
        "epochs_1proc_s": single,
        f"epochs_{args.nproc}proc_s": multi,
        "ratio": many / one,
        "environment": environment(),
    }
    print(f"cpu: {cpu_summary(result['environment'])}")
    print(
        f"{args.model} on digits, {args.epochs} epochs: 1 process {one:.2f}s/epoch, {args.nproc} processes "
        f"{many:.2f}s/epoch -> ratio {many / one:.2f} (epoch times {single} vs {multi})"
    )
    write_file(Path(args.json_out), (json.dumps(result, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
