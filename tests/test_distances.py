"""What is in front of the camera: regions of the segmentation with their distance from the depth."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mtan.serve.distances import at_point, describe, objects_ahead, regions, spoken
from mtan.serve.prediction import Prediction
from mtan.tasks import CITYSCAPES_INVERSE_DEPTH_SCALE, preset_tasks, tasks_from_config

TASKS = tasks_from_config(preset_tasks("cityscapes-7"))
CLASSES = TASKS[0].class_set.classes


def street(size=(120, 240), depth_size=(60, 120)) -> Prediction:
    """Road at 30 m, a car on the right at 8 m, a person on the left at 20 m, a tiny person far
    away (too small to list), sky at the top; labels at the photo's size, depth at half of it."""
    H, W = size
    labels = np.full((H, W), CLASSES.index("flat"), np.uint8)
    labels[:20] = CLASSES.index("sky")
    labels[60:100, 170:230] = CLASSES.index("vehicle")
    labels[40:110, 20:40] = CLASSES.index("human")
    labels[50:51, 120:121] = CLASSES.index("human")
    metres = np.full((H, W), 30.0)
    metres[60:100, 170:230] = 8.0
    metres[40:110, 20:40] = 20.0
    h, w = depth_size
    small = metres[:: H // h, :: W // w]
    depth = (CITYSCAPES_INVERSE_DEPTH_SCALE / small).astype(np.float32)
    depth[: 20 * h // H] = 0.0  # sky: no depth
    return Prediction(photo=Image.new("RGB", (W, H)), stem="t", processing_size=depth_size, tasks=list(TASKS),
                      labels={"semantic": labels}, depth={"depth": depth})


def test_regions_are_the_connected_parts_of_a_mask():
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[1:3, 1:3] = True         # one square
    mask[5:7, 6:9] = True         # another
    mask[3, 3] = True             # touches the first square at a corner: the same region (8-neighbours)
    ids = regions(mask)
    assert (ids[~mask] == 0).all() and (ids[mask] > 0).all()
    assert len(torch.unique(ids[mask])) == 2 and ids[3, 3] == ids[1, 1] != ids[5, 6]


def test_vehicles_and_people_nearest_first_with_their_distance_and_place():
    found = objects_ahead(street())
    assert [(f["class"], f["where"]) for f in found] == [("vehicle", "right"), ("human", "left")]
    assert found[0]["metres"] == pytest.approx(8.0, rel=0.01) and found[1]["metres"] == pytest.approx(20.0, rel=0.01)
    left, top, right, bottom = found[0]["box"]
    assert abs(left - 170) <= 4 and abs(top - 60) <= 4 and abs(right - 230) <= 4 and abs(bottom - 100) <= 4
    text = describe(found)
    assert "- vehicle, right, about 8 m\n- human, left, about 20 m" in text and "approximate" in text
    assert describe([]).startswith("**In front of you:** no vehicle or person")


def test_a_point_reads_its_class_and_distance():
    pred = street()
    assert at_point(pred, 200, 80) == "At (200, 80): vehicle, about 8 m."
    assert at_point(pred, 100, 5) == "At (100, 5): sky."
    assert at_point(pred, 1000, 5) == ""


def test_distances_as_spoken():
    assert [spoken(m) for m in (0.4, 7.6, 12.0, 43.0, 250.0, float("inf"))] == [
        "about 1 m", "about 8 m", "about 10 m", "about 45 m", "over 200 m away", "over 200 m away"]


def test_a_model_without_depth_lists_nothing():
    pred = street()
    pred.tasks = [TASKS[0]]
    assert objects_ahead(pred) is None and describe(None) == ""


def test_the_colour_bar_ends_at_a_real_distance_when_the_sky_is_left_out():
    """The depth view's colour range leaves out the pixels called sky (no distance there): the far
    end of the colour bar is a distance in metres, not "> 1 km"."""
    from mtan.serve.views import depth_view, display_limits

    pred = street()
    (lo, hi), left_out = display_limits(pred, TASKS[1])
    assert left_out and lo > 0
    _, bar = depth_view(pred, "inferno")
    assert "> 1 km" not in bar and "≈ 30 m" in bar and "without its sky" in bar
    pred.labels["semantic"][:] = CLASSES.index("sky")  # nothing but sky: every pixel counts again
    assert display_limits(pred, TASKS[1])[1] is False


def test_a_clip_frame_carries_a_caption_line_of_the_nearest_objects():
    """Each clip frame: the nearest vehicles and people in one line along the bottom (frames too
    low for it have none)."""
    import torch

    from mtan.serve.distances import caption
    from mtan.serve.video import VideoPainter

    tasks = tasks_from_config(preset_tasks("cityscapes-7"))
    sem, dep = tasks
    vehicle = sem.class_set.classes.index("vehicle")
    h, w = 120, 160
    logits = torch.full((1, 7, h, w), -5.0)
    logits[0, 0] = 5.0                    # flat everywhere ...
    logits[0, vehicle, 40:100, 100:150] = 20.0  # ... and a vehicle on the right
    depth = torch.full((1, 1, h, w), CITYSCAPES_INVERSE_DEPTH_SCALE / 8.0)  # 8 m away
    photo = np.full((h, w, 3), 90, np.uint8)
    painter = VideoPainter(tasks, "photo | segmentation | depth", "inferno", 0.5)
    framed = painter(photo, {"semantic": logits[0].softmax(0)[None][0], "depth": depth[0]})
    painter.captions = False
    plain = painter(photo, {"semantic": logits[0].softmax(0)[None][0], "depth": depth[0]})
    assert framed.shape == plain.shape == (h, 3 * w, 3)
    changed = np.abs(framed.astype(int) - plain.astype(int)).sum(2) > 0
    rows = np.flatnonzero(changed.any(1))
    assert rows.min() >= h - 30 and rows.size > 0  # a band along the bottom, nothing above it
    assert caption([{"class": "vehicle", "where": "right", "metres": 8.04}]) == "vehicle right ~8 m"
    small, outputs = np.full((40, 60, 3), 90, np.uint8), {"semantic": logits[0, :, :40, :].softmax(0),
                                                          "depth": depth[0, :, :40, :]}
    low, bare = (VideoPainter(tasks, "photo | segmentation | depth", "inferno", 0.5) for _ in range(2))
    bare.captions = False
    assert np.array_equal(low(small, outputs), bare(small, outputs))  # too low for a caption
