"""Geometric pseudo-depth for street photos that have labels but no depth (CamVid).

A camera at height ``h`` above a flat road, looking level, sees the ground point at image row
``r`` (below the horizon row ``r_h``) at distance ``z = f h / (r - r_h)``, with ``f`` the focal
length in pixels. In the CityScapes convention of inverse depth ``v = 1.85 / z``:

    v(r) = 1.85 (r - r_h) / (f h)                                    (flat pixels: road, pavement)

A vertical surface standing on the ground (a facade, a pole, a person, the side of a car) has
the same depth all along an image column, so every pixel of a vertical run of one category
whose lowest pixel touches a flat pixel gets the ground's inverse depth at that contact row.
Runs that end at the image border or on something else get no target, with one exception: a
facade or a tree whose foot is hidden by a car or a person (its run ends on the object) gets the
depth of the same facade or tree where, in the same row, its foot is visible (the nearest such
pixel left or right, within one unbroken stretch of that class), if that is farther than the
object that hides it: so the training targets say that what stands behind an object is farther
than the object, and depth jumps at the object's outline. Sky gets :data:`SKY_INVERSE_DEPTH`, a value below that of
any surface the generated scenes contain, so the network learns that sky is the farthest thing
in view. All other pixels stay 0 (invalid), as in the CityScapes release.

What is measured and what is assumed: the horizon row is estimated from the labels themselves
(:func:`estimate_horizon`: the highest road pixels of the training frames); the camera height
and field of view are not known for CamVid, so the middle of the ranges the generated scenes
draw from (1.2-1.7 m, 42-75 degrees) is assumed. The targets are therefore right in their
ordering (nearer = larger) and only roughly right in scale.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from mtan.tasks import CITYSCAPES_INVERSE_DEPTH_SCALE

#: CityScapes 7 categories (``mtan.tasks.CITYSCAPES_7``).
FLAT, SKY = 0, 4
#: Inverse depth used as the target for sky pixels in training (1.85 / 1e-4 = 18.5 km: farther than
#: any surface of a generated scene, whose ground ends at 2 km = 9.25e-4).
SKY_INVERSE_DEPTH = 1e-4
#: The inverse-depth convention (``v = 1.85 / metres``, from :mod:`mtan.tasks`) and its clip
#: (CityScapes never stores more).
INVERSE_DEPTH_SCALE = CITYSCAPES_INVERSE_DEPTH_SCALE
MAX_INVERSE_DEPTH = 0.49
#: Assumed camera: the middle of the generated scenes' ranges (see the module docstring).
CAMERA_HEIGHT_M = 1.45
HFOV_DEG = 58.5
#: Rows closer than this fraction of the image height to the horizon get no target (too far to
#: be told apart, and the horizon estimate is uncertain by a few rows).
HORIZON_MARGIN = 0.02
#: CityScapes 7 categories that can hide the foot of what stands behind them (human, vehicle), and
#: those that get the depth of their visible foot behind them (construction, nature).
OCCLUDERS, BEHIND = (5, 6), (1, 3)


def ground_scale(height: int, width: int, camera_height: float = CAMERA_HEIGHT_M, hfov_deg: float = HFOV_DEG) -> float:
    """``k`` in ``v = k (r - r_h)``: 1.85 / (f h) with f in pixels of a ``height x width`` frame."""
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return INVERSE_DEPTH_SCALE / (f * camera_height)


def ground_plane_depth(categories: np.ndarray, horizon_row: float, scale: float,
                       sky_value: float | None = SKY_INVERSE_DEPTH) -> np.ndarray:
    """Pseudo inverse depth (H x W float32, 0 = no target) from a CityScapes-7 label map.

    ``horizon_row``: the horizon in rows of this map (may be fractional); ``scale``: ``k`` of
    :func:`ground_scale` for this map's size; ``sky_value``: the sky target (None: no target).
    """
    lab = np.asarray(categories)
    if lab.ndim != 2:
        raise ValueError(f"expected an H x W label map, got shape {lab.shape}")
    h, w = lab.shape
    rows = np.arange(h, dtype=np.float64) + 0.5  # pixel centres
    ground = scale * (rows - horizon_row)
    ground[rows - horizon_row < HORIZON_MARGIN * h] = 0.0
    ground = np.clip(ground, 0.0, MAX_INVERSE_DEPTH).astype(np.float32)

    depth = np.zeros((h, w), dtype=np.float32)
    flat = lab == FLAT
    depth[flat] = np.broadcast_to(ground[:, None], (h, w))[flat]

    # lowest row of each pixel's vertical run of one label (scan upwards, one row at a time)
    bottom = np.empty((h, w), dtype=np.int64)
    bottom[h - 1] = h - 1
    for r in range(h - 2, -1, -1):
        bottom[r] = np.where(lab[r] == lab[r + 1], bottom[r + 1], r)
    contact = np.minimum(bottom + 1, h - 1)
    cols = np.broadcast_to(np.arange(w), (h, w))
    standing = (bottom < h - 1) & (lab[contact, cols] == FLAT)
    objects = (lab >= 0) & ~flat & (lab != SKY) & standing
    depth[objects] = ground[contact[objects]]

    _fill_behind_objects(depth, lab, contact, cols, h)
    if sky_value is not None:
        depth[lab == SKY] = sky_value
    return depth


def _fill_behind_objects(depth: np.ndarray, lab: np.ndarray, contact: np.ndarray, cols: np.ndarray, h: int) -> None:
    """In place: pixels of a :data:`BEHIND` class whose vertical run ends on an :data:`OCCLUDERS`
    pixel get the target of the nearest pixel of their class in the same row and the same unbroken
    stretch that has one, when it is farther than the occluder (see the module docstring)."""
    hidden = np.isin(lab, BEHIND) & np.isin(lab[contact, cols], OCCLUDERS) & (depth == 0)
    if not hidden.any():
        return
    occluder = depth[contact, cols]  # the occluder's own target below each pixel (0 if it has none)
    w = lab.shape[1]
    index = np.broadcast_to(np.arange(w), lab.shape)
    # stretches: a new one starts wherever the class changes along the row
    start = np.concatenate([np.ones((h, 1), bool), lab[:, 1:] != lab[:, :-1]], axis=1)
    start_at = np.maximum.accumulate(np.where(start, index, 0), axis=1)
    end = np.concatenate([lab[:, 1:] != lab[:, :-1], np.ones((h, 1), bool)], axis=1)
    end_at = np.flip(np.minimum.accumulate(np.flip(np.where(end, index, w - 1), axis=1), axis=1), axis=1)
    source = (depth > 0) & np.isin(lab, BEHIND)
    left = np.maximum.accumulate(np.where(source, index, -1), axis=1)
    right = np.flip(np.minimum.accumulate(np.flip(np.where(source, index, w), axis=1), axis=1), axis=1)
    left_ok = (left >= start_at) & (left >= 0)
    right_ok = (right <= end_at) & (right < w)
    use_left = left_ok & (~right_ok | (index - left <= right - index))
    pick = np.where(use_left, left, np.where(right_ok, right, -1))
    rows = np.broadcast_to(np.arange(h)[:, None], lab.shape)
    value = np.where(pick >= 0, depth[rows, np.clip(pick, 0, w - 1)], 0.0)
    ok = hidden & (pick >= 0) & (value > 0) & (occluder > 0) & (value < occluder)
    depth[ok] = value[ok]


@lru_cache(maxsize=8)
def estimate_horizon(label_folder: str, road_value: int, percentile: float = 5.0) -> float:
    """The horizon as a fraction of the image height, from the labels of a fixed camera.

    For every label map in ``label_folder`` (PNG), the highest row of ``road_value`` pixels in
    the middle third of the columns is where the visible road ends: at the horizon on a straight
    open road, lower when a car or a bend hides it. A low percentile over all frames estimates
    the horizon; frames without road in the middle are skipped.
    """
    from PIL import Image

    tops = []
    paths = sorted(Path(label_folder).glob("*.png"))
    for path in paths:
        lab = np.asarray(Image.open(path))
        h, w = lab.shape[:2]
        middle = lab[:, w // 3: 2 * w // 3] == road_value
        rows = np.flatnonzero(middle.any(axis=1))
        if len(rows):
            tops.append(rows[0] / h)
    if len(tops) < 10:
        raise ValueError(f"{label_folder}: only {len(tops)} of {len(paths)} label maps show road in the middle of "
                         "the frame; at least 10 are needed to estimate the horizon for pseudo-depth.")
    return float(np.percentile(tops, percentile))
