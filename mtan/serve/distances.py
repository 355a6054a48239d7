"""What is in front of the camera, and how far: both tasks read at once.

The segmentation says where each vehicle and person is, the depth how far away: each region of
those classes (connected pixels of one class, small ones dropped) gets the median distance of its
pixels in metres and a place in the picture (left, ahead, right). Distances come from the depth
map's approximate metres (``DepthTask.to_metres``): a rough guide, not a measurement.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: Classes listed, where the model's class set has them (CityScapes categories; NYUv2 has none of them).
LISTED = ("vehicle", "human")
MIN_SHARE = 0.002     # regions smaller than this share of the picture are dropped
MAX_ITEMS = 8
GRID = (64, 128)      # regions are found on about this many pixels (h, w): cheap, and fine enough to list them
NOTE = "Distances are approximate: read off the depth map, which the network estimates from one photo."


def regions(mask: torch.Tensor, max_rounds: int = 4096) -> torch.Tensor:
    """Connected regions (8-neighbours) of a boolean h x w mask: an int tensor, 0 outside, each
    region one positive number. Every pixel takes the largest number around it until none changes."""
    h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w) * mask
    keep = mask.view(1, 1, h, w).float()
    for _ in range(max_rounds):
        grown = F.max_pool2d(ids, 3, stride=1, padding=1) * keep
        if torch.equal(grown, ids):
            break
        ids = grown
    return ids.view(h, w).to(torch.int64)


def where_in_view(x: float) -> str:
    """``x``: the region's centre as a share of the width."""
    return "left" if x < 1 / 3 else "right" if x > 2 / 3 else "ahead"


def spoken(metres: float) -> str:
    """A distance as the page says it: "about 8 m", "about 40 m", "over 200 m away"."""
    if not math.isfinite(metres) or metres > 200:
        return "over 200 m away"
    if metres < 10:
        return f"about {max(1, round(metres)):d} m"
    return f"about {round(metres / 5) * 5:d} m"


def objects_ahead(pred, listed=LISTED, min_share: float = MIN_SHARE, max_items: int = MAX_ITEMS) -> list[dict] | None:
    """The vehicles and people of a :class:`~mtan.serve.prediction.Prediction`, nearest first: per
    region its class, where it is, its median distance in metres, its share of the picture and its
    box ``[left, top, right, bottom]`` in the photo's pixels. None when the model lacks a
    segmentation or a depth task."""
    sem, dep = pred.first("semantic"), pred.first("depth")
    if sem is None or dep is None:
        return None
    return find_objects(sem, dep, pred.labels[sem.name], pred.depth[dep.name], listed, min_share, max_items)


def find_objects(sem, dep, labels: np.ndarray, full: np.ndarray, listed=LISTED, min_share: float = MIN_SHARE,
                 max_items: int = MAX_ITEMS) -> list[dict]:
    """:func:`objects_ahead` from a segmentation task and its labels (the photo's size) and a
    depth task and its map (the network's size)."""
    H, W = labels.shape
    step = max(1, math.ceil(max(full.shape[0] / GRID[0], full.shape[1] / GRID[1])))
    depth = torch.from_numpy(np.ascontiguousarray(full[::step, ::step], np.float32))  # every step-th pixel
    h, w = depth.shape
    rows = (np.arange(h) * step * H // full.shape[0])[:, None]
    cols = (np.arange(w) * step * W // full.shape[1])[None, :]
    small = torch.from_numpy(np.ascontiguousarray(labels[rows, cols]).astype(np.int64))  # the same pixels' classes
    metres = dep.to_metres(depth.double()).float()
    found = []
    for name in listed:
        if name not in sem.class_set.classes:
            continue
        mask = small == sem.class_set.classes.index(name)
        if int(mask.sum()) < min_share * h * w:
            continue
        ids = regions(mask)
        numbers, counts = torch.unique(ids[ids > 0], return_counts=True)
        for number, count in zip(numbers.tolist(), counts.tolist()):
            if count < min_share * h * w:
                continue
            ys, xs = torch.nonzero(ids == number, as_tuple=True)
            values = metres[ys, xs]
            values = values[torch.isfinite(values)]
            if values.numel() == 0:
                continue
            distance = float(values.median())
            found.append({"class": name, "where": where_in_view((float(xs.float().mean()) + 0.5) / w),
                          "metres": round(distance, 1), "share": round(count / (h * w), 4),
                          "box": [int(xs.min()) * W // w, int(ys.min()) * H // h,
                                  (int(xs.max()) + 1) * W // w, (int(ys.max()) + 1) * H // h]})
    found.sort(key=lambda item: item["metres"])
    return found[:max_items]


def describe(found: list[dict] | None) -> str:
    """The page's lines: "vehicle, ahead, about 8 m", nearest first, and the note on accuracy."""
    if found is None:
        return ""
    if not found:
        return "**In front of you:** no vehicle or person large enough to measure."
    lines = [f"- {item['class']}, {item['where']}, {spoken(item['metres'])}" for item in found]
    return "**In front of you** (nearest first):\n" + "\n".join(lines) + f"\n\n*{NOTE}*"


def at_point(pred, x: int, y: int) -> str:
    """What the network says of the photo's pixel (x, y): its class and its distance."""
    H, W = pred.size
    if not (0 <= x < W and 0 <= y < H):
        return ""
    parts = []
    sem, dep = pred.first("semantic"), pred.first("depth")
    if sem is not None:
        parts.append(sem.class_set.classes[int(pred.labels[sem.name][y, x])])
    if dep is not None:
        depth = pred.depth[dep.name]
        h, w = depth.shape
        value = float(depth[min(h - 1, y * h // H), min(w - 1, x * w // W)])
        metres = float(dep.to_metres(torch.tensor(value, dtype=torch.float64)))
        parts.append("sky" if sem is not None and parts[0] == "sky" else spoken(metres))
    return f"At ({x}, {y}): " + ", ".join(dict.fromkeys(parts)) + "."


def caption(found: list[dict] | None, items: int = 3) -> str:
    """One line for a video frame: the nearest vehicles and people, "vehicle ahead ~8 m · human left ~5 m"."""
    if not found:
        return ""
    return " · ".join(f"{o['class']} {o['where']} ~{max(1, round(o['metres']))} m" if o["metres"] <= 200
                      else f"{o['class']} {o['where']} far" for o in found[:items])
