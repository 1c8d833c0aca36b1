"""Is quantization really faster, smaller and good enough? fp32 against every mode, in one run.

Trains a torchvision CNN on the bundled digits (a few epochs), applies each `quantize` mode through
our stage (dynamic, static, qat, fp16, bf16) and, when torchao is installed, torchao's PT2E static
int8 (X86InductorQuantizer) eagerly and under torch.compile, as a candidate backend. All models are
timed round-robin at batch 1 and batch N; prints latency and size ratios against fp32 and the top-1
accuracy on the held-out split; writes JSON.

    .venv/bin/python scripts/bench_quant.py                    # ResNet-18, 32x32 digits, ~3 minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelshrink.atomic import write_file
from modelshrink.checkpoint import Lineage, to_bytes
from modelshrink.data import build_data
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.metrics.latency import thread_count, time_round_robin
from modelshrink.models import build_architecture
from modelshrink.recipe.schema import DigitsData, EvaluateSpec, FinetuneSpec, QuantizeSpec
from modelshrink.stages.base import StageContext
from modelshrink.stages.finetune import FinetuneStage
from modelshrink.stages.quantize import QuantizeStage

MODES = {
    "dynamic int8": {"mode": "dynamic"},
    "static int8": {"mode": "static"},
    "qat int8": {"mode": "qat", "qat": {"epochs": 1, "lr": 0.0002}},
    "weight-only int8": {"mode": "weight_only"},
    "fp16": {"mode": "fp16"},
    "bf16": {"mode": "bf16"},
}


def pt2e_candidates(model: nn.Module, ctx: StageContext) -> dict[str, nn.Module]:
    """torchao's PT2E static int8, if torchao is installed; failures are reported, not hidden."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        print("torchao not installed: PT2E candidates skipped (pip install torchao)")
        return {}
    try:
        example = (ctx.data.example_inputs(1),)
        exported = torch.export.export(copy.deepcopy(model).eval(), example).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for inputs, _ in list(ctx.data.train)[:8]:
            prepared(inputs)
        converted = convert_pt2e(prepared)
        return {"torchao PT2E int8 (eager)": converted, "torchao PT2E int8 + torch.compile": torch.compile(converted)}
    except Exception as exc:
        print(f"torchao PT2E failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--json-out", default="runs/bench/quant.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    arch = {"torchvision": args.arch, "kwargs": {"num_classes": 10}}
    data = build_data(DigitsData(kind="digits", image_size=args.size, channels=3), 0)
    model = build_architecture(arch)

    def context() -> StageContext:
        return StageContext(data=data, original_model=model, lineage=Lineage(arch), evaluate=EvaluateSpec(), seed=0)

    ctx = context()
    FinetuneStage(FinetuneSpec(kind="finetune", epochs=args.epochs, lr=0.002, schedule="onecycle"), "train").apply(
        model, ctx
    )
    variants: dict[str, tuple[nn.Module, Lineage | None]] = {"fp32": (model, ctx.lineage)}
    for label, spec in MODES.items():
        mode_ctx = context()
        quantized = QuantizeStage(QuantizeSpec(kind="quantize", **spec), label).apply(copy.deepcopy(model), mode_ctx)
        variants[label] = (quantized, mode_ctx.lineage)
    variants.update({label: (m, None) for label, m in pt2e_candidates(model, ctx).items()})

    models = [m for m, _ in variants.values()]
    one, many = data.example_inputs(1), data.example_inputs(args.batch)
    with thread_count(None) as threads:
        lat1 = time_round_robin(models, one, warmup=3, iterations=args.iterations)
        latn = time_round_robin(models, many, warmup=2, iterations=args.iterations)
    rows: list[dict[str, Any]] = []
    for (label, (m, lineage)), t1, tn in zip(variants.items(), lat1, latn, strict=True):
        rows.append(
            {
                "variant": label,
                "accuracy": evaluate_classifier(m, data.val)["accuracy"],
                "batch1_median_ms": statistics.median(t1),
                "batchN_median_ms": statistics.median(tn),
                "checkpoint_bytes": len(to_bytes(m, lineage, data.input_shape)) if lineage else None,
            }
        )
    base = rows[0]
    print(
        f"{args.arch} trained on digits {args.size}x{args.size}, {threads} threads, batch 1 and {args.batch}, "
        f"median of {args.iterations} round-robin runs"
    )
    print(f"{'variant':34s} {'top-1':>7s} {'b1 ms':>7s} {'b1 x':>6s} {'bN ms':>8s} {'bN x':>6s} {'size x':>7s}")
    for r in rows:
        r["speedup_batch1"] = base["batch1_median_ms"] / r["batch1_median_ms"]
        r["speedup_batchN"] = base["batchN_median_ms"] / r["batchN_median_ms"]
        r["size_reduction"] = base["checkpoint_bytes"] / r["checkpoint_bytes"] if r["checkpoint_bytes"] else None
        size = f"{r['size_reduction']:7.2f}" if r["size_reduction"] else "      -"
        print(
            f"{r['variant']:34s} {r['accuracy']:7.4f} {r['batch1_median_ms']:7.2f} {r['speedup_batch1']:6.2f} "
            f"{r['batchN_median_ms']:8.2f} {r['speedup_batchN']:6.2f} {size}"
        )
    result = {
        "arch": args.arch,
        "input": list(data.input_shape),
        "batch_n": args.batch,
        "threads": threads,
        "torch": torch.__version__,
        "rows": rows,
    }
    write_file(Path(args.json_out), (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
