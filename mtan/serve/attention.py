"""The attention views: what each task's masks let through, where the tasks differ, and one
sentence on what that means for this photo (no gradio; pictures from :mod:`mtan.serve.render`).

Stages are numbered by scale, the same way for the encoder and the decoder, on the page and in
the masks' ``.npz``: stage 1 works at the photo's full processing size, stage 5 at 1/16 of it
(the encoder goes 1 -> 5, the decoder 5 -> 1). The API's ``/predict`` keeps the network's own
order (0-4, decoder 0 the deepest).

One figure says how much the tasks differ at a stage: the mean over pixels, channels and pairs of
tasks of ``|mask_a - mask_b|`` (one channel: over pixels and pairs). The panel's difference
picture is that quantity per pixel, its caption gives its mean, and the table gives the same
number for every stage.
"""
from __future__ import annotations

import html

import numpy as np
from PIL import Image

from mtan.serve.prediction import MASK_SCALE
from mtan.serve.render import ATTENTION_COLORMAP, DIFFERENCE_COLORMAP, gradient_stops, heatmap, thumbnail, titled_grid

PARTS = ("encoder", "decoder")
MIN_CLASS_SHARE = 0.03   # a class is named in the sentence when it covers at least this share of the photo


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


def _pairs(names: list) -> list[tuple]:
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


def task_difference(masks: dict, part: str, stage: int, channel: int = 0) -> np.ndarray | None:
    """Where the tasks' masks differ at ``stage`` (the network's index): per pixel, the mean over
    pairs of tasks of ``|a - b|``, averaged over channels (``channel`` 0) or of channel
    ``channel`` (1-based). ``None`` with fewer than two tasks."""
    pairs = _pairs(list(masks))
    if not pairs:
        return None
    total = None
    for a, b in pairs:
        ma, mb = masks[a][part][stage], masks[b][part][stage]
        if channel > 0:
            c = min(channel, ma.shape[0]) - 1
            d = _abs_difference(ma[c], mb[c]).astype(np.float32) * _difference_scale(ma)
        else:
            d = _abs_difference(ma, mb).mean(0, dtype=np.float32) * _difference_scale(ma)
        total = d if total is None else total + d
    return total / len(pairs)


def channel_differences(masks: dict, part: str, stage: int) -> np.ndarray:
    """Per channel, how much the tasks' masks differ at ``stage``: the mean over pixels and pairs
    of tasks of ``|a_c - b_c|`` (empty with fewer than two tasks). Its mean over channels is the
    stage's figure."""
    pairs = _pairs(list(masks))
    if not pairs:
        return np.zeros(0)
    return np.mean([_abs_difference(masks[a][part][stage], masks[b][part][stage]).mean(axis=(1, 2), dtype=np.float64)
                    * _difference_scale(masks[a][part][stage]) for a, b in pairs], axis=0)


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


def all_differences(masks: dict) -> dict[tuple[str, int], np.ndarray]:
    """:func:`channel_differences` of every part and stage (by level, numbered by scale): what
    :func:`most_different` and :func:`attention_table` read, computed once for a photo."""
    if len(masks) < 2:
        return {}
    n = len(next(iter(masks.values()))["encoder"])
    return {(part, level): channel_differences(masks, part, stage_at_level(masks, part, level))
            for part in PARTS for level in range(1, n + 1)}


def most_different(masks: dict, differences: dict | None = None) -> tuple[str, int, int]:
    """Where the attention view opens: the part and stage whose masks differ most between the tasks
    and, there, the channel that differs most (1-based); ``("encoder", 1, 0)`` with one task.
    ``differences``: :func:`all_differences` of these masks, when already found."""
    best, where = -1.0, ("encoder", 1, 0)
    for (part, level), per_channel in (all_differences(masks) if differences is None else differences).items():
        if per_channel.size and per_channel.mean() > best:
            best, where = float(per_channel.mean()), (part, level, int(np.argmax(per_channel)) + 1)
    return where


