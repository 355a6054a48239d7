"""Where the work runs: the one rule that turns a device name into a device, and the processes of
a distributed run (``torchrun``: each process trains on its shard, metrics are summed across them).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def pick_device(name: str | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (or None): ``MTAN_DEVICE`` if set, else this process's CUDA GPU when one is
    visible, else the CPU. Any other name (``cpu``, ``cuda``, ``cuda:1``) is checked: a GPU that
    is not there is a clear error, not a crash later. ``cuda`` alone means this process's GPU
    (``local_rank`` under torchrun)."""
    name = (name or "auto").strip()
    if name == "auto":
        name = os.environ.get("MTAN_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name!r} was asked for, but no CUDA GPU is visible; use cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"{str(device)!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return device


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_runtime(device: str = "auto") -> Runtime:
    """This process's place in the run (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` from torchrun) and
    its device; joins the process group of a distributed run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        chosen = pick_device(device, local_rank)
    except ValueError as e:
        raise ValueError(f"--device {e}") from None
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Runtime(device=chosen, rank=rank, world=world, local_rank=local_rank)


def all_reduce_(tensors: list[torch.Tensor], runtime: Runtime) -> None:
    """Sum each tensor over the processes of a distributed run, in place."""
    if runtime.distributed:
        for t in tensors:
            dist.all_reduce(t)


def shard_order(n: int, runtime: Runtime, generator: torch.Generator | None, device,
                drop_last: bool) -> torch.Tensor:
    """This process's sample order for one pass (the same permutation on every process, sliced);
    ``generator`` None: the samples in order."""
    if generator is not None:
        order = torch.randperm(n, generator=generator).to(device)
    else:
        order = torch.arange(n, device=device)
    if runtime.distributed:
        per_rank = n // runtime.world if drop_last else math.ceil(n / runtime.world)
        order = order[runtime.rank::runtime.world][:per_rank]
    return order
