"""Ground-plane pseudo-depth for CamVid, sky targets, and the depth-ordering metric."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mtan.data import build_dataset
from mtan.data.common import DatasetError
from mtan.data.pseudo_depth import (HORIZON_MARGIN, MAX_INVERSE_DEPTH, SKY_INVERSE_DEPTH, estimate_horizon,
                                    ground_plane_depth, ground_scale)
from mtan.data.synthetic_dataset import SyntheticDataset, synthetic_dataset
from mtan.train import PRESETS, TrainConfig
from mtan.train.datasets import builder_options
from mtan.metrics import DepthOrderMetric, average_ranks, spearman

FLAT, CONSTRUCTION, OBJECT, NATURE, SKY, HUMAN, VEHICLE = range(7)


def street_labels(h=40, w=12):
    """Sky above row 16, flat below; a pole standing on the road in column 2, a building resting
    on a car in column 5, a car cut by the bottom border in column 8, void in column 10."""
    lab = np.full((h, w), FLAT, dtype=np.int64)
    lab[:16] = SKY
    lab[10:30, 2] = OBJECT            # pole, stands on flat at row 30
    lab[8:20, 5] = CONSTRUCTION       # building ...
    lab[20:28, 5] = VEHICLE           # ... on a car that stands on flat at row 28
    lab[25:, 8] = VEHICLE             # reaches the bottom border: no contact row
    lab[18:, 10] = -1                 # void
    return lab


def test_ground_plane_depth_geometry():
    lab = street_labels()
    h, w = lab.shape
    horizon, k = 15.0, 0.02
    depth = ground_plane_depth(lab, horizon, k)
    rows = np.arange(h) + 0.5
    expected_ground = np.clip(k * (rows - horizon), 0, MAX_INVERSE_DEPTH)
    expected_ground[rows - horizon < HORIZON_MARGIN * h] = 0
    flat = lab == FLAT
    # flat pixels: the level-ground formula, growing towards the bottom of the image
    np.testing.assert_allclose(depth[flat], np.broadcast_to(expected_ground[:, None], (h, w))[flat], rtol=1e-6)
    column = depth[30:, 0]
    assert np.all(np.diff(column) > 0)
    # the pole gets the ground depth of its contact row (30), all along its height
    np.testing.assert_allclose(depth[10:30, 2], expected_ground[30], rtol=1e-6)
    # the car in column 5 stands on the road (row 28); the building above it touches the car: no target
    np.testing.assert_allclose(depth[20:28, 5], expected_ground[28], rtol=1e-6)
    assert np.all(depth[16:20, 5] == 0) and np.all(depth[8:16, 5] == 0)
    # cut by the bottom border: no contact, no target; void: no target
    assert np.all(depth[25:, 8] == 0) and np.all(depth[18:, 10] == 0)
    # sky: the far target, below every surface value
    assert np.all(depth[:8, :] == SKY_INVERSE_DEPTH)
    assert SKY_INVERSE_DEPTH < depth[depth > SKY_INVERSE_DEPTH].min()
    # no sky target when asked for none
    assert np.all(ground_plane_depth(lab, horizon, k, sky_value=None)[lab == SKY] == 0)


def test_ground_plane_depth_clips_and_checks_shape():
    lab = np.zeros((20, 4), dtype=np.int64)
    depth = ground_plane_depth(lab, 0.0, 1.0)
    assert depth.max() == pytest.approx(MAX_INVERSE_DEPTH)
    with pytest.raises(ValueError, match="H x W"):
        ground_plane_depth(lab[None], 0.0, 1.0)


def test_ground_scale_follows_the_pinhole_model():
    # f = (W / 2) / tan(hfov / 2); 90 degrees -> f = W / 2
    assert ground_scale(100, 200, camera_height=2.0, hfov_deg=90.0) == pytest.approx(1.85 / (100 * 2.0))
    # a wider image (same field of view) has a longer focal length in pixels: smaller step per row
    assert ground_scale(100, 400) == pytest.approx(ground_scale(100, 200) / 2)


def test_estimate_horizon_from_road_labels(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    for i in range(20):  # road (value 3) from row 50 + i down, 100 rows
        lab = np.full((100, 60), 1, dtype=np.uint8)
        lab[50 + i:, :] = 3
        Image.fromarray(lab).save(folder / f"f{i:02d}.png")
    assert estimate_horizon(str(folder), road_value=3, percentile=0.0) == pytest.approx(0.50)
    assert estimate_horizon(str(folder), road_value=3, percentile=50.0) == pytest.approx(0.595)
    empty = tmp_path / "no_road"
    empty.mkdir()
    for i in range(3):
        Image.fromarray(np.ones((10, 10), np.uint8)).save(empty / f"{i}.png")
    with pytest.raises(ValueError, match="0 of 3 label maps show road"):
        estimate_horizon(str(empty), road_value=3)


def test_camvid_pseudo_depth_on_real_labels(camvid_root):
    ds = build_dataset("camvid", root=camvid_root, split="val", size=(64, 128), pseudo_depth=True)
    assert 0.4 < ds.horizon < 0.6  # CamVid's camera looks roughly level
    plain = build_dataset("camvid", root=camvid_root, split="val", size=(64, 128))
    rhos = []
    for i in range(0, len(ds), 10):
        sample, ref = ds[i], plain[i]
        assert torch.equal(sample["semantic"], ref["semantic"]) and torch.equal(sample["image"], ref["image"])
        assert torch.all(ref["depth"] == 0)
        depth, lab = sample["depth"][0], sample["semantic"]
        assert torch.all(depth[lab == SKY] == SKY_INVERSE_DEPTH)
        assert torch.all(depth[lab == -1] == 0)
        ground = (lab == FLAT) & (depth > 0)
        assert ground.sum() > 50
        rows = torch.arange(64).view(-1, 1).expand(64, 128)
        rhos.append(spearman(depth[ground], rows[ground].double()))
    assert min(rhos) > 0.99  # the ground depth is a function of the row alone


def test_camvid_pseudo_depth_needs_depth(camvid_root):
    with pytest.raises(ValueError, match="pseudo_depth=True needs depth=True"):
        build_dataset("camvid", root=camvid_root, split="val", depth=False, pseudo_depth=True)


def test_camvid_pseudo_depth_without_road_is_a_clear_error(tmp_path):
    root = tmp_path / "camvid"
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / split / "images" / f"f{i}.jpg")
            Image.fromarray(np.full((32, 48), 1, np.uint8)).save(root / split / "labels" / f"f{i}.png")
    with pytest.raises(DatasetError, match="camvid pseudo_depth: .*show road"):
        build_dataset("camvid", root=root, split="val", pseudo_depth=True)


def test_synthetic_sky_depth_fills_only_sky():
    plain = SyntheticDataset("val", size=(32, 64), num_frames=2)
    filled = SyntheticDataset("val", size=(32, 64), num_frames=2, sky_depth=SKY_INVERSE_DEPTH)
    for i in range(2):
        a, b = plain[i], filled[i]
        sky = a["semantic"] == SKY
        assert sky.any() and torch.all(a["depth"][0][sky] == 0)
        assert torch.all(b["depth"][0][sky] == SKY_INVERSE_DEPTH)
        assert torch.equal(a["depth"][0][~sky], b["depth"][0][~sky])
    with pytest.raises(ValueError, match="sky_depth must be a small positive"):
        SyntheticDataset("val", size=(32, 64), num_frames=1, sky_depth=0.5)
    with pytest.raises(ValueError, match="not to a written release"):
        synthetic_dataset(root="somewhere", split="val", sky_depth=SKY_INVERSE_DEPTH)


def test_pseudo_depth_reaches_the_training_split_only():
    config = TrainConfig.from_flags(data="synthetic+camvid", pseudo_depth=True)
    assert builder_options(config, "camvid", "train")["pseudo_depth"] is True
    assert builder_options(config, "synthetic", "train")["sky_depth"] == SKY_INVERSE_DEPTH
    assert "pseudo_depth" not in builder_options(config, "camvid", "val")
    assert "sky_depth" not in builder_options(config, "synthetic", "val")
    assert "pseudo_depth" not in builder_options(TrainConfig.from_flags(data="synthetic+camvid"), "camvid", "train")
    with pytest.raises(ValueError, match="--pseudo-depth .*camvid and synthetic"):
        TrainConfig.from_flags(data="cityscapes", pseudo_depth=True)
    demo = PRESETS["demo"]
    assert demo["data"] == "synthetic+camvid" and demo["pseudo_depth"] and demo["width"] <= 0.25
    assert demo["init_from"] == PRESETS["demo-pretrain"]["out"] and PRESETS["demo-pretrain"]["pseudo_depth"]


def test_average_ranks_and_spearman():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    y = torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])
    d2 = sum((a - b) ** 2 for a, b in [(0, 1), (1, 0), (2, 3), (3, 2), (4, 4)])
    assert spearman(x, y) == pytest.approx(1 - 6 * d2 / (5 * (25 - 1)))  # no ties: the textbook formula
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, torch.ones(5)) != spearman(x, torch.ones(5))  # constant: nan
    # ties: Pearson of the average ranks [0,1,2,3] and [0,1.5,1.5,3]
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 20, 40])) == pytest.approx(
        4.5 / (5 * 4.5) ** 0.5)


def test_depth_order_metric():
    h, w = 20, 10
    lab = torch.full((h, w), FLAT)
    lab[:8] = SKY
    lab[6:12, :3] = CONSTRUCTION
    rows = torch.arange(h, dtype=torch.float32).view(-1, 1).expand(h, w)
    good = (rows / h * 0.4)[None, None]          # ground recedes upwards, sky the smallest
    bad = (0.4 - rows / h * 0.4)[None, None]     # upside down: sky the largest
    metric = DepthOrderMetric(7, min_pixels=5)
    metric.update(torch.cat([good, bad]), torch.stack([lab, lab]))
    out = metric.compute()
    assert out["ground_row_spearman"] == pytest.approx(0.0, abs=1e-9)  # +1 and -1
    assert out["sky_farthest"] == pytest.approx(0.5)
    assert out["images_ground"] == 2 and out["images_sky"] == 2
    metric.reset()
    metric.update(good, lab[None])
    assert metric.compute()["ground_row_spearman"] == pytest.approx(1.0)
    assert metric.compute()["sky_farthest"] == 1.0
    metric.reset()
    none = metric.compute()
    assert none["ground_row_spearman"] != none["ground_row_spearman"]  # no image qualified: nan


def test_what_stands_behind_a_car_gets_the_depth_of_its_visible_foot():
    """A facade whose foot a nearer car hides takes, row by row, the depth of the same facade where
    its foot is visible: farther than the car, so the targets jump at the car's outline. A facade
    that would come out nearer than the car in front of it gets nothing."""
    lab = np.full((40, 20), FLAT, dtype=np.int64)
    lab[:10] = SKY
    lab[10:30, :] = CONSTRUCTION              # a facade standing on the pavement at row 30
    lab[22:35, 8:12] = VEHICLE                # a car in front of it, standing at row 35
    lab[12:30, 15:17] = NATURE                # a tree cut into the facade: a stretch of its own
    depth = ground_plane_depth(lab, 15.0, 0.02)
    facade, car = depth[25, 0], depth[30, 9]
    assert 0 < facade < car
    np.testing.assert_allclose(depth[10:22, 8:12], facade)      # above the car: the facade's depth
    np.testing.assert_allclose(depth[22:35, 8:12], car)         # the car: its own contact depth
    far = lab.copy()                           # a car whose own foot is hidden (no target of its own):
    far[22:29, 8:12] = VEHICLE                 # nothing is known of what it hides
    far[29:35, 8:12] = CONSTRUCTION
    assert np.all(ground_plane_depth(far, 15.0, 0.02)[10:22, 8:12] == 0)
