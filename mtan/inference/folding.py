"""BatchNorm folded into the convolution before it: the eval-mode arithmetic of both in one
convolution, for inference copies (:mod:`mtan.inference.fast`, :mod:`mtan.inference.int8`)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution computing ``bn(conv(x))`` with ``bn`` in eval mode (running statistics).

    w' = w * g / sqrt(v + eps) per output channel; b' = (b - m) * g / sqrt(v + eps) + beta,
    computed in float64 and stored in the convolution's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    with torch.no_grad():
        w = conv.weight.double()
        b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                         device=w.device)
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.affine:
            shift = shift + bn.bias.double()
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                           device=conv.weight.device, dtype=conv.weight.dtype)
        folded.weight.copy_(w * scale.view(-1, *([1] * (w.dim() - 1))))
        folded.bias.copy_(b * scale + shift)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every ``Conv2d -> BatchNorm2d`` pair inside an
    ``nn.Sequential`` folded into one convolution (the BatchNorm replaced by ``nn.Identity``).

    Only valid for inference (eval-mode BatchNorm). ``model`` itself is left unchanged.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a, conv), (b, bn) in zip(children, children[1:]):
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.running_mean is not None:
                setattr(module, a, fold_conv_bn(conv, bn))
                setattr(module, b, nn.Identity())
    return folded


__all__ = ["fold_batchnorm", "fold_conv_bn"]
