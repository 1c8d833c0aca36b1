"""Static int8 quality on a depthwise, multi-output model, per output, for PyTorch and every int8 export
side by side (issue #25): the MobileNetV2 detector of `examples/detector.py` (boxes, scores, landmarks,
three scales), trained on the boxes data, quantized by a `quantize: static` stage and exported to ONNX
Runtime (static QDQ) and OpenVINO (NNCF int8), each calibrated on the recipe's calibration images.

Prints the CPU's features, each output's cosine to the float model on the validation images for each
int8 model, and each export's difference from its PyTorch counterpart. Target: every output >= 0.99,
each export within 0.01 of PyTorch int8.

    .venv/bin/python scripts/bench_static_int8.py                  # trains runs/detector.pt once (~4 min)
    .venv/bin/python scripts/bench_static_int8.py --min-cosine 0.995
    .venv/bin/python scripts/bench_static_int8.py --no-per-channel [--bias-correction]   # what each adds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ beside modelshrink/

from examples.detector import train_baseline
from modelshrink.cli import app
from modelshrink.environment import cpu_summary, environment

TARGET, EXPORT_GAP = 0.99, 0.01


def recipe(checkpoint: Path, out: Path, args: argparse.Namespace) -> dict:
    stage = {"kind": "quantize", "mode": "static", "calibration_batches": 2, "per_channel": args.per_channel,
             "bias_correction": args.bias_correction}  # fmt: skip
    min_cosine = args.min_cosine
    if min_cosine is not None:
        stage["min_cosine"] = min_cosine
    return {
        "name": "detector_static_int8",
        "seed": 0,
        "model": {"factory": "examples.detector:model", "checkpoint": str(checkpoint)},
        "data": {"kind": "python", "factory": "examples.detector:data", "batch_size": 32},
        "stages": [stage],
        "evaluate": {"latency": {"batch_size": 8, "iterations": 20}},
        "export": [{"format": "onnx", "quantize": "static"}, {"format": "openvino", "quantize": "int8"}],
        "output": {"dir": str(out)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/detector.pt"))
    parser.add_argument("--min-cosine", type=float, default=None)
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()
    if not args.checkpoint.exists():
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        train_baseline(str(args.checkpoint))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe(args.checkpoint.resolve(), Path(scratch) / "out", args)))
        result = CliRunner().invoke(app, ["run", str(path), "--json"])
        if result.exit_code not in (0, 1):
            sys.exit(f"the run failed: {result.stderr.strip()}")
        report = json.loads(result.stdout)
    print(f"CPU: {cpu_summary(environment())}")
    torch_int8 = report["final"]["outputs"]
    rows = [("PyTorch int8 (" + report["stages"][0]["name"] + ")", torch_int8)]
    rows += [(e["file"], e["metrics"]["outputs"]) for e in report["exports"]]
    names = list(torch_int8)
    print(f"{'model':32s} " + " ".join(f"{n:>10s}" for n in names) + "   meets")
    for label, outputs in rows:
        cosines = [outputs[n]["cosine"] for n in names]
        gap = max(abs(outputs[n]["cosine"] - torch_int8[n]["cosine"]) for n in names)
        meets = min(cosines) >= TARGET and gap <= EXPORT_GAP
        print(f"{label:32s} " + " ".join(f"{c:10.4f}" for c in cosines) + f"   {'yes' if meets else 'NO'}"
              f" (largest gap to PyTorch int8 {gap:.4f})")  # fmt: skip
    for finding in report["findings"]:
        print(f"finding: {finding}")


if __name__ == "__main__":
    main()
