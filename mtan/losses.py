"""Per-task losses with valid-pixel masks.

Every loss is a sum over the valid pixels of the batch divided by their count, so a batch
without any valid pixel for a task gives exactly zero (never NaN), and no value ever has to
leave the device to decide that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: ``--class-weights``: the power of the median-frequency balance (none: no weights).
CLASS_BALANCE = {"none": None, "median-frequency": 1.0, "sqrt-median-frequency": 0.5}


def _safe_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp_min(1).to(total.dtype)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Pixel-wise cross-entropy over pixels whose label is not -1.

    logits: N x K x H x W, target: N x H x W integer labels in [0, K) or -1. ``weight``
    (optional, K values): class weights; the loss is then the weighted mean, the sum of
    ``weight[label] * CE`` divided by the sum of ``weight[label]`` over valid pixels.
    ``label_smoothing``: the target puts this much of its mass evenly on all classes.
    """
    target = target.long()
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=-1, reduction="sum",
                            label_smoothing=label_smoothing)
    if weight is None:
        return _safe_mean(total, (target != -1).sum())
    valid = target != -1
    return _safe_mean(total, weight[target.clamp_min(0)].mul(valid).sum())


def median_frequency_weights(labels: torch.Tensor, num_classes: int, power: float = 1.0) -> torch.Tensor:
    """Median frequency balancing (as SegNet trained on CamVid): class c gets
    ``(median(freq) / freq[c]) ** power``, with ``freq`` each class's share of the labelled pixels
    (-1 ignored); a class that never occurs gets weight 1. ``power`` 0.5 tempers the balance (a
    class 16x rarer than the median weighs 4x, not 16x)."""
    flat = labels.reshape(-1).long()
    counts = torch.bincount(flat[flat >= 0], minlength=num_classes)[:num_classes].double()
    freq = counts / counts.sum().clamp_min(1)
    present = freq > 0
    weights = torch.ones(num_classes, dtype=torch.float64, device=labels.device)
    if present.any():
        weights[present] = (freq[present].median() / freq[present]) ** power
    return weights.float()


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


def edge_aware_smoothness(depth: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness of a predicted depth map (as in self-supervised depth estimation):
    the mean of |d/dx d| exp(-10 |d/dx I|) + |d/dy d| exp(-10 |d/dy I|) (I: the grey image), with the depth divided by each
    image's mean so that the term does not depend on the depth's scale. Flat where the photo is
    flat, free to change at the photo's edges; it needs no depth ground truth.

    depth: N x 1 x H x W, image: N x 3 x H x W in [0, 1].
    """
    d = depth.float()
    d = d / d.abs().mean((2, 3), keepdim=True).clamp_min(1e-6)
    grey = image.float().mean(1, keepdim=True)
    dx, dy = (d[..., :, 1:] - d[..., :, :-1]).abs(), (d[..., 1:, :] - d[..., :-1, :]).abs()
    ix, iy = (grey[..., :, 1:] - grey[..., :, :-1]).abs(), (grey[..., 1:, :] - grey[..., :-1, :]).abs()
    return (dx * torch.exp(-10 * ix)).mean() + (dy * torch.exp(-10 * iy)).mean()
