"""Geometric augmentation: random zoom (in, and with ``scale_range`` out too) with crops, and
horizontal flips.

For each sample: pick a scale ``s`` (by default one of {1.0, 1.2, 1.5}, the modern multi-task
benchmarks' recipe; with ``scale_range=(lo, hi)`` log-uniform in [lo, hi], e.g. 0.5-2.0), cut a
window of (h/s, w/s) source pixels at a random position, where h x w is the output (crop) size,
by default the data's own, resize it to h x w, and flip it left-right with probability 0.5.
A window larger than the image (zooming out) holds the whole image at a random place; the rest is
black in the image and invalid in every target (label -1, depth 0, normal 0), so no loss sees it.
Geometry is shared by the image and all targets, so they stay aligned:

* image: bilinear; labels, depth and normals: nearest (a label is never blended);
* depth: zooming in by ``s`` brings the scene ``s`` times closer, so inverse depth
  (CityScapes) is multiplied by ``s`` and metric depth (NYUv2) divided by ``s``; invalid (0)
  pixels stay 0;
* normals: a flip mirrors the scene, so the x component changes sign; invalid (0, 0, 0) stays 0.

:class:`BatchAugment` / :func:`augment_batch` work on whole batches on any device (the trainer
runs it on the GPU): one ``affine_grid`` plus one ``grid_sample`` per target type, per-sample
parameters drawn on the device from a ``torch.Generator``, no host sync. The window is placed at
a continuous position and the zoom is exactly ``s``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from mtan.tasks import Task, tasks_from_config

DEFAULT_SCALES = (1.0, 1.2, 1.5)


def _as_tasks(tasks) -> list[Task]:
    return [t if isinstance(t, Task) else tasks_from_config([t])[0] for t in tasks]


# --------------------------------------------------------------------------------------
# Batched, device-side augmentation
# --------------------------------------------------------------------------------------


@dataclass
class AugmentParams:
    """Per-sample parameters, each a length-B tensor on the batch's device.

    ``scale``: zoom factor s >= 1; ``top``/``left``: window position as a fraction of the free
    room (0 = top/left edge, 1 = bottom/right edge); ``flip``: True to mirror left-right.
    """

    scale: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor

    @classmethod
    def draw(cls, batch_size: int, device, scales: Sequence[float] = DEFAULT_SCALES, flip_p: float = 0.5,
             generator: torch.Generator | None = None,
             scale_range: tuple[float, float] | None = None) -> "AugmentParams":
        """Random parameters, drawn on ``generator``'s device (else ``device``) and moved to ``device``.
        ``scale_range``: draw scales log-uniformly in it instead of from ``scales``.

        A generator on the batch's device keeps everything there (no host round trip)."""
        gen_device = generator.device if generator is not None else torch.device(device)
        if scale_range is not None:
            lo, hi = (math.log(float(v)) for v in scale_range)
            scale = torch.rand(batch_size, generator=generator, device=gen_device).mul_(hi - lo).add_(lo).exp_()
        else:
            pick = torch.randint(len(scales), (batch_size,), generator=generator, device=gen_device)
            scale = torch.ones(batch_size, device=gen_device)
            for k, s in enumerate(scales):  # python scalars only: no host-to-device copy, no sync
                scale = torch.where(pick == k, float(s), scale)
        pos = torch.rand(2, batch_size, generator=generator, device=gen_device)
        flip = torch.rand(batch_size, generator=generator, device=gen_device) < flip_p
        move = dict(device=device, non_blocking=True)
        return cls(scale.to(**move), pos[0].to(**move), pos[1].to(**move), flip.to(**move))

    @classmethod
    def identity(cls, batch_size: int, device="cpu") -> "AugmentParams":
        ones = torch.ones(batch_size, device=device)
        return cls(ones, ones * 0, ones * 0, torch.zeros(batch_size, dtype=torch.bool, device=device))

    def theta(self, in_size: tuple[int, int] | None = None, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """B x 2 x 3 affine matrices mapping output to input coordinates (normalised, [-1, 1]).

        The window spans a fraction ``r = (out / in) / s`` of the input along each axis (1/s when
        the output has the input's size); with its free room ``1 - r`` (negative when the window
        is larger than the image) split by ``left`` / ``top``, its centre sits at
        ``(2 * left - 1) * (1 - r)``; mirroring negates the x factor.
        """
        ry = rx = 1.0 / self.scale
        if in_size is not None and out_size is not None:
            ry = ry * (out_size[0] / in_size[0])
            rx = rx * (out_size[1] / in_size[1])
        theta = torch.zeros(self.scale.shape[0], 2, 3, device=self.scale.device, dtype=torch.float32)
        theta[:, 0, 0] = torch.where(self.flip, -rx, rx)
        theta[:, 0, 2] = (2 * self.left - 1) * (1 - rx)
        theta[:, 1, 1] = ry
        theta[:, 1, 2] = (2 * self.top - 1) * (1 - ry)
        return theta


def _sample(x: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="border", align_corners=False)


def apply_augment(batch: dict, tasks, params: AugmentParams, out_size: tuple[int, int] | None = None) -> dict:
    """Apply given parameters to a batch (``image`` B x 3 x H x W and task targets); the result
    is ``out_size`` (h, w; default H x W)."""
    tasks = _as_tasks(tasks)
    image = batch["image"]
    b, _, h, w = image.shape
    oh, ow = out_size or (h, w)
    grid = F.affine_grid(params.theta((h, w), (oh, ow)).to(image.device), [b, 1, oh, ow], align_corners=False)
    # Output pixels whose source lies outside the image (a zoomed-out view): black, and no target.
    outside = (grid.abs() > 1).any(-1)[:, None]  # (no host sync: always computed, empty unless zoomed out)
    out = dict(batch)
    out["image"] = _sample(image if image.is_floating_point() else image.float(), grid, "bilinear")
    out["image"] = out["image"].masked_fill(outside, 0.0)
    for task in tasks:
        target = batch.get(task.name)
        if target is None:
            continue
        # labels are B x H x W integers (exact in float32 for any class index); maps B x C x H x W
        values = target.reshape(b, -1, h, w)
        moved = _sample(values if values.is_floating_point() else values.float(), grid, "nearest")
        moved = task.mirror_values(task.zoom_values(moved, params.scale), params.flip)
        moved = moved.masked_fill(outside, task.missing_value)
        out[task.name] = moved.reshape(*target.shape[:-2], oh, ow).to(target.dtype)
    return out


def focus_on_classes(params: AugmentParams, labels: torch.Tensor, share: float,
                     out_size: tuple[int, int] | None = None, generator: torch.Generator | None = None) -> AugmentParams:
    """Move the window of a random ``share`` of the samples so that it is centred on a pixel of
    their ``labels`` (B x H x W, -1 = void) drawn with every class present in the sample equally
    likely: a class of a few hundred pixels (a pole, a sign) is the centre as often as the road.
    Windows larger than the image (zoomed out) keep their place. Returns new parameters."""
    b, h, w = labels.shape
    oh, ow = out_size or (h, w)
    device = labels.device
    valid = labels >= 0
    flat = labels.clamp_min(0).reshape(b, -1)
    counts = torch.zeros(b, int(flat.max()) + 1 if flat.numel() else 1, device=device)
    counts.scatter_add_(1, flat, valid.reshape(b, -1).float())
    weight = valid.reshape(b, -1).float() / counts.gather(1, flat).clamp_min(1)
    has = weight.sum(1) > 0
    pick = torch.multinomial(torch.where(has[:, None], weight, torch.ones_like(weight)), 1,
                             generator=generator).squeeze(1)
    gen_device = generator.device if generator is not None else device
    chosen = (torch.rand(b, generator=generator, device=gen_device).to(device) < share) & has
    cy = ((pick // w).float() + 0.5) / h * 2 - 1
    cx = ((pick % w).float() + 0.5) / w * 2 - 1
    ry, rx = (oh / h) / params.scale, (ow / w) / params.scale  # the window's span (a mirror keeps its place)

    def place(centre, r, old):
        room = 1 - r
        fraction = ((centre / room.clamp_min(1e-6) + 1) / 2).clamp(0, 1)
        return torch.where(chosen & (room > 0), fraction, old)

    return AugmentParams(params.scale, place(cy, ry, params.top), place(cx, rx, params.left), params.flip)


def paste_class_ids(tasks, names: Sequence[str], data: str = "the data") -> tuple[int, ...]:
    """``--copy-paste``'s class ``names`` as ids of the first segmentation task's class set among
    ``tasks``; refused, naming the option, where there is none or a name is not in the set."""
    if not names:
        return ()
    seg = next((t for t in _as_tasks(tasks) if getattr(t, "class_set", None) is not None), None)
    if seg is None:
        raise ValueError(f"--copy-paste needs segmentation labels; {data} has none: leave it out")
    try:
        return seg.class_set.ids(names)
    except ValueError as e:
        raise ValueError(f"--copy-paste {','.join(names)}: {e}") from None


def paste_classes(batch: dict, tasks, classes: Sequence[int], share: float = 0.5,
                  generator: torch.Generator | None = None) -> dict:
    """Copy-paste for rare classes, in the spirit of Simple Copy-Paste (Ghiasi et al. 2021): a
    random ``share`` of the samples get the pixels of ``classes`` (ids in the first segmentation
    task's labels) of the next sample of the batch pasted over them at the same place, the image
    and those labels both. A street camera sees poles and signs at much the same rows in every
    photo, so a pasted pole stands where a pole could stand. Every other target has no value on the
    pasted pixels (``missing_value``: depth 0, normal 0): the pasted thing's depth in its new photo
    is not known. Batches of one sample and batches without a segmentation task pass through."""
    tasks = _as_tasks(tasks)
    seg = next((t for t in tasks if t.kind == "semantic" and t.name in batch), None)
    image = batch["image"]
    b = image.shape[0]
    if seg is None or b < 2 or not classes:
        return batch
    labels = batch[seg.name]
    donor = torch.roll(torch.arange(b, device=image.device), -1)
    donor_labels = labels[donor]
    wanted = torch.zeros_like(donor_labels, dtype=torch.bool)
    for c in classes:
        wanted |= donor_labels == c
    gen_device = generator.device if generator is not None else image.device
    chosen = (torch.rand(b, generator=generator, device=gen_device).to(image.device) < share)
    mask = wanted & chosen.view(b, *([1] * (wanted.dim() - 1)))  # B x H x W
    out = dict(batch)
    out["image"] = torch.where(mask[:, None], image[donor], image)
    out[seg.name] = torch.where(mask, donor_labels, labels)
    for task in tasks:
        if task is seg or batch.get(task.name) is None:
            continue
        target = batch[task.name]
        out[task.name] = target.masked_fill(mask if target.dim() == 3 else mask[:, None], task.missing_value)
    return out


def augment_batch(batch: dict, tasks, generator: torch.Generator | None = None,
                  scales: Sequence[float] = DEFAULT_SCALES, flip_p: float = 0.5,
                  scale_range: tuple[float, float] | None = None, out_size: tuple[int, int] | None = None,
                  focus: float = 0.0, paste: Sequence[int] = ()) -> dict:
    """Randomly zoom-crop and flip every sample of a batch (see the module docstring).

    ``tasks``: the batch's tasks (Task objects or config dicts), which say how each target is
    treated. ``generator``: a ``torch.Generator`` for reproducible draws; one on the batch's
    device avoids any host round trip. ``scale_range``: log-uniform scales (e.g. (0.5, 2.0))
    instead of ``scales``; ``out_size``: the crop size (h, w); ``focus``: the share of crops
    centred by :func:`focus_on_classes` on the first segmentation task's labels; ``paste``: class
    ids pasted from crop to crop after the crop (:func:`paste_classes`, half of the samples). Keys
    that are not tasks pass through.
    """
    image = batch["image"]
    params = AugmentParams.draw(image.shape[0], image.device, scales, flip_p, generator, scale_range)
    if focus > 0:
        labels = next((batch[t.name] for t in _as_tasks(tasks) if t.kind == "semantic" and t.name in batch), None)
        if labels is not None:
            params = focus_on_classes(params, labels.long(), focus, out_size, generator)
    out = apply_augment(batch, tasks, params, out_size)
    return paste_classes(out, tasks, paste, 0.5, generator) if paste else out


class BatchAugment:
    """Callable form of :func:`augment_batch` holding its settings and generator."""

    def __init__(self, tasks, scales: Sequence[float] = DEFAULT_SCALES, flip_p: float = 0.5,
                 generator: torch.Generator | None = None, scale_range: tuple[float, float] | None = None,
                 out_size: tuple[int, int] | None = None, focus: float = 0.0, paste: Sequence[int] = ()):
        if not 0 <= float(focus) <= 1:
            raise ValueError(f"focus must be a share between 0 and 1, got {focus!r}")
        if scale_range is None and (not scales or min(scales) < 1):
            raise ValueError(f"scales must be zoom factors >= 1, got {scales!r}")
        if scale_range is not None and not 0 < float(scale_range[0]) <= float(scale_range[1]):
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        self.tasks = _as_tasks(tasks)
        self.scales, self.flip_p, self.generator = tuple(float(s) for s in scales), float(flip_p), generator
        self.scale_range = tuple(float(v) for v in scale_range) if scale_range is not None else None
        self.out_size = tuple(out_size) if out_size is not None else None
        self.focus = float(focus)
        self.paste = tuple(int(c) for c in paste)

    def __call__(self, batch: dict) -> dict:
        return augment_batch(batch, self.tasks, self.generator, self.scales, self.flip_p, self.scale_range,
                             self.out_size, self.focus, self.paste)

    def __repr__(self) -> str:
        scales = f"scale_range={self.scale_range}" if self.scale_range else f"scales={self.scales}"
        return f"BatchAugment({scales}, flip_p={self.flip_p}, out_size={self.out_size}, focus={self.focus:g}, paste={self.paste})"
