"""Grow a trained network into a wider one that computes the same function (Net2WiderNet: Chen,
Goodfellow and Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer", ICLR 2016, sec. 2.1).

Every channel of the wider network is a copy of one channel of the narrower: new channel ``k`` of a
layer ``r`` times as wide copies old channel ``floor(k / r)``, with that channel's convolution
filter, bias and BatchNorm parameters and statistics. A layer that reads copied channels divides
each old input weight among its copies, so its output is unchanged. Because the copies are
contiguous, a concatenation of two widened features maps the same way as each of its parts, and
an elementwise product (an attention mask times a feature) multiplies copies of the same pair.

Net2Net splits an input weight evenly and adds noise to break the symmetry between copies; here
each weight is split unevenly (random positive shares that sum to one), which keeps the function
exactly and still gives the copies different gradients from the first step, so they learn apart.
"""
from __future__ import annotations

import torch


class WidenError(ValueError):
    """The two networks' tensors do not match as a wider copy of the narrower."""


def channel_map(old: int, new: int) -> torch.Tensor:
    """For each of ``new`` channels, the old channel it copies (``new == old``: itself)."""
    return torch.arange(new) * old // new


def _shares(index: torch.Tensor, rows: int, old: int, generator: torch.Generator) -> torch.Tensor:
    """``rows x len(index)`` positive shares; for each row, the shares of one old channel's copies sum to 1."""
    raw = torch.rand(rows, len(index), generator=generator, dtype=torch.float64) + 0.5  # in [0.5, 1.5)
    total = torch.zeros(rows, old, dtype=torch.float64).index_add_(1, index, raw)
    return (raw / total[:, index]).float()


def widen_tensor(old: torch.Tensor, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """``old`` grown to ``shape``: output channels (dim 0) copied; for a convolution's weight, the
    input channels (dim 1) copied with the weight shared out among the copies."""
    if old.shape == shape:
        return old.clone()
    if old.dim() != len(shape) or old.dim() not in (1, 4) or old.shape[2:] != shape[2:] or any(
            n < o for n, o in zip(shape, old.shape)):
        raise WidenError(f"a tensor of shape {tuple(old.shape)} cannot grow to {tuple(shape)}")
    out = channel_map(old.shape[0], shape[0])
    grown = old[out]
    if old.dim() == 4 and shape[1] != old.shape[1]:
        into = channel_map(old.shape[1], shape[1])
        shares = _shares(into, shape[0], old.shape[1], generator)
        grown = grown[:, into] * shares.to(grown.dtype)[:, :, None, None]
    return grown.contiguous()


def widened_state(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The state of the wider network ``new`` (its tensors give the shapes) that computes what
    ``old`` computes. Both come from the same architecture and tasks; every channel count of
    ``new`` is that of ``old`` times one factor (the input's and the tasks' outputs are the same)."""
    if old.keys() != new.keys():
        missing, extra = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
        raise WidenError(f"the networks differ in their layers (only in the wider: {missing[:3]}; only in the "
                         f"narrower: {extra[:3]})")
    ratios = {n / o for name, t in old.items() for n, o in zip(new[name].shape[:2], t.shape[:2]) if n != o}
    if len(ratios) > 1:
        raise WidenError(f"the layers grow by different factors ({', '.join(f'{r:g}' for r in sorted(ratios))}): "
                         f"widths must all grow by the same factor")
    generator = torch.Generator().manual_seed(seed)
    return {name: widen_tensor(t, new[name].shape, generator).to(new[name].dtype) for name, t in old.items()}


def load_into(model, other, seed: int = 0) -> bool:
    """Copy the trained network ``other`` into ``model``: the same architecture and tasks (a
    calibration, fitted after training, is not compared or copied), and the same width or a
    narrower one, grown to ``model``'s. Returns whether it was grown."""
    def shape(m):
        return m.arch, [{k: v for k, v in t.to_config().items() if k != "class_bias"} for t in m.tasks]

    mine, theirs = shape(model), shape(other)
    if mine != theirs or other.width > model.width:
        raise WidenError(f"that model is {theirs[0]} width {other.width:g} with tasks {[t['name'] for t in theirs[1]]}; "
                         f"this run builds {mine[0]} width {model.width:g} with {[t['name'] for t in mine[1]]} (the "
                         f"same architecture and tasks with their classes, and the same width or a wider one)")
    if other.width == model.width:
        model.load_state_dict(other.state_dict())
        return False
    try:
        model.load_state_dict(widened_state(other.state_dict(), model.state_dict(), seed=seed))
    except WidenError as e:
        raise WidenError(f"width {other.width:g} cannot grow to {model.width:g}: {e}") from None
    return True
