"""Running a model on one photo: the network at the processing resolution (with the mirror image
too, if asked), class ids brought to the photo's size, the attention masks kept compact."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mtan.metrics import class_ids
from mtan.inference.pipeline import Resolution, fitted
from mtan.model import flip_average
from mtan.serve.registry import LoadedModel
from mtan.tasks import find_task


@dataclass
class Prediction:
    """One photo's results, kept (in a gr.State) so views re-render without re-running the network.

    Label maps are at the photo's size; depth, normals and masks at the processing size. The
    photo is at most ``max_pixels`` (see :func:`load_image`), so one prediction holds roughly
    7 bytes a photo pixel plus the masks (at most ``mask_budget_values`` bytes, 16 MB by default).
    """

    photo: Image.Image                            # RGB, the (possibly downscaled) upload
    stem: str                                     # the upload's file name, for downloads
    processing_size: tuple[int, int]              # (h, w) the network saw
    tasks: list                                   # the model's Task objects
    labels: dict[str, np.ndarray] = field(default_factory=dict)    # semantic: H x W class ids
    depth: dict[str, np.ndarray] = field(default_factory=dict)     # depth: h x w float32
    normals: dict[str, np.ndarray] = field(default_factory=dict)   # normal: 3 x h x w float32
    masks: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)  # uint8 C x h x w, / 255
    mask_downsampled: bool = False
    seconds: float = 0.0                          # the network and the outputs at the photo's size
    seconds_network: float = 0.0                  # the network alone
    notes: list[str] = field(default_factory=list)
    resolution: str = ""                          # the processing resolution chosen ("256x512")
    mirrored: bool = False                        # the mirror image was run too and averaged
    compiled: bool = False                        # the network ran compiled (torch.compile)
    model_source: str = ""                        # where the model came from (the downloads' metadata)
    files: list[str] = field(default_factory=list)         # downloads, written once
    masks_file: str = ""                                   # the masks' .npz, written when first asked for
    masks_note: str = ""
    file_notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.photo.height, self.photo.width

    def first(self, kind: str):
        return find_task(self.tasks, kind)


def labels_at(logits: torch.Tensor, size: tuple[int, int], max_pixels: int = 1_000_000) -> np.ndarray:
    """Class ids at ``size`` from K x h x w logits: bilinear logits up to at most ``max_pixels``,
    argmax, then nearest-neighbour to the full size (bounded memory for huge photos)."""
    H, W = size
    s = min(1.0, math.sqrt(max_pixels / (H * W)))
    mid = (max(1, round(H * s)), max(1, round(W * s)))
    up = F.interpolate(logits[None].float(), size=mid, mode="bilinear", align_corners=False)[0]
    ids = class_ids(up, dim=0).to(torch.int32).cpu().numpy()
    dtype = np.uint8 if logits.shape[0] <= 256 else np.uint16
    ids = ids.astype(dtype)
    if mid != (H, W):
        ids = np.asarray(Image.fromarray(ids).resize((W, H), Image.Resampling.NEAREST))
    return ids


MASK_SCALE = 1 / 255  # masks are kept (and downloaded) as uint8: value = stored * MASK_SCALE


def quantise_mask(m: torch.Tensor) -> np.ndarray:
    """A mask (sigmoid outputs, 0..1, any float dtype and memory layout) as a contiguous uint8
    array ``round(value * 255)``: a quarter of float32's memory, error <= 0.002.
    :func:`mtan.serve.attention.mask_values` turns it back into floats."""
    return m.to(torch.float32, copy=True).mul_(255).clamp_(0, 255).round_().to(torch.uint8).contiguous().cpu().numpy()


def shrink_masks(masks: dict, budget_values: int) -> tuple[dict, bool]:
    """Masks as uint8 numpy (see :func:`quantise_mask`); if they hold more than ``budget_values``
    numbers, area-average the large ones (never below 32 pixels a side) until they fit."""
    total = sum(m.numel() for v in masks.values() for ms in v.values() for m in ms)
    factor = max(1.0, math.sqrt(total / budget_values)) if budget_values > 0 else 1.0
    out = {}
    for task, parts in masks.items():
        out[task] = {}
        for part, ms in parts.items():
            arrs = []
            for m in ms:
                if factor > 1:
                    h, w = m.shape[-2:]
                    nh, nw = max(min(h, 32), math.ceil(h / factor)), max(min(w, 32), math.ceil(w / factor))
                    if (nh, nw) != (h, w):
                        # pooled with its batch dimension: in the network's channels-last layout
                        # that is PyTorch's fast kernel (a 3-d slice took 7x longer)
                        m = F.adaptive_avg_pool2d(m.float(), (nh, nw))
                arrs.append(quantise_mask(m[0]))
            out[task][part] = arrs
    return out, factor > 1


def predict_photo(loaded: LoadedModel, photo: Image.Image, resolution: Resolution | tuple[int, int] | str,
                  stem: str = "photo", mask_budget_values: int = 16_000_000, flip: bool = False) -> Prediction:
    """Fit the photo inside ``resolution`` (:mod:`mtan.inference.pipeline`: aspect kept, padded to
    multiples of 32), run the model once with attention, and bring the outputs back to the photo's
    size. ``flip``: also run the mirror image and average the outputs (test-time augmentation; the
    masks shown are the unmirrored run's)."""
    model = loaded.model
    resolution = Resolution.parse(resolution)
    x = fitted(photo, resolution)[0]
    h, w = x.shape[-2:]
    compiled = loaded.compiled_for((1, 3, *resolution.network_size(photo.height, photo.width)))
    start = time.perf_counter()
    with torch.inference_mode():
        outputs, masks = loaded.runner.predict(x, return_attention=True)
        if flip:
            outputs = flip_average(model.tasks, outputs, loaded.runner.predict(x.flip(-1)))
        network = time.perf_counter() - start
        pred = Prediction(photo=photo, stem=stem, processing_size=(h, w), resolution=str(resolution),
                          tasks=list(model.tasks), mirrored=bool(flip), model_source=loaded.source,
                          compiled=compiled)
        for t in model.tasks:
            output = TASK_OUTPUTS[t.kind]
            getattr(pred, output.field)[t.name] = output.finish(outputs[t.name][0], pred.size)
        pred.masks, pred.mask_downsampled = shrink_masks(masks, mask_budget_values)
    pred.seconds = time.perf_counter() - start
    pred.seconds_network = network
    return pred


class TaskOutput(NamedTuple):
    """Where a kind of task's output goes in a :class:`Prediction` (``field``), how it gets there
    from the network's C x h x w output (``finish(output, photo_size)``), and the name of its view."""

    field: str
    finish: Callable
    view: str


# The one table of the task kinds in serving: class ids at the photo's size; depth and normals as they are.
TASK_OUTPUTS = {
    "semantic": TaskOutput("labels", labels_at, "segmentation"),
    "depth": TaskOutput("depth", lambda out, size: out[0].float().cpu().numpy(), "depth"),
    "normal": TaskOutput("normals", lambda out, size: out.float().cpu().numpy(), "normals"),
}