def _level_maps(masks: dict, part: str, level: int, channel: int) -> tuple[dict, np.ndarray | None]:
    """Each task's map at ``level`` (channel 0 = the mean over channels, c = channel c - 1) and where
    they differ (:func:`task_difference`), all in mask units 0..1."""
    stage = stage_at_level(masks, part, level)
    maps = {}
    for task in masks:
        m = masks[task][part][stage]
        maps[task] = _channel_mean(m) if channel <= 0 else mask_values(m[min(channel, m.shape[0]) - 1])
    return maps, task_difference(masks, part, stage, channel)


def stretch(arrays, low: float = 2.0, high: float = 98.0, min_span: float = 0.02) -> tuple[float, float]:
    """A colour range that shows the contrast in ``arrays``: their joint ``low``..``high``
    percentiles, widened to at least ``min_span`` and kept within 0..1."""
    values = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays if a is not None and a.size])
    if not values.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi - lo < min_span:
        mid = (hi + lo) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    lo, hi = max(0.0, lo), min(1.0, hi)
    return lo, max(hi, lo + 1e-3)


def scale_bar_html(lo: float, hi: float, title: str, cmap: str = ATTENTION_COLORMAP, ticks: int = 5) -> str:
    """A colour bar from ``lo`` to ``hi`` under ``title``."""
    labels = "".join(f"<span>{lo + (hi - lo) * i / (ticks - 1):.2f}</span>" for i in range(ticks))
    return (f'<div class="mtan-colorbar" data-lo="{lo:.3f}" data-top="{hi:.3f}"><div class="mtan-colorbar-title">'
            f'{html.escape(title)}</div><div class="mtan-colorbar-bar" style="background:linear-gradient(to right, '
            f'{gradient_stops(cmap)})"></div><div class="mtan-colorbar-ticks">{labels}</div></div>')


def _class_means(values: np.ndarray, labels: np.ndarray, classes) -> dict[str, float]:
    """The mean of a map over each class's pixels (labels resized to the map), for classes with at
    least :data:`MIN_CLASS_SHARE` of the pixels."""
    small = np.asarray(Image.fromarray(labels.astype(np.int32), "I").resize(
        (values.shape[1], values.shape[0]), Image.Resampling.NEAREST))
    out = {}
    for k, name in enumerate(classes):
        inside = small == k
        if inside.mean() >= MIN_CLASS_SHARE:
            out[name] = float(values[inside].mean())
    return out


