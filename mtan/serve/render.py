"""Pictures of MTAN's outputs: segmentation overlays and legends, coloured depth with a colour
bar, surface normals and attention-mask heat maps (the files to download: :mod:`mtan.serve.downloads`).

Everything works on numpy arrays and PIL images (no gradio), at the photo's size; rendering is
cheap enough to redo whenever a display option changes.
"""
from __future__ import annotations

import html
import math
from functools import lru_cache

import numpy as np
from PIL import Image

from mtan.serve.prediction import MASK_SCALE

COLORMAPS = ("inferno", "magma", "viridis", "plasma", "turbo", "Spectral_r", "gray")
DEFAULT_COLORMAP = "inferno"
ATTENTION_COLORMAP = "inferno"
DIFFERENCE_COLORMAP = "viridis"


@lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a 256 x 3 uint8 lookup table."""
    import matplotlib

    if name not in matplotlib.colormaps:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    return (rgba[:, :3] * 255 + 0.5).astype(np.uint8)


def lookup_colours(index: np.ndarray, table: np.ndarray) -> np.ndarray:
    """H x W uint8 indices -> H x W x 3 uint8 colours ``table[index]`` (table: 256 x 3), through a
    PIL palette image: several times faster than numpy's fancy indexing on a photo."""
    im = Image.fromarray(np.ascontiguousarray(index, np.uint8), "L")
    im.putpalette(np.ascontiguousarray(table[:256], np.uint8).tobytes(), "RGB")
    return np.asarray(im.convert("RGB"))


def apply_lut(index: np.ndarray, name: str) -> np.ndarray:
    return lookup_colours(index, colormap_lut(name))


def gradient_stops(name: str) -> str:
    """A colormap as the stops of a CSS ``linear-gradient`` (16 of them), for colour bars."""
    lut = colormap_lut(name)
    return ", ".join(f"rgb({r},{g},{b}) {100 * i / 15:.1f}%" for i, (r, g, b) in enumerate(lut[::17][:16]))


