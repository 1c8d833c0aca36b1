"""Time to first output after `modelshrink.load` in a fresh process, for a compiled (PT2E int8) ResNet-18:
with the AOTInductor package its run wrote beside the checkpoint, and without it (as a checkpoint from
elsewhere is treated: compiled on its first call). Issue #25's target: <= 2 s with the package.

    .venv/bin/python scripts/bench_reload.py [--size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from modelshrink.cli import app
from modelshrink.environment import cpu_summary, environment

FIRST_OUTPUT = """
import json, sys, time
start = time.perf_counter()
import torch, modelshrink
imported = time.perf_counter()
model = modelshrink.load(sys.argv[1])
loaded = time.perf_counter()
with torch.inference_mode():
    model(torch.randn(1, 3, int(sys.argv[2]), int(sys.argv[2])))
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported,
                  "first_output_s": time.perf_counter() - loaded, "rebuilt": not getattr(model, "pending", False)}))
"""


def first_output(checkpoint: Path, size: int, cache: Path) -> dict[str, Any]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    done = subprocess.run([sys.executable, "-c", FIRST_OUTPUT, str(checkpoint), str(size)],
                          capture_output=True, text=True, env=env, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        recipe = {
            "name": "resnet18_static_int8_compiled",
            "model": {"torchvision": "resnet18", "num_classes": 10},
            "data": {"kind": "digits", "image_size": args.size, "channels": 3},
            "stages": [{"kind": "quantize", "mode": "static", "backend": "pt2e", "calibration_batches": 2}],
            "evaluate": {"latency": {"batch_size": 8, "iterations": 10}},
            "output": {"dir": str(root / "out")},
        }
        (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        result = CliRunner().invoke(app, ["run", str(root / "recipe.yaml"), "--json"])
        if result.exit_code != 0:
            sys.exit(f"the run failed: {result.stderr.strip()}")
        report = json.loads(result.stdout)
        latency = report["final"]["latency_ms"]
        print(f"CPU: {cpu_summary(environment())}")
        print(f"run: compiling {latency.get('compile_s', 0):.1f} s over {latency.get('compiles', 0)} calls; "
              + next(f for f in report["findings"] if "packaged with AOTInductor" in f))  # fmt: skip
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        checkpoint = root / "out" / "model.pt"
        for label, where in (("with its package", cache), ("without (compiles)", root / "empty-cache")):
            timing = first_output(checkpoint, args.size, where)
            print(f"{label:20s} import torch + modelshrink {timing['import_s']:.2f} s, load {timing['load_s']:.2f} s, "
                  f"first output {timing['first_output_s']:.2f} s after it "
                  f"(eager model {'rebuilt' if timing['rebuilt'] else 'not rebuilt'})")  # fmt: skip


if __name__ == "__main__":
    main()
