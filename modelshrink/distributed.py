"""Multi-process training with torch.distributed: every rank runs the same recipe, training stages
share gradients through DistributedDataParallel, and only rank 0 measures and writes.

Started by `modelshrink run --nproc N` (N processes on this machine) or by torchrun itself across
machines (`torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m
modelshrink run recipe.yaml` on each; see docs/commands.md); both set RANK / WORLD_SIZE / MASTER_ADDR,
which is all we read. The recipe's batch size is the global batch: each step, every rank trains on its
slice of the batch one process would take, in the order one process would take them, so N processes
make the model one process makes (up to the order floats are summed in). What rank 0 saved for
`--resume` reaches the other ranks through the process group (`from_main`): no node reads another's
files, only the output directory of the node that gets rank 0 is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

T = TypeVar("T")

# Threads torch would use in a single process; latency is always measured with these.
DEFAULT_THREADS = torch.get_num_threads()


def init_from_env() -> None:
    """Join the process group torchrun described (gloo on CPU, nccl on GPU); no-op in one process.

    Each process gets an equal share of the cores, so that N processes do not fight over them."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        torch.set_num_threads(max(1, DEFAULT_THREADS // local))


@contextmanager
def sharing_threads(threads: int) -> Iterator[None]:
    """Train and time with `threads` (this process's share of the cores, when others run beside it), then
    go back: what runs after (the winner's run of `tune --workers`) has the machine to itself."""
    global DEFAULT_THREADS
    previous, before = DEFAULT_THREADS, torch.get_num_threads()
    DEFAULT_THREADS = threads
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        DEFAULT_THREADS = previous
        torch.set_num_threads(before)


def launch_local(nproc: int, argv: list[str]) -> int:
    """Run `python -m modelshrink.cli ARGV` in `nproc` processes on this machine, as torchrun would;
    returns rank 0's exit code (or the first failure among the others)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank_ in range(nproc):
        env = {
            **os.environ,
            "RANK": str(rank_),
            "LOCAL_RANK": str(rank_),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        stdout = None if rank_ == 0 else subprocess.DEVNULL
        procs.append(subprocess.Popen([sys.executable, "-m", "modelshrink.cli", *argv], env=env, stdout=stdout))
    codes = [p.wait() for p in procs]
    return codes[0] or next((c for c in codes if c), 0)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class PeerLost(KeyboardInterrupt):
    """Another rank (a process, or a node) stopped mid-run: an interruption like Ctrl-C, not a failure of
    this run's input, so the progress saved for --resume is kept."""


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc` is the process group failing because another rank died (gloo and nccl raise plain
    RuntimeErrors naming themselves, or torch's DistError)."""
    if world_size() == 1 or not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(word in text for word in ("gloo", "nccl", "NCCL", "Connection"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics are updated from each rank's own
    batches), so that evaluation, early stopping and the saved model agree across ranks."""
    if world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def shard(loader: DataLoader) -> DataLoader:
    """This rank's share of a training loader (the loader itself in one process): each batch the loader
    would give one process, sliced by rank. Every rank draws the same order (the loader's generator is
    seeded alike on all), so the ranks' slices of a step are that one batch, and DDP's mean of their
    gradients is the gradient one process takes."""
    if world_size() == 1 or loader.batch_sampler is None:
        return loader
    sliced = _RankSlices(loader.batch_sampler, rank(), world_size())
    # the loader's generator, which one process's iterator also draws its base seed from before its order
    return DataLoader(loader.dataset, batch_sampler=sliced, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, generator=loader.generator)  # fmt: skip


class _RankSlices(Sampler[list[int]]):
    """A batch sampler's batches, each cut to this rank's slice; a batch too small to give every rank a
    sample is skipped by all ranks alike (a rank with nothing to train on would hang the others)."""

    def __init__(self, batches: Iterable[list[int]], rank_: int, world: int):
        self.batches, self.rank, self.world = batches, rank_, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.world:
                yield list(batch)[self.rank :: self.world]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def batch_weight(local: int) -> float:
    """How much this rank's mean loss weighs so that DDP's mean over ranks is the whole batch's mean: the
    slices of a batch that does not divide by the ranks differ in size (1.0 in one process)."""
    if world_size() == 1:
        return 1.0
    total = torch.tensor([local], dtype=torch.int64)
    dist.all_reduce(total)
    return local * world_size() / int(total.item())


def from_main(read: Callable[[], T]) -> T:
    """`read()` on rank 0, its result on every rank: what rank 0 keeps on its own disk (the resume state)
    reaches ranks on other machines. Every rank must call it at the same point, as any collective."""
    if world_size() == 1:
        return read()
    box: list[Any] = [read() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
