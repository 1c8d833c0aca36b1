"""Which int8 dynamic-quantization backend is fastest on this CPU? (the measurement behind stages/quantize.py)

Times fp32 against torch.ao's `quantize_dynamic` and, when torchao is installed (`pip install torchao`),
torchao's int8 configs in eager mode and under torch.compile, all interleaved in one run on a
BERT-sized MLP (768 -> 3072 -> 768, twice) over a sequence of 128 tokens. Prints speed-ups against
fp32 and the relative output error; writes JSON with --json-out.

    .venv/bin/python scripts/bench_quant_backends.py --batch 1 --batch 8
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import warnings
from pathlib import Path

import torch
from torch import nn

from modelshrink.atomic import write_file
from modelshrink.environment import cpu_summary, environment
from modelshrink.metrics.latency import thread_count, time_round_robin


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(768, 3072),
        nn.GELU(),
        nn.Linear(3072, 768),
        nn.GELU(),
        nn.Linear(768, 3072),
        nn.GELU(),
        nn.Linear(3072, 768),
    ).eval()


def candidates(base: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.quantization import quantize_dynamic

    models = {
        "fp32": base,
        "fp32 + torch.compile": torch.compile(copy.deepcopy(base)),
        "torch.ao quantize_dynamic": quantize_dynamic(copy.deepcopy(base), {nn.Linear}, dtype=torch.qint8),
    }
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        print("torchao not installed: its candidates are skipped")
        return models
    for label, config in (
        ("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig),
        ("torchao int8 weight-only", Int8WeightOnlyConfig),
    ):
        model = copy.deepcopy(base)
        quantize_(model, config())
        models[label] = model
    compiled = copy.deepcopy(base)
    quantize_(compiled, Int8DynamicActivationInt8WeightConfig())
    models["torchao int8 dynamic + torch.compile"] = torch.compile(compiled)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"cpu: {cpu_summary()}")
    torch.manual_seed(0)
    base = mlp()
    models = candidates(base)
    rows = []
    with thread_count(args.threads) as threads:
        for batch in args.batch or [1, 8]:
            x = torch.randn(batch, args.seq, 768)
            with torch.inference_mode():
                reference = base(x)
                errors = {name: ((m(x) - reference).norm() / reference.norm()).item() for name, m in models.items()}
            samples = time_round_robin(list(models.values()), x, warmup=2, iterations=args.iterations)
            fp32 = statistics.median(samples[0])
            for (name, _), times in zip(models.items(), samples, strict=True):
                median = statistics.median(times)
                rows.append(
                    {
                        "backend": name,
                        "batch": batch,
                        "seq": args.seq,
                        "median_ms": median,
                        "speedup_vs_fp32": fp32 / median,
                        "relative_error": errors[name],
                        "threads": threads,
                    }
                )
                print(
                    f"batch {batch:>3} x {args.seq} | {name:38s} | {median:9.1f} ms | {fp32 / median:5.2f}x "
                    f"| rel. error {errors[name]:.4f}"
                )
    if args.json_out:
        result = {"environment": environment(), "rows": rows}
        write_file(Path(args.json_out), (json.dumps(result, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