def _to_index(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    v = np.nan_to_num((values.astype(np.float32) - lo) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(v + 0.5, 0, 255).astype(np.uint8)


def _resized_index(values: np.ndarray, lo: float, hi: float, size: tuple[int, int]) -> np.ndarray:
    """Values -> 0..255 at their own resolution, then bilinear to ``size`` (H, W)."""
    idx = Image.fromarray(_to_index(values, lo, hi), "L")
    if idx.size != (size[1], size[0]):
        idx = idx.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(idx)


# --------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------


def colorize_labels(labels: np.ndarray, palette) -> np.ndarray:
    """H x W class ids -> H x W x 3 uint8 in the class set's standard palette (unknown ids black)."""
    table = np.zeros((max(256, len(palette)), 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    if labels.dtype == np.uint8:
        return lookup_colours(labels, table)
    return table[labels]


def overlay(photo: Image.Image, colour: np.ndarray, opacity: float) -> Image.Image:
    """``colour`` blended over the photo; opacity 0 = the photo, 1 = the colours only."""
    opacity = float(min(1.0, max(0.0, opacity)))
    return Image.blend(photo.convert("RGB"), Image.fromarray(colour, "RGB"), opacity)


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    return counts / max(1, labels.size)


def _percent(share: float) -> str:
    return "<0.1%" if share < 0.001 else f"{100 * share:.1f}%"


def legend_html(labels: np.ndarray, class_set, title: str = "") -> str:
    """The classes present (colour swatch, name, share of pixels), largest first."""
    shares = class_shares(labels, class_set.num_classes)
    rows = []
    for k in np.argsort(-shares, kind="stable"):
        if shares[k] <= 0:
            continue
        r, g, b = class_set.palette[k]
        rows.append(
            f'<li class="mtan-legend-item" data-class="{html.escape(class_set.classes[k])}">'
            f'<span class="mtan-swatch" style="background:rgb({r},{g},{b})"></span>'
            f'<span class="mtan-legend-name">{html.escape(class_set.classes[k])}</span>'
            f'<span class="mtan-legend-share">{_percent(shares[k])}</span></li>')
    head = f'<div class="mtan-legend-title">{html.escape(title)}</div>' if title else ""
    return (f'<div class="mtan-legend" data-class-set="{html.escape(class_set.name)}">{head}'
            f'<ul>{"".join(rows)}</ul></div>')


# --------------------------------------------------------------------------------------
# Depth and normals
# --------------------------------------------------------------------------------------


def depth_limits(depth: np.ndarray) -> tuple[float, float]:
    """A robust display range: the 2nd and 98th percentiles of the finite values."""
    finite = depth[np.isfinite(depth)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98]))
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        hi = lo + 1e-6
    return lo, hi


def colorize_depth(depth: np.ndarray, size: tuple[int, int], cmap: str = DEFAULT_COLORMAP,
                   limits: tuple[float, float] | None = None) -> Image.Image:
    """h x w depth -> an RGB image of ``size`` (H, W) in a matplotlib colormap (larger value = later colour)."""
    lo, hi = limits or depth_limits(depth)
    return Image.fromarray(apply_lut(_resized_index(depth, lo, hi, size), cmap), "RGB")


def _metres(task, values) -> list[float]:
    import torch

    return [float(v) for v in task.to_metres(torch.tensor(values, dtype=torch.float64))]


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "–"
    return f"{v:.2g}" if abs(v) < 10 else f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _distance(m: float) -> str:
    if not math.isfinite(m) or m <= 0 or m > 1000:
        return "> 1 km"
    return f"≈ {_fmt(m)} m"


def colorbar_html(task, limits: tuple[float, float], cmap: str = DEFAULT_COLORMAP, ticks: int = 5,
                  sky_left_out: bool = False) -> str:
    """A horizontal colour bar for the depth view in words and metres: far on the left, near on the
    right for inverse depth (whose larger values are nearer), each tick an approximate distance.
    Nothing below zero is shown: a value at or below 0 reads as farther than the scale goes."""
    lo, hi = (max(0.0, v) for v in limits)
    hi = max(hi, lo + 1e-9)
    stops = gradient_stops(cmap)
    values = [lo + (hi - lo) * i / (ticks - 1) for i in range(ticks)]
    if task.metres_formula:
        labels = [_distance(m) for m in _metres(task, values)]
        ends = ("far", "near")
    else:
        labels = [f"{_fmt(v)} m" for v in values]
        ends = ("near", "far")
    tick_html = "".join(f"<span>{t}</span>" for t in labels)  # our own words and numbers
    note = (f"{task.meaning} Colours span the 2nd–98th percentile of this photo"
            + (" without its sky, which takes the far end's colour." if sky_left_out else "."))
    return (f'<div class="mtan-colorbar" data-units="{html.escape(task.units)}">'
            f'<div class="mtan-colorbar-title">Distance: {ends[0]} ← → {ends[1]}</div>'
            f'<div class="mtan-colorbar-bar" style="background:linear-gradient(to right, {stops})"></div>'
            f'<div class="mtan-colorbar-ticks">{tick_html}</div>'
            f'<div class="mtan-colorbar-note">{html.escape(note)}</div></div>')


def normals_to_rgb(normals: np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
    """3 x h x w unit normals -> RGB = (n + 1) / 2, optionally resized to ``size`` (H, W)."""
    rgb = np.clip((np.nan_to_num(normals.transpose(1, 2, 0)) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb, "RGB")
    if size and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return im


# --------------------------------------------------------------------------------------
# Attention masks
# --------------------------------------------------------------------------------------

PARTS = ("encoder", "decoder")


def stage_scale(part: str, stage: int) -> int:
    """How many times smaller than the input a mask is: encoder stage j = 2**j; decoder stage i
    works at encoder level 4 - i (decoder 0 is the deepest)."""
    return 2 ** (stage if part == "encoder" else 4 - stage)


def stage_label(part: str, stage: int) -> str:
    return f"{part} {stage} (1/{stage_scale(part, stage)} scale)"




def mask_values(m: np.ndarray) -> np.ndarray:
    """A stored mask (or part of one) as float32 0..1: uint8 masks hold ``round(value * 255)``,
    float masks their values."""
    return m.astype(np.float32) * MASK_SCALE if m.dtype == np.uint8 else m.astype(np.float32)


def _channel_mean(m: np.ndarray) -> np.ndarray:
    return m.mean(0, dtype=np.float32) * (MASK_SCALE if m.dtype == np.uint8 else 1.0)


def attention_map(masks: dict, task: str, part: str, stage: int, channel: int | None = None
                  ) -> tuple[np.ndarray, str]:
    """One mask as a 2-D map: the mean over channels, or one channel (clamped to the mask's range)."""
    m = masks[task][part][stage]
    if channel is None or channel < 0:
        return _channel_mean(m), f"mean over {m.shape[0]} channels"
    c = int(min(channel, m.shape[0] - 1))
    return mask_values(m[c]), f"channel {c} of {m.shape[0]}"


def _abs_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in mask units: int16 for uint8 masks (half float32's memory), else float32."""
    if a.dtype == b.dtype == np.uint8:
        return np.abs(a.astype(np.int16) - b.astype(np.int16))
    return np.abs(mask_values(a) - mask_values(b))


def _difference_scale(a: np.ndarray) -> float:
    return MASK_SCALE if a.dtype == np.uint8 else 1.0


def task_difference(masks: dict, part: str, stage: int) -> np.ndarray | None:
    """Where the tasks' masks differ: the per-pixel mean absolute difference between tasks' masks
    (averaged over channels and over pairs of tasks). ``None`` with fewer than two tasks."""
    names = list(masks)
    if len(names) < 2:
        return None
    total, pairs = None, 0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = masks[names[i]][part][stage], masks[names[j]][part][stage]
            d = _abs_difference(a, b).mean(0, dtype=np.float32) * _difference_scale(a)
            total = d if total is None else total + d
            pairs += 1
    return total / pairs


def heatmap(values: np.ndarray, photo: Image.Image, cmap: str = ATTENTION_COLORMAP, alpha: float = 0.7,
            limits: tuple[float, float] | None = None) -> tuple[Image.Image, tuple[float, float]]:
    """A 2-D map as a heat map over a grey copy of the photo (at the photo's size). The colours
    span ``limits`` (default: the map's own min..max); returns the image and the limits used."""
    finite = values[np.isfinite(values)]
    if limits is None:
        limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    size = (photo.height, photo.width)
    colours = Image.fromarray(apply_lut(_resized_index(values, *limits, size), cmap), "RGB")
    grey = photo.convert("L").convert("RGB")
    return Image.blend(grey, colours, alpha), limits


# The page numbers stages by scale, the same way for encoder and decoder: stage 1 works at the
# photo's full processing size, stage 5 at 1/16 of it (the encoder goes 1 -> 5, the decoder 5 -> 1).


def stage_at_level(masks: dict, part: str, level: int) -> int:
    """The index of ``part``'s mask list whose scale is 1/2**(level - 1) (``level`` clamped to 1..n)."""
    n = len(next(iter(masks.values()))[part])
    level = int(min(n, max(1, level)))
    return level - 1 if part == "encoder" else n - level


def level_label(level: int) -> str:
    return f"stage {level} (1/{2 ** (level - 1)} scale)"


def level_channels(masks: dict, part: str, level: int) -> int:
    """How many channels ``part``'s masks have at ``level`` (the channel control's range)."""
    return int(next(iter(masks.values()))[part][stage_at_level(masks, part, level)].shape[0])


def _level_maps(masks: dict, part: str, level: int, channel: int) -> tuple[dict, np.ndarray | None]:
    """Each task's map at ``level`` (channel 0 = the mean over channels, c = channel c - 1) and where
    they differ (mean |difference| over pairs of tasks), all in mask units 0..1."""
    stage = stage_at_level(masks, part, level)
    maps = {}
    for task in masks:
        m = masks[task][part][stage]
        maps[task] = _channel_mean(m) if channel <= 0 else mask_values(m[min(channel, m.shape[0]) - 1])
    names = list(maps)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    diff = sum(np.abs(maps[a] - maps[b]) for a, b in pairs) / len(pairs) if pairs else None
    return maps, diff


def _display_photo(photo: Image.Image, max_side: int) -> Image.Image:
    small = photo.convert("RGB")
    if max(small.size) > max_side:
        small = small.copy()
        small.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return small


def _titled(images: list[tuple[str, Image.Image]], columns: int, gap: int = 8) -> Image.Image:
    """Images of one size in a grid, each under its title, on white."""
    from PIL import ImageDraw, ImageFont

    w, h = images[0][1].size
    font = ImageFont.load_default(size=max(12, min(20, w // 18)))
    title_h = font.size + 8
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * (h + title_h) + (rows - 1) * gap), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, im) in enumerate(images):
        x, y = (i % columns) * (w + gap), (i // columns) * (h + title_h + gap)
        draw.text((x + 2, y + 3), title, fill=(30, 30, 30), font=font)
        sheet.paste(im, (x, y + title_h))
    return sheet


def _shared_top(arrays) -> float:
    """The shared colour scale's top: the largest value shown, rounded up to 0.05 (at least 0.05)."""
    top = max((float(np.nanmax(a)) for a in arrays if a is not None and a.size), default=1.0)
    return max(0.05, math.ceil(top * 20 - 1e-6) / 20)


def scale_bar_html(top: float, cmap: str = ATTENTION_COLORMAP, ticks: int = 5) -> str:
    """The attention views' one colour scale, from 0 (closed) to ``top``."""
    stops = gradient_stops(cmap)
    labels = "".join(f"<span>{top * i / (ticks - 1):.2f}</span>" for i in range(ticks))
    return (f'<div class="mtan-colorbar" data-top="{top:.2f}"><div class="mtan-colorbar-title">'
            f'Mask value, one scale for every picture: 0 = feature blocked … {top:.2f}</div>'
            f'<div class="mtan-colorbar-bar" style="background:linear-gradient(to right, {stops})"></div>'
            f'<div class="mtan-colorbar-ticks">{labels}</div></div>')


def attention_panel(masks: dict, photo: Image.Image, part: str, level: int, channel: int = 0,
                    max_side: int = 480) -> tuple[Image.Image, str, str]:
    """What each task looks at, and where they differ, at one stage: every task's mask (channel 0 =
    the mean over channels) and the tasks' mean |difference| side by side over the photo, on one
    colour scale. Returns the picture, its colour bar (HTML) and a caption (Markdown)."""
    maps, diff = _level_maps(masks, part, level, channel)
    top = _shared_top([*maps.values(), diff])
    small = _display_photo(photo, max_side)
    pictures = [(f"{task} looks at", heatmap(v, small, limits=(0.0, top))[0]) for task, v in maps.items()]
    if diff is not None:
        pictures.append(("where they differ", heatmap(diff, small, limits=(0.0, top))[0]))
    stage_channels = level_channels(masks, part, level)
    what = "mean of its " + str(stage_channels) + " channels" if channel <= 0 else \
        f"channel {min(channel, stage_channels)} of {stage_channels}"
    means = ", ".join(f"{task} {float(v.mean()):.2f}" for task, v in maps.items())
    caption = f"**{part.capitalize()} {level_label(level)}**, {what}. Mean mask value: {means}"
    if diff is not None:
        caption += f"; mean difference {float(diff.mean()):.3f}"
    return _titled(pictures, columns=len(pictures)), scale_bar_html(top), caption + "."


def attention_overview(masks: dict, photo: Image.Image, part: str, max_side: int = 240) -> Image.Image:
    """Every stage of ``part`` for every task (mean over channels), stages 1..n from left to right,
    one row per task and a last row of where the tasks differ, all on one colour scale."""
    n = len(next(iter(masks.values()))[part])
    rows = [_level_maps(masks, part, level, 0) for level in range(1, n + 1)]
    top = _shared_top([v for maps, diff in rows for v in [*maps.values(), diff]])
    small = _display_photo(photo, max_side)
    cells = []
    for task in masks:
        cells += [(f"{task}, {level_label(level)}", heatmap(rows[level - 1][0][task], small, limits=(0.0, top))[0])
                  for level in range(1, n + 1)]
    if len(masks) > 1:
        cells += [(f"differ, {level_label(level)}", heatmap(rows[level - 1][1], small, limits=(0.0, top))[0])
                  for level in range(1, n + 1)]
    return _titled(cells, columns=n)


def attention_table(masks: dict, top: int = 3) -> str:
    """Markdown: per stage (numbered by scale), each task's mean mask value, the mean |difference| between tasks, and
    the channels whose masks differ most between tasks (what makes the masks task-specific)."""
    names = list(masks)
    if not names:
        return ""
    head = "| stage | channels | " + " | ".join(f"mean mask: {n}" for n in names)
    sep = "|---|---|" + "---|" * len(names)
    if len(names) > 1:
        head += " | mean \\|difference\\| | most task-specific channels"
        sep += "---|---|"
    rows = [head + " |", sep]
    for part in PARTS:
        for level in range(1, len(masks[names[0]][part]) + 1):
            ms = [masks[n][part][stage_at_level(masks, part, level)] for n in names]
            cells = [f"{part} {level_label(level)}", str(ms[0].shape[0])] + [
                f"{m.mean(dtype=np.float64) * _difference_scale(m):.3f}" for m in ms]
            if len(names) > 1:
                per_channel = np.mean([_abs_difference(ms[i], ms[j]).mean(axis=(1, 2), dtype=np.float64)
                                       * _difference_scale(ms[i])
                                       for i in range(len(ms)) for j in range(i + 1, len(ms))], axis=0)
                best = np.argsort(-per_channel)[:top]
                cells += [f"{per_channel.mean():.3f}", ", ".join(f"{c} ({per_channel[c]:.2f})" for c in best)]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
