"""Wall-clock latency of forward passes: warm-up, fixed thread count, median and p95, checked for
plausibility.

Models of one run are timed together, round-robin (a short burst of forwards of each in turn), so that
machine noise and drift hit them all alike and the ratios between them stay meaningful; timing each stage
right after it ran gave ratios off by up to 1.5x on a busy 2-core machine (training alone leaves
the process ~10% slower afterwards). Each burst starts with an untimed call: the first forward after
another model ran finds its weights out of the caches, and a deployed model runs back to back with
itself. Timed one call per turn, a 0.52 ms int8 ResNet-18 measured 0.97 ms beside its float original
(AMD EPYC, 2 threads).

Another runtime's threads in the same process disturb PyTorch's (and each other's), so a model that
runs on another runtime (an export: it has `isolated()`) is timed in a worker process of its own
(`modelshrink.runtimes`), burst by burst in the same round-robin; PyTorch models stay here.

A number is kept only when it is plausible: every model's p95 within `SPREAD` of its median, batch N
not faster than batch 1, and the first model (the original) timed twice, as two entries, agreeing
within `CONTROL`. An implausible measurement is taken again (up to `ATTEMPTS` times); what is still
implausible after that is kept with a warning in its `warnings`, which the report turns into a finding.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from typing import Any, Protocol

import torch
from torch import nn

from modelshrink.inputs import Inputs, batch_size, call
from modelshrink.runtimes.worker import receive, send

BURST = 5  # timed forwards per model per round: few enough that drift still hits every model alike
ATTEMPTS = 3  # measurements at most, while one is implausible
SPREAD = 2.0  # a p95 above this many medians: something else took the CPU during the bursts
CONTROL = 1.25  # the original timed twice: medians further apart than this are machine noise
BATCH_FLOOR = 1.2  # a batch of N taking this many times less than a batch of 1 cannot be true
MIN_SAMPLES_FOR_SPREAD = 10  # with fewer samples a p95 is one outlier


@contextmanager
def thread_count(threads: int | None) -> Iterator[int]:
    """Pin torch's intra-op threads for a measurement, and restore them afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


class Timer(Protocol):
    """Runs one model on named batches: `warm` untimed calls, or a `burst` of timed ones (milliseconds)."""

    def warm(self, batch: str, calls: int) -> None: ...

    def burst(self, batch: str, calls: int) -> list[float]: ...


class InProcess:
    """A PyTorch model (or anything called like one) timed in this process; `warning`: why a model on
    another runtime is timed here after all."""

    def __init__(self, model: nn.Module, batches: dict[str, Inputs], warning: str | None = None):
        self.model, self.batches, self.warning = model.eval(), batches, warning

    @torch.inference_mode()
    def warm(self, batch: str, calls: int) -> None:
        for _ in range(calls):
            call(self.model, self.batches[batch])

    @torch.inference_mode()
    def burst(self, batch: str, calls: int) -> list[float]:
        inputs = self.batches[batch]
        call(self.model, inputs)  # switching in: caches still hold the previous model's data
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            call(self.model, inputs)
            times.append((time.perf_counter() - start) * 1000.0)
        return times


class WorkerFailed(RuntimeError):
    pass


# the worker's command: not `-m`, which puts the current directory first on sys.path (a stray numpy.py of
# the user's would be imported); `-c` puts it there too, so it is taken out before anything is imported
WORKER = "import sys; del sys.path[0]; from modelshrink.runtimes.worker import main; main()"


class InWorker:
    """A model on another runtime, timed in a worker process that runs only that runtime
    (`modelshrink.runtimes.worker`); the model's `isolated()` says what the worker opens."""

    def __init__(self, runtime: str, arguments: dict[str, Any], feeds: dict[str, Any]):
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", WORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise WorkerFailed(f"the timing worker did not start ({exc})") from None
        try:
            self._ask(("open", runtime, arguments, feeds))
        except BaseException:  # WorkerFailed, or an interrupt while it opens: no process left behind
            self.close()
            raise

    def _ask(self, request: tuple[Any, ...]) -> Any:
        try:
            send(self.process.stdin, request)  # type: ignore[arg-type]
            status, answer = receive(self.process.stdout)  # type: ignore[arg-type]
        except Exception as exc:  # a dead worker, a broken pipe, a corrupt answer: all mean it stopped
            raise WorkerFailed(f"the timing worker stopped ({type(exc).__name__}: {exc})") from None
        if status != "ok":
            raise WorkerFailed(answer)
        return answer

    def warm(self, batch: str, calls: int) -> None:
        self._ask(("warm", batch, calls))

    def burst(self, batch: str, calls: int) -> list[float]:
        return self._ask(("burst", batch, calls))

    def close(self) -> None:
        try:
            send(self.process.stdin, ("close",))  # type: ignore[arg-type]
            self.process.stdin.close()  # type: ignore[union-attr]
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            for pipe in (self.process.stdin, self.process.stdout):
                with suppress(OSError):  # a dead worker's pipe: nothing left to flush
                    pipe.close()  # type: ignore[union-attr]


@contextmanager
def timers(models: Sequence[nn.Module], batches: dict[str, Inputs]) -> Iterator[list[Timer]]:
    """A timer per model: in a worker process for a model on another runtime, here for the rest. A
    worker that cannot start leaves the model timed here, with a warning (its `isolation` key)."""
    with ExitStack() as stack:
        made: list[Timer] = []
        for model in models:
            isolated = getattr(model, "isolated", None)
            if isolated is None:
                made.append(InProcess(model, batches))
                continue
            runtime, arguments = isolated()
            try:
                worker = InWorker(runtime, arguments, {name: model.feeds(inputs) for name, inputs in batches.items()})
            except WorkerFailed as exc:
                made.append(InProcess(model, batches, f"timed beside PyTorch, not in a process of its own: {exc}"))
                continue
            stack.callback(worker.close)
            made.append(worker)
        yield made


