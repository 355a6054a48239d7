"""The network's input sides are multiples of 32: padding an image up to that, cropping outputs
back, and the mirror-image average (test-time augmentation). Fitting a photo inside a processing
resolution and resizing it are :mod:`mtan.inference.pipeline`'s."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtan.model.blocks import MULTIPLE


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The network input size of a ``height`` x ``width`` image: each side rounded up to a multiple of 32."""
    return -(-height // MULTIPLE) * MULTIPLE, -(-width // MULTIPLE) * MULTIPLE


def pad(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N x C x H x W) padded on the bottom and right up to :func:`padded_size` by repeating
    its edge pixels; ``x`` itself when its sides are multiples of 32 already."""
    h, w = x.shape[-2:]
    H, W = padded_size(h, w)
    return x if (H, W) == (h, w) else F.pad(x, (0, W - w, 0, H - h), mode="replicate")


def crop(t: torch.Tensor, size: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """An output (or an attention mask, which lives at a coarser scale) of the network run on a
    ``padded`` input, cropped back to the part that covers the ``size`` image."""
    sh, sw = t.shape[-2] / padded[0], t.shape[-1] / padded[1]
    return t[..., : max(1, math.ceil(size[0] * sh)), : max(1, math.ceil(size[1] * sw))]


def padded_forward(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``module(x)`` for N x 3 x H x W images of any size: padded (:func:`pad`), every output
    cropped back to H x W (as :meth:`MTAN.predict` does)."""
    size = tuple(x.shape[-2:])
    big = pad(x)
    if big is x:
        return module(x)
    return {k: crop(v, size, big.shape[-2:]) for k, v in module(big).items()}


def flip_average(tasks, out: dict, mirrored: dict) -> dict:
    """The mean of a model's outputs for an image and (mirrored back) for its mirror image; a
    normal's x component changes sign in the mirror. Test-time augmentation."""
    result = {}
    for t in tasks:
        back = t.mirror_values(mirrored[t.name].flip(-1))
        result[t.name] = (out[t.name] + back) / 2
    return result
