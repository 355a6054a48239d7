"""Per-task losses with valid-pixel masks (DESIGN.md section 4).

Every loss is a sum over the valid pixels of the batch divided by their count, so a batch
without any valid pixel for a task gives exactly zero (never NaN), and no value ever has to
leave the device to decide that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _safe_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp_min(1).to(total.dtype)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy over pixels whose label is not -1.

    logits: N x K x H x W, target: N x H x W integer labels in [0, K) or -1.
    """
    target = target.long()
    total = F.cross_entropy(logits.float(), target, ignore_index=-1, reduction="sum")
    return _safe_mean(total, (target != -1).sum())


def depth_valid_mask(target: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W mask of pixels with a depth value (0 means invalid)."""
    return target != 0


def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over valid pixels (target != 0). pred and target: N x 1 x H x W."""
    mask = depth_valid_mask(target)
    total = ((pred.float() - target.float()).abs() * mask).sum()
    return _safe_mean(total, mask.sum())


def normal_valid_mask(target: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W mask of pixels whose normal vector is not all zero."""
    return (target != 0).any(dim=1, keepdim=True)


def normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity over valid pixels. pred: unit vectors N x 3 x H x W."""
    mask = normal_valid_mask(target)
    cos_sum = (pred.float() * target.float() * mask).sum()
    count = mask.sum()
    # With no valid pixel the loss is 0, not 1: the task contributes nothing to the batch.
    return torch.where(count > 0, 1 - _safe_mean(cos_sum, count), torch.zeros_like(cos_sum))
