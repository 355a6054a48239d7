"""The learning-rate schedule of a run."""
from __future__ import annotations

import math

import torch

from mtan.train.config import TrainConfig


def build_schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule: ``step`` (the paper's StepLR, stepped once an epoch), or
    ``cosine`` / ``poly`` (power 0.9) decay to 0 over the run after a linear warm-up of
    ``warmup_epochs``, stepped after every optimiser step."""
    if config.optim.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.optim.step_size, gamma=config.optim.gamma)
    total = max(1, config.optim.epochs * steps_per_epoch)
    warmup = int(round(config.optim.warmup_epochs * steps_per_epoch))
    kind = config.optim.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return (1 - progress) ** 0.9

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
