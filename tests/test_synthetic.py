"""Tests of the procedural street generator (mtan.data.synthetic)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtan.data import synthetic
from mtan.data.synthetic.raycast import _camera_rays as camera_rays
from mtan.data.synthetic.street import _build_scene as build_scene
from mtan.data.synthetic import (FLAT, MAX_INVERSE_DEPTH, NUM_CLASSES, SKY, generate, render_frame,
                                 write_release)

REPO = Path(__file__).resolve().parents[1]


def _spearman(a, b) -> float:
    """Rank correlation (ties broken by order; fine for the many distinct values used here)."""
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def frames():
    """50 small frames, shared by the tests that look at labels and depth."""
    return generate(50, seed=0, height=64, width=128)


def test_render_frame_types_and_shapes():
    fr = render_frame(0, 0, 40, 72)
    assert fr["image"].shape == (40, 72, 3) and fr["image"].dtype == np.uint8
    assert fr["label"].shape == (40, 72) and fr["label"].dtype in (np.int8, np.int64)
    assert fr["depth"].shape == (40, 72) and fr["depth"].dtype == np.float32
    assert fr["label"].min() >= 0 and fr["label"].max() < NUM_CLASSES
    assert 0 <= fr["depth"].min() and fr["depth"].max() <= MAX_INVERSE_DEPTH
    assert fr["image"].std() > 10  # a picture, not a flat colour


def test_deterministic_by_seed_and_index():
    a = render_frame(3, 5, 48, 96)
    b = render_frame(3, 5, 48, 96)
    for key in ("image", "label", "depth"):
        np.testing.assert_array_equal(a[key], b[key])
    other_seed = render_frame(4, 5, 48, 96)
    other_index = render_frame(3, 6, 48, 96)
    other_stream = render_frame(3, 5, 48, 96, stream=1)
    for other in (other_seed, other_index, other_stream):
        assert not np.array_equal(a["image"], other["image"])
        assert not np.array_equal(a["depth"], other["depth"])


def test_scene_does_not_depend_on_the_output_size():
    """The same street at two sizes: nearest-neighbour downsampled labels mostly agree."""
    big = render_frame(1, 2, 96, 192)["label"]
    small = render_frame(1, 2, 48, 96)["label"]
    assert np.mean(big[1::2, 1::2] == small) > 0.9


def test_generate_stacks_frames_and_matches_render_frame():
    out = generate(3, seed=2, height=32, width=48, start=4)
    assert out["images"].shape == (3, 32, 48, 3) and out["images"].dtype == np.uint8
    assert out["labels"].shape == (3, 32, 48) and out["labels"].dtype == np.int8
    assert out["depths"].shape == (3, 32, 48) and out["depths"].dtype == np.float32
    single = render_frame(2, 5, 32, 48)
    np.testing.assert_array_equal(out["images"][1], single["image"])
    np.testing.assert_array_equal(out["labels"][1], single["label"])
    np.testing.assert_array_equal(out["depths"][1], single["depth"])


def test_generate_with_worker_processes_gives_the_same_frames():
    one = generate(4, seed=7, height=24, width=40, workers=1)
    two = generate(4, seed=7, height=24, width=40, workers=2)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])


def test_all_seven_categories_appear(frames):
    present = {c for c in range(NUM_CLASSES) if (frames["labels"] == c).any()}
    assert present == set(range(NUM_CLASSES))
    # Not just one stray pixel each: every category is in several frames.
    per_frame = [(frames["labels"] == c).any(axis=(1, 2)).sum() for c in range(NUM_CLASSES)]
    assert min(per_frame) >= 5, per_frame


def test_street_layout_is_plausible(frames):
    """Sky is at the top of the image and the road at the bottom, as seen from a car."""
    labels = frames["labels"]
    h = labels.shape[1]
    sky_top = (labels[:, : h // 4] == SKY).mean()
    sky_bottom = (labels[:, 3 * h // 4:] == SKY).mean()
    flat_bottom = (labels[:, 3 * h // 4:] == FLAT).mean()
    assert sky_bottom == 0
    assert sky_top > 0.05
    assert flat_bottom > 0.4


def test_depth_sky_is_zero_and_everything_else_positive(frames):
    sky = frames["labels"] == SKY
    assert sky.any()
    assert (frames["depths"][sky] == 0).all()
    assert (frames["depths"][~sky] > 0).all()
    assert frames["depths"].max() <= MAX_INVERSE_DEPTH


def test_road_inverse_depth_decreases_towards_the_horizon(frames):
    """On the ground, lower image rows are nearer (larger inverse depth)."""
    checked = 0
    for label, depth in zip(frames["labels"][:12], frames["depths"][:12]):
        rows = np.nonzero(label == FLAT)[0]
        values = depth[label == FLAT]
        unclipped = values < MAX_INVERSE_DEPTH  # the nearest road is clipped to a constant
        if unclipped.sum() < 200:
            continue
        checked += 1
        assert _spearman(rows[unclipped], values[unclipped]) > 0.9
        # Row medians never increase upwards (allowing for small texture-free noise: none here).
        med = [np.median(depth[r][label[r] == FLAT]) for r in np.unique(rows)]
        assert np.all(np.diff(med) >= -0.02 * MAX_INVERSE_DEPTH)
    assert checked >= 8


def test_inverse_depth_matches_the_camera_geometry():
    """Ground pixels: 1.85 / v is the distance along the optical axis to the plane y = 0."""
    seed, index, h, w = 5, 1, 60, 100
    fr = render_frame(seed, index, h, w)
    scene = build_scene(np.random.default_rng([seed, index]))
    cam = scene.camera
    rays = camera_rays(cam, h, w).reshape(h, w, 3)
    ground = (fr["label"] == FLAT) & (fr["depth"] < MAX_INVERSE_DEPTH) & (rays[..., 1] < 0)
    z = synthetic.INVERSE_DEPTH_SCALE / fr["depth"][ground]
    # Road pixels lie on y = 0 (sidewalks a kerb higher): camera height = -z * ray_y.
    heights = -z * rays[..., 1][ground]
    assert np.median(heights) == pytest.approx(cam.origin[1], abs=0.02)


def test_write_release_layout(tmp_path):
    root = write_release(tmp_path / "synth", n_train=3, n_val=2, height=24, width=40, seed=1)
    for split, n in (("train", 3), ("val", 2)):
        for field in ("image", "label_7", "depth"):
            names = sorted(p.name for p in (root / split / field).iterdir())
            assert names == sorted(f"{i}.npy" for i in range(n)), (split, field)
        for i in range(n):
            image = np.load(root / split / "image" / f"{i}.npy")
            label = np.load(root / split / "label_7" / f"{i}.npy")
            depth = np.load(root / split / "depth" / f"{i}.npy")
            assert image.shape == (24, 40, 3) and image.dtype == np.float32
            assert label.shape == (24, 40) and label.dtype == np.float32
            assert depth.shape == (24, 40, 1) and depth.dtype == np.float32
            assert 0 <= image.min() and image.max() <= 1
            assert set(np.unique(label)) <= set(range(NUM_CLASSES))
            assert 0 <= depth.min() and depth.max() <= MAX_INVERSE_DEPTH
            np.testing.assert_array_equal(label == SKY, depth[..., 0] == 0)
    # Train and val are different frames; train frame i is render_frame(seed, i).
    train0 = np.load(root / "train" / "image" / "0.npy")
    val0 = np.load(root / "val" / "image" / "0.npy")
    assert not np.array_equal(train0, val0)
    np.testing.assert_allclose(train0, render_frame(1, 0, 24, 40)["image"] / 255.0, atol=1e-6)


def test_write_release_resumes_and_refuses_other_settings(tmp_path):
    root = write_release(tmp_path / "synth", n_train=2, n_val=1, height=16, width=24)
    kept = root / "train" / "image" / "0.npy"
    lost = root / "train" / "depth" / "1.npy"
    before = kept.stat().st_mtime_ns
    lost.unlink()
    write_release(root, n_train=3, n_val=1, height=16, width=24)
    assert kept.stat().st_mtime_ns == before  # complete frames are not rendered again
    assert lost.exists() and (root / "train" / "label_7" / "2.npy").exists()
    with pytest.raises(ValueError, match="already holds"):
        write_release(root, n_train=1, n_val=0, height=32, width=24)


def _run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "mtan.data.synthetic", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_release_and_preview(tmp_path):
    out = tmp_path / "release"
    png = tmp_path / "grid.png"
    res = _run_cli("--out", str(out), "--train", "2", "--val", "1", "--size", "24x40", "--seed", "3",
                   "--preview", str(png), "--preview-frames", "2", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (out / "train" / "depth" / "1.npy").exists() and (out / "val" / "label_7" / "0.npy").exists()
    assert np.load(out / "train" / "depth" / "0.npy").shape == (24, 40, 1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_preview_alone(tmp_path):
    png = tmp_path / "only.png"
    res = _run_cli("--preview", str(png), "--preview-frames", "1", "--size", "16x32", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert png.stat().st_size > 1000


def test_cli_bad_size_is_explained(tmp_path):
    res = _run_cli("--preview", "x.png", "--size", "128by256", cwd=tmp_path)
    assert res.returncode != 0
    assert "expected HEIGHTxWIDTH" in res.stderr and "128by256" in res.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, message", [
    (("--preview", "x.png", "--size", "0x256"), "at least 8"),
    (("--out", "d", "--train", "-3"), "must be >= 0"),
    (("--out", "d", "--train", "two"), "expected a whole number"),
    (("--out", "d", "--train", "1", "--workers", "0"), "must be >= 1"),
    ((), "nothing to do"),
    (("--out", "d"), "--train N and/or --val M"),
])
def test_cli_bad_arguments(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        synthetic.main(list(args))
    assert exc.value.code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "x.png").exists()


def test_render_all_in_workers_gives_the_same_frames():
    from mtan.data.synthetic_dataset import SyntheticDataset

    parallel = SyntheticDataset("train", size=(32, 64), num_frames=5, seed=3)
    parallel[1]  # one frame already cached: render_all fills in the others
    parallel.render_all(2)
    assert sorted(parallel._cache) == [0, 1, 2, 3, 4]
    serial = SyntheticDataset("train", size=(32, 64), num_frames=5, seed=3)
    for i in range(5):
        a, b = parallel[i], serial[i]
        assert all(torch.equal(a[k], b[k]) for k in ("image", "semantic", "depth"))
