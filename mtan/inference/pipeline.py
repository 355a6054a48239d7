"""A photo's one path through the network, used by the app, clips, the webcam, the evaluator and
the resolution, precision and calibration records alike.

1. The processing :class:`Resolution` (``"256x512"``, parsed once where it comes in) is a box:
   the photo is fitted inside it with its aspect kept (:meth:`Resolution.fit`).
2. :func:`resize` brings the pixels to that size: bilinear with antialiasing, torchvision's resize
   (fast on 8-bit pixels, which is how photos arrive).
3. The network pads the sides up to multiples of 32 and crops its outputs back
   (:func:`mtan.model.geometry.pad`, :meth:`MTAN.predict`); with ``flip`` the mirror image is run
   too and the two are averaged.
4. :class:`PhotoView` brings every output back to the photo's own size (the evaluator scores it
   there); the app does the same per task (class ids at the photo's size).
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from mtan.model.geometry import flip_average, padded_forward, padded_size

MAX_SIDE = 4096  # a processing resolution larger than this is refused as it is parsed


class Resolution(NamedTuple):
    """A processing resolution: the box (height, width) a photo is fitted inside. A tuple, so it
    can be used wherever an ``(h, w)`` is; ``str()`` gives ``"256x512"`` back."""

    height: int
    width: int

    @classmethod
    def parse(cls, text) -> "Resolution":
        """``"256x512"`` (or a Resolution, or an (h, w) pair) -> ``Resolution(256, 512)``; a clear
        ``ValueError`` for anything else or a side outside 1..4096."""
        if isinstance(text, (tuple, list)) and len(text) == 2:
            h, w = text
        else:
            parts = re.split(r"[x,X*× ]+", str(text).strip())
            h, w = (int(p) if p.isdigit() else 0 for p in parts) if len(parts) == 2 else (0, 0)
        if not all(isinstance(v, (int, np.integer)) and 0 < v <= MAX_SIDE for v in (h, w)):
            raise ValueError(f"a processing resolution is HEIGHTxWIDTH, e.g. 256x512; got {text!r}")
        return cls(int(h), int(w))

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def fit(self, height: int, width: int) -> tuple[int, int]:
        """The largest (h, w) with the aspect of ``height`` x ``width`` inside this box (photos
        smaller than the box are enlarged)."""
        s = min(self.height / height, self.width / width)
        return max(1, round(height * s)), max(1, round(width * s))

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network runs a ``height`` x ``width`` photo at: fitted, then padded."""
        return padded_size(*self.fit(height, width))


def to_tensor(photo) -> torch.Tensor:
    """A photo (PIL image, H x W x 3 or N x H x W x 3 uint8 array) as an N x 3 x H x W uint8
    tensor over the same pixels (channels-last in memory: what the fast resize wants)."""
    a = np.asarray(photo)
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"a photo must be RGB pixels (H x W x 3, uint8), got {a.dtype} {a.shape}")
    if not a.flags.writeable:
        a = a.copy()
    t = torch.from_numpy(a)
    return (t[None] if t.dim() == 3 else t).permute(0, 3, 1, 2)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` (N x C x H x W, uint8 or float) at ``size`` (h, w): bilinear, antialiased when it
    shrinks; ``x`` itself at its own size. The project's one resize of photos."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return TF.resize(x, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Pixels as float32 in [0, 1] (uint8 / 255), in the contiguous layout the network takes."""
    return x.float().div_(255).contiguous() if x.dtype == torch.uint8 else x.float()


def fitted(photo, resolution: Resolution | None) -> torch.Tensor:
    """A photo (see :func:`to_tensor`, or an N x 3 x H x W tensor) fitted inside ``resolution``
    (kept at its size when None), as the network's float input."""
    x = photo if isinstance(photo, torch.Tensor) else to_tensor(photo)
    if resolution is not None:
        x = resize(x, Resolution.parse(resolution).fit(*x.shape[-2:]))
    return as_float(x)


class PhotoView(torch.nn.Module):
    """``model`` run on images of any size the way the app runs a photo: fitted inside
    ``resolution`` (or at their own size when it is None), padded, with the mirror image averaged
    in when ``flip``; every output brought back to the image's size (bilinear). Exposes the
    model's ``tasks`` (the evaluator and the calibration score through it)."""

    def __init__(self, model, resolution: Resolution | tuple[int, int] | None = None, flip: bool = False):
        super().__init__()
        self.model, self.flip = model, flip
        self.resolution = None if resolution is None else Resolution.parse(resolution)

    @property
    def tasks(self):
        return self.model.tasks

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        x = fitted(x, self.resolution)
        out = padded_forward(self.model, x)
        if self.flip:
            out = flip_average(self.model.tasks, out, padded_forward(self.model, x.flip(-1)))
        if tuple(x.shape[-2:]) == (h, w):
            return out
        return {k: F.interpolate(v.float(), size=(h, w), mode="bilinear", align_corners=False) for k, v in out.items()}
