"""Photometric augmentation on whole batches, on the batch's device: what cameras and uploads do
to a street photo that geometry does not.

Per sample, each with its own random strength (drawn from one ``torch.Generator``, so a seeded
epoch is repeatable): brightness, contrast, saturation and hue jitter, a gamma curve, Gaussian
blur (some samples), JPEG compression artefacts (some samples: 8x8 block DCT of luma and chroma,
quantised with the standard tables at a random quality) and sensor noise (some samples). Only
the image changes; the targets are untouched. Images are float B x 3 x H x W in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, and the JPEG (JFIF) colour transform.
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))

# The JPEG standard's example quantisation tables (Annex K), luminance and chrominance.
_Q_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_Q_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
             47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32))


@dataclass(frozen=True)
class PhotometricConfig:
    brightness: float = 0.3      # factor in [1 - b, 1 + b]
    contrast: float = 0.3
    saturation: float = 0.4
    hue: float = 0.04            # shift in turns of the colour wheel, in [-h, h]
    gamma: tuple[float, float] = (0.7, 1.5)
    blur_p: float = 0.2          # share of samples blurred, sigma in blur_sigma (pixels)
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    jpeg_p: float = 0.3          # share of samples JPEG-compressed, quality in jpeg_quality
    jpeg_quality: tuple[float, float] = (25.0, 90.0)
    noise_p: float = 0.3         # share of samples with Gaussian noise, std up to noise_std
    noise_std: float = 0.03


def _uniform(n: int, lo: float, hi: float, g, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device).mul_(hi - lo).add_(lo)


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate colours about the grey axis by ``turns`` of a full turn (per sample): a hue shift
    that keeps luma and, to first order, saturation."""
    angle = turns * (2 * math.pi)
    cos, sin = torch.cos(angle), torch.sin(angle)
    k = 1 / math.sqrt(3)
    # Rodrigues' rotation about the unit vector (1, 1, 1) / sqrt(3), one 3x3 matrix per sample.
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    cross = torch.tensor([[0, -k, k], [k, 0, -k], [-k, k, 0]], dtype=x.dtype, device=x.device)
    outer = torch.full((3, 3), 1 / 3, dtype=x.dtype, device=x.device)
    m = (cos.view(-1, 1, 1) * eye + sin.view(-1, 1, 1) * cross + (1 - cos).view(-1, 1, 1) * outer)
    return torch.einsum("bij,bjhw->bihw", m.to(x.dtype), x)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (one grouped convolution per axis)."""
    b, c, h, w = x.shape
    radius = 4
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c) x taps
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def _dct_matrix(n: int, dtype, device) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    m = torch.cos((2 * i[None] + 1) * i[:, None] * math.pi / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.to(dtype=dtype, device=device)


def _quality_scale(quality: torch.Tensor) -> torch.Tensor:
    """The IJG quality -> table scale rule (quality 50 = the standard tables)."""
    q = quality.clamp(1, 100)
    return torch.where(q < 50, 50 / q, 2 - q / 50)


def _jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG compression artefacts: YCbCr, 8x8 DCT, quantised with the standard tables scaled for
    each sample's quality, and back (chroma at full resolution: blocking and ringing, no
    subsampling blur). Sides are padded to multiples of 8 and cropped back."""
    b, _, h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    y = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
    H, W = y.shape[-2:]
    to_ycc = torch.tensor(_RGB_TO_YCBCR, dtype=x.dtype, device=x.device)
    ycc = torch.einsum("ij,bjhw->bihw", to_ycc, y) * 255
    ycc[:, 0] -= 128
    d = _dct_matrix(8, x.dtype, x.device)
    blocks = ycc.view(b, 3, H // 8, 8, W // 8, 8).permute(0, 1, 2, 4, 3, 5)  # b, c, by, bx, 8, 8
    coef = d @ blocks @ d.T
    tables = torch.stack([torch.tensor(_Q_LUMA, dtype=x.dtype, device=x.device),
                          torch.tensor(_Q_CHROMA, dtype=x.dtype, device=x.device),
                          torch.tensor(_Q_CHROMA, dtype=x.dtype, device=x.device)]).view(1, 3, 1, 1, 8, 8)
    q = (tables * _quality_scale(quality).to(x.dtype).view(b, 1, 1, 1, 1, 1)).clamp_min(1)
    coef = torch.round(coef / q) * q
    back = (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(b, 3, H, W)
    back[:, 0] += 128
    back = back / 255
    to_rgb = torch.linalg.inv(to_ycc)
    rgb = torch.einsum("ij,bjhw->bihw", to_rgb, back)
    return rgb[..., :h, :w]


def photometric(image: torch.Tensor, generator: torch.Generator | None = None,
                config: PhotometricConfig = PhotometricConfig()) -> torch.Tensor:
    """``image`` (B x 3 x H x W, float in [0, 1]) with random photometric changes per sample."""
    x = image.float()
    b, dev = x.shape[0], x.device
    g = generator
    gdev = g.device if g is not None else dev

    def draw(lo, hi):
        return _uniform(b, lo, hi, g, gdev).to(dev).view(b, 1, 1, 1)

    def chosen(p):
        return (torch.rand(b, generator=g, device=gdev) < p).to(dev).view(b, 1, 1, 1)

    c = config
    x = x * draw(1 - c.brightness, 1 + c.brightness)
    mean = _luma(x).mean((2, 3), keepdim=True)
    x = (x - mean) * draw(1 - c.contrast, 1 + c.contrast) + mean
    grey = _luma(x)
    x = (x - grey) * draw(1 - c.saturation, 1 + c.saturation) + grey
    x = _rotate_hue(x, draw(-c.hue, c.hue).view(b))
    x = x.clamp(0, 1).pow(draw(*c.gamma))
    blur, jpeg, noise = chosen(c.blur_p), chosen(c.jpeg_p), chosen(c.noise_p)
    x = _some(x, blur, lambda v, k: _blur(v, k), draw(*c.blur_sigma).view(b))
    x = _some(x.clamp(0, 1), jpeg, lambda v, k: _jpeg(v, k), draw(*c.jpeg_quality).view(b))
    std = draw(0.0, c.noise_std)
    gaussian = torch.randn(x.shape, generator=g, device=gdev).to(dev)
    x = torch.where(noise, x + gaussian * std, x)
    return x.clamp_(0, 1).to(image.dtype) if image.is_floating_point() else x.clamp_(0, 1)


def _some(x: torch.Tensor, chosen: torch.Tensor, op, arg: torch.Tensor) -> torch.Tensor:
    """``op(x, arg)`` for the chosen samples. On a GPU every sample is computed and the chosen ones
    kept (no host sync); on a CPU only the chosen ones are computed (the work is the cost there)."""
    if x.device.type != "cpu":
        return torch.where(chosen, op(x, arg), x)
    index = chosen.view(-1).nonzero().view(-1)
    if index.numel() == 0:
        return x
    out = x.clone()
    out[index] = op(x[index], arg[index])
    return out
