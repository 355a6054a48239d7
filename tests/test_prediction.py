"""The attention masks a prediction keeps: uint8, in a budget of values, area-averaged when over it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtan.serve.prediction import MASK_SCALE, shrink_masks


def network_masks(channels_last: bool, seed: int = 0) -> dict:
    """Masks shaped as the network returns them: per task and part, 1 x C x H x W in 0..1."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 256, 512), (16, 128, 256), (32, 64, 128)]
    out = {}
    for task in ("semantic", "depth"):
        out[task] = {}
        for part in ("encoder", "decoder"):
            ms = [torch.rand(1, c, h, w, generator=g) for c, h, w in shapes]
            out[task][part] = [m.contiguous(memory_format=torch.channels_last) if channels_last else m for m in ms]
    return out


def total_values(masks: dict) -> int:
    return sum(a.size for parts in masks.values() for arrs in parts.values() for a in arrs)


@pytest.mark.parametrize("channels_last", [False, True])
def test_masks_within_the_budget_are_kept_at_full_size(channels_last):
    masks = network_masks(channels_last)
    kept, shrunk = shrink_masks(masks, budget_values=10**7)
    assert not shrunk
    for task, parts in masks.items():
        for part, ms in parts.items():
            for m, a in zip(ms, kept[task][part]):
                assert a.dtype == np.uint8 and a.flags["C_CONTIGUOUS"] and a.shape == tuple(m.shape[1:])
                assert np.abs(a * MASK_SCALE - m[0].numpy()).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("channels_last", [False, True])
def test_masks_over_the_budget_are_area_averaged_to_fit(channels_last):
    masks = network_masks(channels_last)
    full = sum(m.numel() for parts in masks.values() for ms in parts.values() for m in ms)
    budget = full // 6
    kept, shrunk = shrink_masks(masks, budget_values=budget)
    assert shrunk
    assert total_values(kept) <= budget * 1.1  # sizes are rounded up, never below 32 a side
    for task, parts in masks.items():
        for part, ms in parts.items():
            for m, a in zip(ms, kept[task][part]):
                c, h, w = m.shape[1:]
                assert a.dtype == np.uint8 and a.flags["C_CONTIGUOUS"] and a.shape[0] == c
                assert min(h, 32) <= a.shape[1] < h or h <= 32
                assert min(w, 32) <= a.shape[2] < w or w <= 32
                reference = F.adaptive_avg_pool2d(m.double().contiguous(), a.shape[1:])[0].numpy()
                assert np.abs(a * MASK_SCALE - reference).max() <= 1 / 255
    # the layout the network computed them in does not change what is kept
    other, _ = shrink_masks(network_masks(not channels_last), budget_values=budget)
    for task in kept:
        for part in kept[task]:
            for a, b in zip(kept[task][part], other[task][part]):
                assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1
