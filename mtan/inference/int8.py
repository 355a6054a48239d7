"""int8 inference: the 3x3 convolution + ReLU blocks of the encoder, decoder and attention
branches as PyTorch's quantised CPU kernels (weights int8 per output channel, activations uint8
with scales calibrated on photos by its histogram observers). :class:`mtan.inference.fast.InferenceModel`
uses it for ``precision="int8"``; :mod:`mtan.precision` checks that a model keeps its quality."""
from __future__ import annotations

import warnings
from functools import lru_cache

import torch
import torch.nn as nn

from mtan.inference.folding import fold_batchnorm
from mtan.model import MTAN, ConvBNReLU

# PyTorch marks its quantised tensor types as deprecated (in favour of torchao) but still ships them;
# int8 is used only where they work here (int8_available) and the model keeps its quality with them.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                        category=UserWarning)


# A convolution's inputs are quantised to 0..127, not 0..255: x86 CPUs without VNNI multiply uint8
# by int8 in pairs summed into 16 bits, which overflow at full range (a 3x3 convolution's result
# was off by 18 % of its range here, on a Zen 3); PyTorch's own x86 qconfig reduces the range so.
INT8_INPUT_LEVELS = 127


@lru_cache(maxsize=None)
def int8_available() -> bool:
    """Whether this torch build runs a quantised 3x3 convolution + ReLU on the CPU, correctly
    (checked on a small convolution against float32, as the model runs it)."""
    try:
        if not any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "onednn")):
            return False
        conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.linspace(-1, 1, conv.weight.numel()).view_as(conv.weight))
            conv.bias.copy_(torch.linspace(-0.2, 0.2, 4))
        x = torch.linspace(0, 1, 2 * 3 * 8 * 8).view(2, 3, 8, 8)
        want = torch.relu(conv(x)).detach()
        got = Int8ConvReLU(conv, [1 / INT8_INPUT_LEVELS, 0, float(want.max()) / 255, 0, INT8_INPUT_LEVELS])(x)
        return bool((got - want).abs().max() < 0.05 * float(want.max()))
    except Exception:  # no quantised engine, or the ops are gone from this build
        return False


def _int8_blocks(net: nn.Module) -> dict[str, ConvBNReLU]:
    """The 3x3 convolution + ReLU blocks that int8 quantises, by module path."""
    return {name: m for name, m in net.named_modules() if type(m) is ConvBNReLU}


def int8_calibration(model: MTAN, images: torch.Tensor, batch: int = 2) -> dict[str, list[float]]:
    """Activation scales for ``precision="int8"``: for each quantised block, ``[input scale,
    input zero point, output scale, output zero point, input levels]`` from PyTorch's
    ``HistogramObserver`` (uint8, which clips rare outliers to keep resolution for the bulk; the
    inputs on 0..127, see :data:`INT8_INPUT_LEVELS`) over ``images``
    (N x 3 x H x W in [0, 1]: generated street scenes and training photos), run through the
    folded float32 network. Kept in the model's ``precisions.json``, so that the network checked
    at release is the one the app builds."""
    from torch.ao.quantization import HistogramObserver

    net = fold_batchnorm(model).float().eval()
    observers, hooks = {}, []
    for name, block in _int8_blocks(net).items():
        obs = (HistogramObserver(dtype=torch.quint8, quant_min=0, quant_max=INT8_INPUT_LEVELS),
               HistogramObserver(dtype=torch.quint8))
        observers[name] = obs
        hooks.append(block.register_forward_pre_hook(lambda m, args, o=obs[0]: o(args[0].detach().float())))
        hooks.append(block.register_forward_hook(lambda m, args, out, o=obs[1]: o(out.detach().float())))
    try:
        with torch.no_grad():
            for k in range(0, len(images), batch):
                net(images[k:k + batch].float())
    finally:
        for h in hooks:
            h.remove()
    scales = {}
    for name, (inp, out) in observers.items():
        (si, zi), (so, zo) = inp.calculate_qparams(), out.calculate_qparams()
        scales[name] = [float(si), int(zi), float(so), int(zo), INT8_INPUT_LEVELS]
    return scales


class Int8ConvReLU(nn.Module):
    """``relu(conv(x))`` with ``x`` quantised to uint8 on 0..127 (``scales``: input scale and zero
    point, output scale and zero point, and the input levels they were measured for: 127; scales
    measured for 0..255, as earlier records have them, are widened to 0..127), the weights to int8
    per output channel, run by ``torch.ops.quantized.conv2d_relu``; float32 in and out."""

    def __init__(self, conv: nn.Conv2d, scales: list[float]):
        super().__init__()
        w = conv.weight.detach().float()
        w_scale = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-12).double()
        qw = torch.quantize_per_channel(w, w_scale, torch.zeros_like(w_scale, dtype=torch.long), 0, torch.qint8)
        bias = conv.bias.detach().float() if conv.bias is not None else None
        self.packed = torch.ops.quantized.conv2d_prepack(qw, bias, list(conv.stride), list(conv.padding),
                                                         list(conv.dilation), conv.groups)
        self.in_scale, self.in_zero, self.out_scale, self.out_zero = (float(scales[0]), int(scales[1]),
                                                                      float(scales[2]), int(scales[3]))
        levels = int(scales[4]) if len(scales) > 4 else 255
        if levels > INT8_INPUT_LEVELS:  # the same float range on 0..127
            self.in_scale *= levels / INT8_INPUT_LEVELS
            self.in_zero = round(self.in_zero * INT8_INPUT_LEVELS / levels)
        self.in_top = (INT8_INPUT_LEVELS - self.in_zero) * self.in_scale  # larger inputs are clipped to it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.quantize_per_tensor(x.float().clamp(max=self.in_top), self.in_scale, self.in_zero, torch.quint8)
        return torch.ops.quantized.conv2d_relu(q, self.packed, self.out_scale, self.out_zero).dequantize()


def quantise_blocks(net: nn.Module, scales: dict[str, list[float]]) -> int:
    """In place: each block of :func:`_int8_blocks` that ``scales`` covers becomes an
    :class:`Int8ConvReLU`. Returns how many; a block without scales stays float32."""
    count = 0
    for name, block in _int8_blocks(net).items():
        if name not in scales:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        quantised = Int8ConvReLU(block[0], scales[name])
        if isinstance(parent, (nn.ModuleList, nn.Sequential)):
            parent[int(child)] = quantised
        else:
            setattr(parent, child, quantised)
        count += 1
    return count


__all__ = ["INT8_INPUT_LEVELS", "Int8ConvReLU", "int8_available", "int8_calibration", "quantise_blocks"]