def story(maps: dict, labels: np.ndarray | None = None, classes=()) -> str:
    """One sentence on what the panel shows for this photo: for the two tasks whose maps differ
    most, the class (from the segmentation) where the second task lets the feature through most
    more than the first, and the one where it is the other way round; without a segmentation,
    which part of the picture."""
    pairs = _pairs(list(maps))
    if not pairs:
        return ""
    a, b = max(pairs, key=lambda p: float(np.abs(maps[p[0]] - maps[p[1]]).mean()))
    if labels is not None and len(classes):
        ma, mb = _class_means(maps[a], labels, classes), _class_means(maps[b], labels, classes)
        if len(ma) >= 2:
            gaps = {c: mb[c] - ma[c] for c in ma}
            more_b, more_a = max(gaps, key=gaps.get), min(gaps, key=gaps.get)
            first = (f"the {b} task lets this feature through most on **{more_b}** ({mb[more_b]:.2f} against "
                     f"{ma[more_b]:.2f} for {a})")
            if gaps[more_a] < 0:
                return (f"In this photo {first}, while the {a} task keeps it most on **{more_a}** "
                        f"({ma[more_a]:.2f} against {mb[more_a]:.2f} for {b}).")
            return f"In this photo {first}; the {a} task lets it through less on every class."
    d = maps[b] - maps[a]
    h, w = d.shape
    halves = {"top": d[: h // 2], "bottom": d[h // 2:], "left": d[:, : w // 2], "right": d[:, w // 2:]}
    where = max(halves, key=lambda k: abs(float(halves[k].mean())))
    more, less = (b, a) if halves[where].mean() > 0 else (a, b)
    return f"In this photo the {more} task lets this feature through more than the {less} task, most in the {where} of the picture."


def attention_panel(masks: dict, photo: Image.Image, part: str, level: int, channel: int = 0,
                    labels: np.ndarray | None = None, classes=(), max_side: int = 480
                    ) -> tuple[Image.Image, str, str]:
    """What each task looks at, and where they differ, at one stage: every task's mask (channel 0 =
    the mean over channels) over the photo on one colour range stretched to their contrast, then
    the difference on its own range, one under the other (readable on a phone). Returns the
    picture, its colour bars (HTML) and a caption (Markdown) whose difference figure is the table's."""
    maps, diff = _level_maps(masks, part, level, channel)
    lo, hi = stretch(list(maps.values()))
    small = thumbnail(photo, max_side)
    pictures = [(f"what {task} lets through", heatmap(v, small, limits=(lo, hi))[0]) for task, v in maps.items()]
    bars = scale_bar_html(lo, hi, f"Mask value, stretched to this stage's contrast: {lo:.2f} (shut) ... {hi:.2f} (open)")
    stage_channels = level_channels(masks, part, level)
    what = f"the mean of its {stage_channels} channels" if channel <= 0 else \
        f"channel {min(channel, stage_channels)} of {stage_channels}"
    caption = f"**{part.capitalize()} {level_label(level)}**, {what}."
    if diff is not None:
        top = stretch([diff], low=0.0)[1]
        pictures.append(("where they differ", heatmap(diff, small, cmap=DIFFERENCE_COLORMAP, limits=(0.0, top))[0]))
        bars += scale_bar_html(0.0, top, f"Difference |a - b|: 0 (same) ... {top:.2f}", cmap=DIFFERENCE_COLORMAP)
        caption += f" The tasks' masks differ by **{float(diff.mean()):.3f}** on average here (as in the table). "
        caption += story(maps, labels, classes)
    return titled_grid(pictures, columns=1), bars, caption.strip()


def attention_overview(masks: dict, photo: Image.Image, part: str, max_side: int = 240) -> Image.Image:
    """Every stage of ``part`` for every task (mean over channels), stages 1..n from left to right,
    one row per task and a last row of where the tasks differ, all on one stretched colour range
    (the differences on their own)."""
    n = len(next(iter(masks.values()))[part])
    rows = [_level_maps(masks, part, level, 0) for level in range(1, n + 1)]
    lo, hi = stretch([v for maps, _ in rows for v in maps.values()])
    small = thumbnail(photo, max_side)
    cells = []
    for task in masks:
        cells += [(f"{task}, {level_label(level)}", heatmap(rows[level - 1][0][task], small, limits=(lo, hi))[0])
                  for level in range(1, n + 1)]
    if len(masks) > 1:
        top = stretch([diff for _, diff in rows], low=0.0)[1]
        cells += [(f"differ, {level_label(level)}", heatmap(rows[level - 1][1], small, cmap=DIFFERENCE_COLORMAP,
                                                            limits=(0.0, top))[0]) for level in range(1, n + 1)]
    return titled_grid(cells, columns=n)


def attention_table(masks: dict, top: int = 3, differences: dict | None = None) -> str:
    """Markdown: per stage (numbered by scale), each task's mean mask value, how much the tasks'
    masks differ (the panel's figure) and the channels that differ most (what makes the masks
    task-specific). ``differences``: :func:`all_differences` of these masks, when already found."""
    names = list(masks)
    if not names:
        return ""
    differences = all_differences(masks) if differences is None else differences
    head = "| stage | channels | " + " | ".join(f"mean mask: {n}" for n in names)
    sep = "|---|---|" + "---|" * len(names)
    if len(names) > 1:
        head += " | mean \\|difference\\| | most task-specific channels"
        sep += "---|---|"
    rows = [head + " |", sep]
    for part in PARTS:
        for level in range(1, len(masks[names[0]][part]) + 1):
            stage = stage_at_level(masks, part, level)
            ms = [masks[n][part][stage] for n in names]
            cells = [f"{part} {level_label(level)}", str(ms[0].shape[0])] + [
                f"{m.mean(dtype=np.float64) * _difference_scale(m):.3f}" for m in ms]
            if len(names) > 1:
                per_channel = differences[(part, level)]
                best = np.argsort(-per_channel)[:top]
                cells += [f"{per_channel.mean():.3f}", ", ".join(f"{c + 1} ({per_channel[c]:.2f})" for c in best)]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
