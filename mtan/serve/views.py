"""The pictures the page shows of one prediction, redrawn from it whenever a display option
changes (no network run): the segmentation overlay, the coloured depth with its colour bar, what the
before/after slider compares, and the API's attention view."""
from __future__ import annotations

import numpy as np
from PIL import Image

from mtan.serve import attention, render
from mtan.serve.prediction import Prediction


def segmentation_view(pred: Prediction, opacity: float):
    sem = pred.first("semantic")
    if not sem:
        return None
    return render.overlay(pred.photo, render.colorize_labels(pred.labels[sem.name], sem.class_set.palette), opacity)


def depth_view(pred: Prediction, colormap: str):
    """The coloured depth and its colour bar (HTML)."""
    dep = pred.first("depth")
    if not dep:
        return None, ""
    colormap = colormap if colormap in render.COLORMAPS else render.DEFAULT_COLORMAP
    limits, sky_left_out = display_limits(pred, dep)
    return (render.colorize_depth(pred.depth[dep.name], pred.size, colormap, limits),
            render.colorbar_html(dep, limits, colormap, sky_left_out=sky_left_out))


def display_limits(pred: Prediction, dep) -> tuple[tuple[float, float], bool]:
    """The depth view's colour range, and whether the sky was left out of it: the percentiles of
    the pixels the segmentation does not call sky (the sky has no distance), so that the colour
    bar's far end is a real distance; all pixels when there is no segmentation or little but sky."""
    depth = pred.depth[dep.name]
    sem = pred.first("semantic")
    if sem is not None and "sky" in sem.class_set.classes:
        labels = pred.labels[sem.name]
        (H, W), (h, w) = labels.shape, depth.shape
        ground = labels[(np.arange(h) * H // h)[:, None], (np.arange(w) * W // w)[None, :]] != \
            sem.class_set.classes.index("sky")
        if ground.mean() > 0.05:
            return render.depth_limits(depth[ground]), True
    return render.depth_limits(depth), False


def compared_view(pred: Prediction, compare: str, colormap: str, depth: Image.Image | None = None,
                  normals: Image.Image | None = None):
    """What the before/after slider sets against the photo: the class map itself (not the overlay,
    which is mostly photo), the coloured depth or the normals (``depth``, ``normals``: those views
    when already drawn, not drawn again)."""
    sem, nor = pred.first("semantic"), pred.first("normal")
    if compare == "depth" and pred.first("depth"):
        return depth if depth is not None else depth_view(pred, colormap)[0]
    if compare == "normals" and nor:
        return normals if normals is not None else render.normals_to_rgb(pred.normals[nor.name], pred.size)
    if sem:
        return Image.fromarray(render.colorize_labels(pred.labels[sem.name], sem.class_set.palette), "RGB")
    return depth if depth is not None else depth_view(pred, colormap)[0]


def show_main(pred: Prediction, opacity: float, colormap: str, compare: str):
    """Segmentation overlay, coloured depth, colour bar, the before/after pair and the normals."""
    nor = pred.first("normal")
    depth, bar = depth_view(pred, colormap)
    normals = render.normals_to_rgb(pred.normals[nor.name], pred.size) if nor else None
    after = compared_view(pred, compare, colormap, depth=depth, normals=normals)
    return segmentation_view(pred, opacity), depth, bar, (pred.photo, after), normals


def show_attention(pred: Prediction, task: str, part: str, stage: float, channel: float):
    """The API's attention view (``/predict``, ``/details``): one task's mask as a heat map, where
    the tasks' masks differ, and a caption. Stages as the mask files number them."""
    if not pred.masks:
        return None, None, "This model has no attention masks (it is a `split` or `single` network)."
    task = task if task in pred.masks else next(iter(pred.masks))
    part = part if part in attention.PARTS else "encoder"
    stage = int(min(4, max(0, stage or 0)))
    values, what = attention.attention_map(pred.masks, task, part, stage, int(channel if channel is not None else -1))
    view, (lo, hi) = render.heatmap(values, pred.photo)
    caption = f"**{task}**, {attention.stage_label(part, stage)}, {what}: mask values {lo:.3f} (dark) to {hi:.3f} (bright)."
    diff = attention.task_difference(pred.masks, part, stage)
    if diff is None:
        return view, None, caption
    diff_view, (dlo, dhi) = render.heatmap(diff, pred.photo, cmap=render.DIFFERENCE_COLORMAP)
    caption += (f" Right: mean |difference| between the tasks' masks at this stage, {dlo:.3f} to {dhi:.3f}: "
                f"bright where the tasks select different features.")
    return view, diff_view, caption
