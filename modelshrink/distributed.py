"""Multi-process training with torch.distributed: every rank runs the same recipe, training stages
share gradients through DistributedDataParallel, and only rank 0 measures and writes.

Started by `modelshrink run --nproc N` (which launches torchrun on this machine) or by torchrun
itself across machines; both set RANK / WORLD_SIZE / MASTER_ADDR, which is all we read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

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


def shard(loader: DataLoader, seed: int, epoch: int) -> DataLoader:
    """This rank's share of a training loader for one epoch (the loader itself in one process)."""
    if world_size() == 1:
        return loader
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers)
