"""Per-task losses with valid-pixel masks.

Every loss is a sum over the valid pixels of the batch divided by their count, so a batch
without any valid pixel for a task gives exactly zero (never NaN), and no value ever has to
leave the device to decide that.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: ``--class-weights``: the power of the median-frequency balance (none: no weights).
CLASS_BALANCE = {"none": None, "median-frequency": 1.0, "sqrt-median-frequency": 0.5}


def _safe_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp_min(1).to(total.dtype)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  label_smoothing: float = 0.0, hard_share: float = 1.0) -> torch.Tensor:
    """Pixel-wise cross-entropy over pixels whose label is not -1.

    logits: N x K x H x W, target: N x H x W integer labels in [0, K) or -1. ``weight``
    (optional, K values): class weights; the loss is then the weighted mean, the sum of
    ``weight[label] * CE`` divided by the sum of ``weight[label]`` over valid pixels.
    ``label_smoothing``: the target puts this much of its mass evenly on all classes.
    ``hard_share`` below 1: online hard-pixel mining (bootstrapped cross-entropy, Wu, Shen and
    van den Hengel 2016): only the ``hard_share`` of the batch's pixels with the largest (weighted)
    loss count, so thin and confusable structures are not outvoted by the pixels already right.
    The count is taken of all pixels, void ones included, so no value leaves the device; when
    fewer pixels are valid, every valid one counts.
    """
    if not 0 < hard_share <= 1:
        raise ValueError(f"hard_share must be in (0, 1], got {hard_share}")
    target = target.long()
    if hard_share < 1:
        per_pixel = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=-1, reduction="none",
                                    label_smoothing=label_smoothing).reshape(-1)
        valid = (target != -1).reshape(-1)
        # void pixels rank last whatever the logits say (their loss is 0 and they weigh 0)
        rank = torch.where(valid, per_pixel, torch.full_like(per_pixel, -1.0))
        k = max(1, math.ceil(hard_share * rank.numel()))
        picked = rank.topk(k).indices
        pixel_weight = valid.float() if weight is None else weight[target.clamp_min(0)].reshape(-1) * valid
        return _safe_mean(per_pixel[picked].sum(), pixel_weight[picked].sum())
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=-1, reduction="sum",
                            label_smoothing=label_smoothing)
    if weight is None:
        return _safe_mean(total, (target != -1).sum())
    valid = target != -1
    return _safe_mean(total, weight[target.clamp_min(0)].mul(valid).sum())


def lovasz_softmax_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Lovasz-softmax loss (Berman, Rannen Triki and Blaschko 2018, eq. 12 with the per-class
    errors of eq. 10): a convex surrogate of 1 - IoU for each class present in the batch's labels,
    averaged over those classes. Every present class counts alike, so a thin, rare class (poles and
    signs) weighs as much as the road, and what is optimised is the score the benchmark reports.

    For class c, with ``m_i = |[label_i = c] - p_i(c)|`` the error of each valid pixel under the
    softmax, the pixels are sorted by error (largest first) and the errors are weighted by the
    increments of the Jaccard loss along that order (the Lovasz extension's gradient): the loss is
    ``sum_i m_(i) * (J_i - J_(i-1))`` where ``J_i`` is 1 - IoU when the i largest errors are the
    mistakes. logits: N x K x H x W, target: N x H x W in [0, K) or -1 (void, left out).
    """
    k = logits.shape[1]
    prob = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, k)
    target = target.reshape(-1).long()
    valid = target != -1
    prob, target = prob[valid], target[valid]
    total = logits.new_zeros((), dtype=torch.float32)
    present = total.new_zeros(())
    for c in range(k):
        fg = (target == c).float()
        errors, order = (fg - prob[:, c]).abs().sort(descending=True)
        fg = fg[order]
        gts = fg.sum()
        jaccard = 1.0 - (gts - fg.cumsum(0)) / (gts + (1.0 - fg).cumsum(0)).clamp_min(1.0)
        steps = torch.cat((jaccard[:1], jaccard[1:] - jaccard[:-1]))
        here = (gts > 0).float()  # a class absent from the labels is left out (no value leaves the device)
        total = total + here * (errors * steps).sum()
        present = present + here
    return _safe_mean(total, present)


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


#: Pixel offsets of the pairs the depth ranking term compares (along rows and along columns).
RANKING_GAPS = (2, 6)
#: Two valid target pixels whose depths differ by more than this ratio (10 %) form an ordered
#: pair; closer ones an equal pair.
RANKING_RATIO = 1.1


def _pixel_pairs(shape: torch.Size, gaps: tuple[int, ...]):
    """For each gap and each direction (down columns, along rows) that fits in ``shape`` (N x C x H x
    W): two functions giving, of a tensor of that shape, the first and the second pixel of every
    pair ``gap`` pixels apart, as aligned views."""
    for g in gaps:
        for dim in (2, 3):
            n = shape[dim]
            if n > g:
                yield (lambda x, d=dim, k=n - g: x.narrow(d, 0, k)), (lambda x, d=dim, g=g, k=n - g: x.narrow(d, g, k))


