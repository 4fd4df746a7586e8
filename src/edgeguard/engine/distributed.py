"""torchrun support: the same training entry point runs on one process or under
``torchrun --nproc_per_node=N`` (gloo on CPU, NCCL on GPUs) with no code change."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def distributed_group(device: torch.device) -> Iterator[None]:
    """Join the process group torchrun set up (env:// rendezvous) for the ``with`` block and leave
    it after, unless it existed before.  A no-op on a single process."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield
        return
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all processes (identity on one process)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()
