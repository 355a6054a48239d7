"""Pictures of MTAN's outputs: segmentation overlays and legends, coloured depth with a colour
bar, surface normals and heat maps (the attention views: :mod:`mtan.serve.attention`; the files
to download: :mod:`mtan.serve.downloads`).

Everything works on numpy arrays and PIL images (no gradio), at the photo's size; rendering is
cheap enough to redo whenever a display option changes.
"""
from __future__ import annotations

import html
import math
from functools import lru_cache

import numpy as np
from PIL import Image
import torch


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


def legend_html(labels: np.ndarray | None, class_set, title: str = "") -> str:
    """The classes present (colour swatch, name, share of pixels), largest first; ``labels`` None:
    every class of the set, in its order, without shares (a clip's legend)."""
    shares = class_shares(labels, class_set.num_classes) if labels is not None else None
    order = np.argsort(-shares, kind="stable") if shares is not None else range(class_set.num_classes)
    rows = []
    for k in order:
        if shares is not None and shares[k] <= 0:
            continue
        r, g, b = class_set.palette[k]
        share = f'<span class="mtan-legend-share">{_percent(shares[k])}</span>' if shares is not None else ""
        rows.append(
            f'<li class="mtan-legend-item" data-class="{html.escape(class_set.classes[k])}">'
            f'<span class="mtan-swatch" style="background:rgb({r},{g},{b})"></span>'
            f'<span class="mtan-legend-name">{html.escape(class_set.classes[k])}</span>{share}</li>')
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
# Heat maps and sheets (the attention views: :mod:`mtan.serve.attention`)
# --------------------------------------------------------------------------------------

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


def thumbnail(photo: Image.Image, max_side: int) -> Image.Image:
    """An RGB copy of ``photo`` whose longest side is at most ``max_side``."""
    small = photo.convert("RGB")
    if max(small.size) > max_side:
        small = small.copy()
        small.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return small


def titled_grid(images: list[tuple[str, Image.Image]], columns: int, gap: int = 8) -> Image.Image:
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