def depth_ranking_loss(pred: torch.Tensor, target: torch.Tensor, gaps: tuple[int, ...] = RANKING_GAPS,
                       ratio: float = RANKING_RATIO) -> torch.Tensor:
    """A pairwise ranking term on the predicted depth, in the spirit of the relative-depth losses
    of Chen et al. 2016 (Single-Image Depth Perception in the Wild, eq. 1) and Xian et al. 2020
    (Structure-Guided Ranking Loss, eq. 2), with every pixel pair ``gap`` pixels apart along a row
    or a column (both valid) as the pairs: where the target's depths differ by more than
    ``ratio``, ``log(1 + exp(-s (log p_i - log p_j)))`` with ``s`` the sign of the target's order
    (a soft penalty on predicting the pair in the wrong order); elsewhere ``(log p_i - log p_j)^2``
    (the pair should be as near as each other). The two kinds are averaged apart and added.

    Why: an L1 loss on inverse depth weighs a boundary by its difference in inverse depth, so a
    car 20 m away against a facade at 40 m (0.09 against 0.05) counts for almost nothing beside
    the near road. In log depth every boundary counts alike, whatever its distance, and the term
    does not depend on the depth's scale. Works for depth and inverse depth alike (the order is
    compared, and log turns either into the other up to a sign). pred, target: N x 1 x H x W,
    target 0 = no depth; predictions are floored at 1e-4 before the log.
    """
    logp = pred.float().clamp_min(1e-4).log()
    valid = depth_valid_mask(target)
    logt = target.float().abs().clamp_min(1e-12).log()
    threshold = math.log(ratio)
    ordered_sum = pred.new_zeros((), dtype=torch.float32)
    equal_sum = pred.new_zeros((), dtype=torch.float32)
    ordered_n = equal_sum.new_zeros(())
    equal_n = equal_sum.new_zeros(())
    for a, b in _pixel_pairs(pred.shape, gaps):
        both = a(valid) & b(valid)
        dt = a(logt) - b(logt)
        dp = a(logp) - b(logp)
        ordered = both & (dt.abs() > threshold)
        equal = both & ~ordered
        ordered_sum = ordered_sum + (F.softplus(-torch.sign(dt) * dp) * ordered).sum()
        equal_sum = equal_sum + (dp.square() * equal).sum()
        ordered_n = ordered_n + ordered.sum()
        equal_n = equal_n + equal.sum()
    return _safe_mean(ordered_sum, ordered_n) + _safe_mean(equal_sum, equal_n)


def occlusion_order_loss(pred: torch.Tensor, labels: torch.Tensor, front: tuple[int, ...], behind: tuple[int, ...],
                         target: torch.Tensor | None = None, gaps: tuple[int, ...] = RANKING_GAPS,
                         nearer_is_larger: bool = True, ratio: float = RANKING_RATIO) -> torch.Tensor:
    """An occlusion prior from the segmentation labels: a pixel of a ``front`` class (a person, a
    car) ``gap`` pixels from one of a ``behind`` class (a facade, a tree, the sky) across a row or a
    column is seen in front of it, so it should be predicted nearer:
    ``log(1 + exp(-(log n_front - log n_behind)))`` with ``n`` the nearness (inverse depth, or 1 /
    depth where ``nearer_is_larger`` is False), averaged over all such pairs. The ranking term of
    :func:`depth_ranking_loss`, with the order read from the labels: it reaches the outlines where the
    depth targets have no value on one side (a facade above a car whose foot the car hides), most of
    them in CamVid's pseudo-depth. A pair whose depth targets both exist and say the other order (by
    more than ``ratio``: a near corner of a building beside a car farther down the street) is left
    out. pred: N x 1 x H x W; labels: N x H x W class ids (-1 void); target: N x 1 x H x W or None.
    """
    logn = pred.float().clamp_min(1e-4).log()
    if not nearer_is_larger:
        logn = -logn
    lab = labels.unsqueeze(1)
    is_front = torch.zeros_like(lab, dtype=torch.bool)
    is_behind = torch.zeros_like(lab, dtype=torch.bool)
    for c in front:
        is_front |= lab == c
    for c in behind:
        is_behind |= lab == c
    if target is not None:
        valid = depth_valid_mask(target)
        logt = target.float().abs().clamp_min(1e-12).log()
        if not nearer_is_larger:
            logt = -logt
    total = pred.new_zeros((), dtype=torch.float32)
    count = total.new_zeros(())
    for a, b in _pixel_pairs(pred.shape, gaps):
        for first, second in ((a, b), (b, a)):
            pairs = first(is_front) & second(is_behind)
            if target is not None:
                contradicted = first(valid) & second(valid) & (second(logt) - first(logt) > math.log(ratio))
                pairs = pairs & ~contradicted
            total = total + (F.softplus(second(logn) - first(logn)) * pairs).sum()
            count = count + pairs.sum()
    return _safe_mean(total, count)


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
