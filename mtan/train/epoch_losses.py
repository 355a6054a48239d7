"""An epoch's task losses as the training loop adds them up: on the device, read once an epoch."""
from __future__ import annotations

import torch
import torch.distributed as dist

from mtan.runtime import all_reduce_
from mtan.tasks import Task


class EpochLosses:
    """An epoch's task losses summed on the device (no host read per batch), the batches in
    which each task had a valid pixel, the images seen, and the tasks whose loss went non-finite
    first (one bad step makes every task's loss NaN after it)."""

    def __init__(self, tasks: list[Task], device: torch.device):
        self.tasks, self.images = tasks, 0
        self.sums = torch.zeros(len(tasks), dtype=torch.float64, device=device)
        self.batches = torch.zeros(len(tasks), dtype=torch.float64, device=device)
        self.nonfinite = torch.zeros(len(tasks), dtype=torch.bool, device=device)

    def add(self, losses: dict, has_valid: torch.Tensor, images: int) -> None:
        stacked = torch.stack([losses[t.name].detach().double() for t in self.tasks])
        self.nonfinite = torch.where(self.nonfinite.any(), self.nonfinite, ~torch.isfinite(stacked))
        self.sums += torch.where(has_valid, stacked, torch.zeros_like(stacked))
        self.batches += has_valid.double()
        self.images += images

    def means(self) -> list[float]:
        return (self.sums / self.batches.clamp_min(1)).tolist()

    def reduce(self, runtime) -> None:
        """Sum over the processes of a distributed run (a task is non-finite if it is in any)."""
        all_reduce_([self.sums, self.batches], runtime)
        if runtime.distributed:
            flags = self.nonfinite.int()
            dist.all_reduce(flags)
            self.nonfinite = flags > 0
