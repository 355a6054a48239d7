"""Photos of any size through a network whose input sides are multiples of 32: fitting inside a
box, padding and cropping back, and the mirror-image average (test-time augmentation)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtan.model.blocks import MULTIPLE


def fit_size(height: int, width: int, box: tuple[int, int]) -> tuple[int, int]:
    """The largest (h, w) with the aspect of ``height`` x ``width`` that fits inside ``box`` (h, w):
    how a photo is sized for the network (the app, ``mtan.evaluate --app-resolution``)."""
    s = min(box[0] / height, box[1] / width)
    return max(1, round(height * s)), max(1, round(width * s))


def padded_forward(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``module(x)`` for N x 3 x H x W images of any size: H and W padded up to multiples of 32
    (edge replication), every output cropped back to H x W (as :meth:`MTAN.predict` does)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % MULTIPLE, (-w) % MULTIPLE
    if not (ph or pw):
        return module(x)
    out = module(F.pad(x, (0, pw, 0, ph), mode="replicate"))
    return {k: v[..., :h, :w] for k, v in out.items()}


def flip_average(tasks, out: dict, mirrored: dict) -> dict:
    """The mean of a model's outputs for an image and (mirrored back) for its mirror image; a
    normal's x component changes sign in the mirror. Test-time augmentation."""
    result = {}
    for t in tasks:
        back = t.mirror_values(mirrored[t.name].flip(-1))
        result[t.name] = (out[t.name] + back) / 2
    return result