def round_robin(timed: Sequence[Timer], batch: str, iterations: int, burst: int = BURST) -> list[list[float]]:
    """Milliseconds per forward pass for each timer: `iterations` of them, in bursts of up to `burst`
    forwards of each in turn."""
    samples: list[list[float]] = [[] for _ in timed]
    for start_of_round in range(0, iterations, burst):
        for timer, times in zip(timed, samples, strict=True):
            times += timer.burst(batch, min(burst, iterations - start_of_round))
    return samples


def warm_up(timed: Sequence[Timer], models: Sequence[nn.Module], batch: str, warmup: int) -> None:
    """`warmup` calls of each model; one at least for a model that compiles on its first call with new
    inputs (`modelshrink.compiled`)."""
    for timer, model in zip(timed, models, strict=True):
        timer.warm(batch, max(warmup, int(hasattr(model, "compile_time"))))


def time_round_robin(
    models: Sequence[nn.Module], inputs: Inputs, warmup: int, iterations: int, burst: int = BURST
) -> list[list[float]]:
    """Milliseconds per forward pass for each model on `inputs`, round-robin (see the module's doc)."""
    with timers(models, {"x": inputs}) as timed:
        warm_up(timed, models, "x", warmup)
        return round_robin(timed, "x", iterations, burst)


def percentile(samples: list[float], q: float) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q) - 1]


def summary(one: list[float], many: list[float], n: int, threads: int) -> dict[str, Any]:
    return {
        "batch1_median": statistics.median(one),
        "batch1_p95": percentile(one, 95),
        "batchN_median": statistics.median(many),
        "batchN_p95": percentile(many, 95),
        "batch_n": n,
        "threads": threads,
    }


def implausible(timing: dict[str, Any], samples: int) -> list[str]:
    """What cannot be true of one model's timing, in words (empty: plausible)."""
    problems = []
    if samples >= MIN_SAMPLES_FOR_SPREAD:
        for size, label in (("batch1", "batch 1"), ("batchN", f"batch {timing['batch_n']}")):
            median, p95 = timing[f"{size}_median"], timing[f"{size}_p95"]
            if p95 > SPREAD * median:
                problems.append(f"{label} p95 {p95:.2f} ms is {p95 / median:.1f}x its median {median:.2f} ms")
    if timing["batch_n"] > 1 and timing["batchN_median"] * BATCH_FLOOR < timing["batch1_median"]:
        problems.append(
            f"batch {timing['batch_n']} ({timing['batchN_median']:.2f} ms) ran faster than batch 1 "
            f"({timing['batch1_median']:.2f} ms)"
        )
    return problems


def disagreement(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The original timed twice in one measurement: medians that differ beyond `CONTROL` are noise."""
    problems = []
    for size, label in (("batch1", "batch 1"), ("batchN", f"batch {first['batch_n']}")):
        a, b = first[f"{size}_median"], second[f"{size}_median"]
        if max(a, b) > CONTROL * min(a, b):
            problems.append(f"the same model timed twice at {label} took {a:.2f} and {b:.2f} ms")
    return problems


def measure_latencies(
    models: Sequence[nn.Module],
    batch1: Inputs,
    batch_n: Inputs,
    *,
    warmup: int,
    iterations: int,
    threads: int | None,
) -> list[dict[str, Any]]:
    """Batch-1 and batch-N latency of each model, measured side by side and checked (see the module's
    doc): `attempts` says how many measurements were taken (`remeasured`: why, where the first was
    implausible for this model), `warnings` what is still implausible. A
    compiled model (see `modelshrink.compiled`) compiles during the warm-up; the time its compiling calls
    took so far comes apart, as `compile_s` (and `compiles`, how many there were)."""
    n = batch_size(batch_n)
    entries = [*models, models[0]]  # the last entry: the control, the first model timed again
    with thread_count(threads) as used, timers(entries, {"1": batch1, "N": batch_n}) as timed:
        warm_up(timed, entries, "1", warmup)
        warm_up(timed, entries, "N", warmup)
        tries: list[tuple[list[list[str]], list[dict[str, Any]]]] = []
        for _ in range(ATTEMPTS):
            ones, manys = round_robin(timed, "1", iterations), round_robin(timed, "N", iterations)
            timings = [summary(one, many, n, used) for one, many in zip(ones, manys, strict=True)]
            control = timings.pop()
            problems = [implausible(timing, iterations) for timing in timings]
            problems[0] += disagreement(timings[0], control)
            tries.append((problems, timings))
            if not any(problems):
                break
    problems, timings = min(tries, key=lambda attempt: sum(map(len, attempt[0])))
    first = tries[0][0]
    for index, (model, timing, warnings, timer) in enumerate(zip(models, timings, problems, timed, strict=False)):
        timing["attempts"] = len(tries)
        if len(tries) > 1 and first[index]:
            timing["remeasured"] = list(first[index])  # why: what the first measurement got wrong
        if warnings:
            timing["warnings"] = list(warnings)
        if getattr(timer, "warning", None):
            timing["isolation"] = timer.warning  # not a plausibility problem: where it was timed
        compile_time = getattr(model, "compile_time", None)
        if compile_time is not None:
            timing["compile_s"], timing["compiles"] = compile_time
    return timings
