"""Datasets: the formats on disk, label mappings, mixtures, in-memory mode and validation errors.

Every test writes a tiny dataset in the real format under ``tmp_path`` and checks exact values
after loading. CamVid tests read the real data in ``shared/data/camvid`` and skip without it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtan.data import (DatasetError, InMemoryDataset, MixtureDataset, build_dataset, bytes_per_frame, validate)
from mtan.data.camvid import CamVidDataset
from mtan.data.cityscapes import CityScapesDataset, prepare
from mtan.data.nyuv2 import NYUv2Dataset
from mtan.tasks import preset_tasks

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------
# A fake official CityScapes download: 32x64 frames made of 4x4 blocks, converted to 8x16,
# so that every output pixel comes from exactly one block (nearest resizing).
# --------------------------------------------------------------------------------------

RAW_H, RAW_W, OUT = 32, 64, "8x16"
# labelIds of the 8 x 16 blocks: one row per id below, repeated; hand-checked expectations:
#            id: name         7-class  19-class  2-class
EXPECTED = {7: ("road", 0, 0, 0), 8: ("sidewalk", 0, 1, 0), 9: ("parking", 0, -1, 0),
            11: ("building", 1, 2, 0), 21: ("vegetation", 3, 8, 0), 23: ("sky", 4, 10, 0),
            24: ("person", 5, 11, 1), 26: ("car", 6, 13, 1), 33: ("bicycle", 6, 18, 1),
            0: ("unlabeled", -1, -1, -1), 1: ("ego vehicle", -1, -1, -1), 4: ("static", -1, -1, -1)}
BLOCK_IDS = np.array(list(EXPECTED))  # 12 ids cycling over the 128 blocks
P_VALUES = np.array([0, 1, 257, 32257, 65535, 12345])  # disparity PNG values cycling over the blocks


def block_grid(values: np.ndarray, offset: int = 0) -> np.ndarray:
    """An 8 x 16 grid cycling through ``values``."""
    return values[(np.arange(8 * 16) + offset) % len(values)].reshape(8, 16)


def upsample(grid: np.ndarray) -> np.ndarray:
    return grid.repeat(4, 0).repeat(4, 1)


def write_raw_frame(root: Path, split: str, city: str, base: str, offset: int, camera=None, labels=True):
    for sub in ("leftImg8bit", "gtFine", "disparity", "camera"):
        (root / sub / split / city).mkdir(parents=True, exist_ok=True)
    colour = np.array([10 * offset, 100, 200], dtype=np.uint8)  # constant: exact after any resize
    Image.fromarray(np.broadcast_to(colour, (RAW_H, RAW_W, 3)).copy()).save(
        root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png")
    if labels:
        Image.fromarray(upsample(block_grid(BLOCK_IDS, offset)).astype(np.uint8)).save(
            root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png")
    Image.fromarray(upsample(block_grid(P_VALUES, offset)).astype(np.uint16)).save(
        root / "disparity" / split / city / f"{base}_disparity.png")
    if camera:
        (root / "camera" / split / city / f"{base}_camera.json").write_text(json.dumps(
            {"extrinsic": {"baseline": camera[0]}, "intrinsic": {"fx": camera[1]}}))


@pytest.fixture
def raw_cityscapes(tmp_path):
    """train: aachen (2 frames, one with a camera file), bochum (1 frame + 1 image without labels);
    val: frankfurt (1 frame)."""
    root = tmp_path / "raw"
    write_raw_frame(root, "train", "aachen", "aachen_000000_000019", 0, camera=(0.2, 2000.0))
    write_raw_frame(root, "train", "aachen", "aachen_000001_000019", 1)
    write_raw_frame(root, "train", "bochum", "bochum_000000_000313", 2)
    write_raw_frame(root, "train", "bochum", "bochum_000000_000600", 3, labels=False)
    write_raw_frame(root, "val", "frankfurt", "frankfurt_000000_000294", 4, camera=(0.2, 2000.0))
    return root


def expected_labels(classes: int, offset: int) -> np.ndarray:
    column = {7: 1, 19: 2, 2: 3}[classes]
    return block_grid(np.array([EXPECTED[i][column] for i in BLOCK_IDS]), offset)


def test_prepare_cli_converts_and_reports(raw_cityscapes, tmp_path):
    out = tmp_path / "release"
    run = subprocess.run([sys.executable, "-m", "mtan.data.cityscapes", "prepare", "--root", str(raw_cityscapes),
                          "--out", str(out), "--size", OUT, "--classes", "7", "19", "--quiet"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "written 4 frame(s)" in run.stdout
    assert "bochum_000000_000600_leftImg8bit.png" in run.stdout and "no labelIds file" in run.stdout
    for split, n in (("train", 3), ("val", 1)):
        for folder in ("image", "label_7", "label_19", "depth"):
            assert len(list((out / split / folder).glob("*.npy"))) == n
    assert not (out / "train" / "label_2").exists()  # only the requested class sets


def test_prepare_label_mapping_and_release_depth(raw_cityscapes, tmp_path):
    out = tmp_path / "release"
    report = prepare(raw_cityscapes, out, OUT, classes=(7, 19, 2), progress=False, log=None)
    assert (report.written, report.already_done, report.frames) == (4, 0, {"train": 3, "val": 1})
    assert (out / "train" / "sources.txt").read_text().splitlines() == [
        "aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bochum/bochum_000000_000313"]
    for index, offset in enumerate([0, 1, 2]):  # frames sorted by city, then name
        for classes in (7, 19, 2):
            stored = np.load(out / "train" / f"label_{classes}" / f"{index}.npy")
            assert stored.shape == (8, 16) and stored.dtype == np.float32
            np.testing.assert_array_equal(stored, expected_labels(classes, offset))
        depth = np.load(out / "train" / "depth" / f"{index}.npy")
        assert depth.shape == (8, 16, 1) and depth.dtype == np.float32
        np.testing.assert_array_equal(depth[..., 0], (block_grid(P_VALUES, offset) / 65535).astype(np.float32))
        image = np.load(out / "train" / "image" / f"{index}.npy")
        assert image.shape == (8, 16, 3) and image.dtype == np.float32
        np.testing.assert_allclose(image[3, 5], np.array([10 * offset, 100, 200]) / 255, atol=1e-6)
    # Chosen pixels, spelled out: block 0 of frame 0 is labelId 7 (road), block 7 is 26 (car).
    lab7, lab19 = (np.load(out / "train" / f"label_{k}" / "0.npy") for k in (7, 19))
    assert (lab7[0, 0], lab19[0, 0]) == (0, 0)  # road
    assert (lab7[0, 7], lab19[0, 7]) == (6, 13)  # car
    assert (lab7[0, 9], lab19[0, 9]) == (-1, -1)  # unlabeled
    depth0 = np.load(out / "train" / "depth" / "0.npy")[..., 0]
    assert depth0[0, 0] == 0 and depth0[0, 3] == np.float32(32257 / 65535)


def test_prepared_release_loads_as_dataset(raw_cityscapes, tmp_path):
    out = tmp_path / "release"
    prepare(raw_cityscapes, out, OUT, classes=(7, 19), progress=False, log=None)
    ds = build_dataset("cityscapes", root=out, split="train", labels="label_19")
    assert len(ds) == 3 and ds.size == (8, 16)
    assert ds.task_configs == [{"name": "semantic", "kind": "semantic", "class_set": "cityscapes-19"},
                               {"name": "depth", "kind": "depth", "depth_kind": "inverse", "scale": 1.85}]
    sample = ds[2]
    assert torch.equal(sample["semantic"], torch.from_numpy(expected_labels(19, 2)).long())
    validate(ds, progress=False)
    with pytest.raises(DatasetError, match="label_2"):  # not converted
        CityScapesDataset(out, "train", labels="label_2")


def test_prepare_depth_disparity_and_metres(raw_cityscapes, tmp_path):
    p = block_grid(P_VALUES, 0).astype(np.float64)
    prepare(raw_cityscapes, tmp_path / "disp", OUT, classes=(7,), depth="disparity", progress=False, log=None)
    disparity = np.load(tmp_path / "disp" / "train" / "depth" / "0.npy")[..., 0]
    # (p - 1) / 256 pixels at 2048 ... here raw width 64 -> output width 16: times 16 / 64.
    np.testing.assert_allclose(disparity, np.where(p > 0, (p - 1) / 256 * 16 / 64, 0), rtol=1e-6)

    report = prepare(raw_cityscapes, tmp_path / "m", OUT, classes=(7,), depth="metres", progress=False, log=None)
    assert report.default_camera == 2  # aachen_000001 and bochum have no camera JSON
    metres = np.load(tmp_path / "m" / "train" / "depth" / "0.npy")[..., 0]  # camera: 0.2 m, fx 2000
    expected = np.where(p > 1, 0.2 * 2000 * 256 / np.maximum(p - 1, 1), 0)
    np.testing.assert_allclose(metres, expected, rtol=1e-6)
    assert metres[0, 2] == pytest.approx(400.0)  # p = 257: disparity 1 px
    default = np.load(tmp_path / "m" / "train" / "depth" / "1.npy")[..., 0]  # default camera
    p1 = block_grid(P_VALUES, 1).astype(np.float64)
    np.testing.assert_allclose(default, np.where(p1 > 1, 0.209313 * 2262.52 * 256 / np.maximum(p1 - 1, 1), 0),
                               rtol=1e-6)
    assert CityScapesDataset(tmp_path / "m", "train").tasks[1].depth_kind == "metric"


def test_prepare_resumes_and_reports(raw_cityscapes, tmp_path):
    out = tmp_path / "release"
    first = prepare(raw_cityscapes, out, OUT, classes=(7,), progress=False, log=None)
    assert first.written == 4
    assert [Path(p).name for p, _ in first.skipped] == ["bochum_000000_000600_leftImg8bit.png"]
    second = prepare(raw_cityscapes, out, OUT, classes=(7,), progress=False, log=None)
    assert (second.written, second.already_done) == (0, 4)
    assert "skipped 4 already converted" in second.summary()
    (out / "train" / "depth" / "1.npy").unlink()  # an interrupted run
    third = prepare(raw_cityscapes, out, OUT, classes=(7, 19), progress=False, log=None)
    assert third.written == 4 and (out / "train" / "label_19" / "2.npy").exists()  # new class set: written
    # The skipped image gets its labels: it joins at its sorted place, later frames are redone.
    write_raw_frame(raw_cityscapes, "train", "bochum", "bochum_000000_000600", 3)
    fourth = prepare(raw_cityscapes, out, OUT, classes=(7,), progress=False, log=None)
    assert fourth.frames["train"] == 4 and fourth.written == 1 and not fourth.skipped
    np.testing.assert_array_equal(np.load(out / "train" / "label_7" / "3.npy"), expected_labels(7, 3))
    with pytest.raises(DatasetError, match="--overwrite"):
        prepare(raw_cityscapes, out, "16x32", classes=(7,), progress=False, log=None)


def test_prepare_skips_unreadable_frame_and_keeps_indices(raw_cityscapes, tmp_path):
    bad = raw_cityscapes / "disparity" / "train" / "aachen" / "aachen_000001_000019_disparity.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "release"
    report = prepare(raw_cityscapes, out, OUT, classes=(7,), splits=("train",), progress=False, log=None)
    reasons = dict((Path(p).name, r) for p, r in report.skipped)
    assert "aachen_000001_000019_disparity.png" in reasons["aachen_000001_000019_leftImg8bit.png"]
    assert report.frames["train"] == 2  # bochum moved down to index 1, no gap
    np.testing.assert_array_equal(np.load(out / "train" / "label_7" / "1.npy"), expected_labels(7, 2))
    again = prepare(raw_cityscapes, out, OUT, classes=(7,), splits=("train",), progress=False, log=None)
    assert (again.written, again.already_done) == (0, 2)
    assert any("failed in an earlier run" in r for _, r in again.skipped)


def test_cityscapes_raw_by_name_prepares_into_cache(raw_cityscapes, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=r"python -m mtan.data.cityscapes prepare --root .* --size 8x16"):
        build_dataset("cityscapes-raw", root=raw_cityscapes, size="8x16", cache_dir=cache, prepare=False)
    ds = build_dataset("cityscapes-raw", root=raw_cityscapes, split="val", size="8x16", cache_dir=cache,
                       labels="label_2")
    assert len(ds) == 1 and ds.task_configs[0]["class_set"] == "cityscapes-2"
    assert torch.equal(ds[0]["semantic"], torch.from_numpy(expected_labels(2, 4)).long())
    assert not (cache / "train").exists()  # only the split asked for


def test_prepare_missing_raw_folder(tmp_path):
    (tmp_path / "raw" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"gtFine.*missing.*gtFine_trainvaltest.zip"):
        prepare(tmp_path / "raw", tmp_path / "out", OUT, progress=False, log=None)


# --------------------------------------------------------------------------------------
# Release-format readers
# --------------------------------------------------------------------------------------


def write_npy_release(root: Path, split: str, fields: dict, n: int):
    """``fields``: folder -> function(i) -> array."""
    for folder, make in fields.items():
        (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / folder / f"{i}.npy", make(i))


def cs_image(i, h=8, w=16):
    return (np.arange(h * w * 3).reshape(h, w, 3) * (i + 1) % 256 / 255).astype(np.float32)


def cs_label(i, h=8, w=16):
    lab = (np.arange(h * w).reshape(h, w) + i) % 8 - 1.0  # -1..6
    return lab.astype(np.float32)


def cs_depth(i, h=8, w=16):
    return ((np.arange(h * w).reshape(h, w, 1) * 97 * (i + 1)) % 32258 / 65535).astype(np.float32)


@pytest.fixture
def cs_release(tmp_path):
    root = tmp_path / "cityscapes"
    for split, n in (("train", 3), ("val", 2)):
        write_npy_release(root, split, {"image": cs_image, "label_7": cs_label, "depth": cs_depth}, n)
    return root


def test_cityscapes_release_exact_values(cs_release):
    ds = build_dataset("cityscapes", root=cs_release, split="val")
    assert (len(ds), ds.name, ds.size) == (2, "cityscapes", (8, 16))
    assert ds.task_configs[0]["class_set"] == "cityscapes-7"
    s = ds[1]
    assert set(s) == {"image", "semantic", "depth"}
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 8, 16)
    assert torch.equal(s["image"], torch.from_numpy(cs_image(1)).permute(2, 0, 1))
    assert s["semantic"].dtype == torch.int64 and torch.equal(s["semantic"], torch.from_numpy(cs_label(1)).long())
    assert (s["semantic"] == -1).any()
    assert s["depth"].shape == (1, 8, 16) and torch.equal(s["depth"][0], torch.from_numpy(cs_depth(1)[..., 0]))


def test_release_resize_on_load_is_nearest_for_targets(cs_release):
    s = CityScapesDataset(cs_release, "train", size=(4, 8))[0]
    assert s["image"].shape == (3, 4, 8)
    np.testing.assert_array_equal(s["semantic"].numpy(), cs_label(0)[1::2, 1::2])  # centre pixel of each 2x2
    np.testing.assert_array_equal(s["depth"][0].numpy(), cs_depth(0)[1::2, 1::2, 0])


def nyu_normal(i, h=8, w=16):
    x, y = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
    v = np.stack([x, y, np.full((h, w), 2.0)], -1)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    v[0, :3] = 0  # invalid
    return v.astype(np.float32)


def nyu_label(i, h=8, w=16):
    return ((np.arange(h * w).reshape(h, w) + i) % 14 - 1).astype(np.float32)  # -1..12


def nyu_depth(i, h=8, w=16):
    return (np.arange(h * w).reshape(h, w, 1) / 13.0).astype(np.float32)  # metres; 0 (invalid) first


def write_nyuv2(root: Path, n: int = 2):
    write_npy_release(root, "train", {"image": cs_image, "label": nyu_label, "depth": nyu_depth,
                                      "normal": nyu_normal}, n)


def test_nyuv2_release_exact_values(tmp_path):
    root = tmp_path / "nyuv2"
    write_nyuv2(root)
    ds = build_dataset("nyuv2", root=root, split="train")
    assert ds.task_configs == preset_tasks("nyuv2")
    s = ds[1]
    assert set(s) == {"image", "semantic", "depth", "normal"}
    assert torch.equal(s["semantic"], torch.from_numpy(nyu_label(1)).long()) and s["semantic"].min() == -1
    assert torch.equal(s["depth"], torch.from_numpy(nyu_depth(1)).permute(2, 0, 1))
    assert s["normal"].shape == (3, 8, 16)
    assert torch.equal(s["normal"], torch.from_numpy(nyu_normal(1)).permute(2, 0, 1))
    assert (s["normal"][:, 0, :3] == 0).all()
    assert NYUv2Dataset(root, "train", tasks=("semantic", "normal"))[0].keys() == {"image", "semantic", "normal"}
    validate(ds, progress=False)


# --------------------------------------------------------------------------------------
# Validation errors name the offending file
# --------------------------------------------------------------------------------------


def test_missing_folder_names_it(cs_release):
    import shutil

    shutil.rmtree(cs_release / "train" / "depth")
    with pytest.raises(DatasetError, match=r"train/depth is missing"):
        CityScapesDataset(cs_release, "train")
    with pytest.raises(DatasetError, match=r"split folder .*test is missing"):
        CityScapesDataset(cs_release, "test")


def test_unequal_counts_name_the_missing_file(cs_release):
    (cs_release / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(DatasetError, match=r"has 2 files but .*has 3.*depth/1\.npy"):
        CityScapesDataset(cs_release, "train")


@pytest.mark.parametrize("folder, array, problem", [
    ("image", np.zeros((8, 16), np.float32), "must be H x W x 3"),
    ("image", np.full((8, 16, 3), 255.0, np.float32), r"\[0, 1\]"),
    ("label_7", np.full((8, 16), 7.0, np.float32), r"label value\(s\) \[7\] outside the 7 classes"),
    ("label_7", np.full((8, 16), 0.5, np.float32), "whole numbers"),
    ("label_7", np.array([["a"] * 16] * 8), "must hold numbers"),
    ("depth", np.full((8, 16, 1), np.nan, np.float32), "NaN"),
    ("depth", np.full((8, 16, 1), -0.1, np.float32), "negative"),
    ("depth", np.zeros((4, 16, 1), np.float32), "is 4x16 but its image is 8x16"),
])
def test_bad_file_is_named(cs_release, folder, array, problem):
    bad = cs_release / "train" / folder / "2.npy"
    np.save(bad, array)
    ds = CityScapesDataset(cs_release, "train")  # opening checks frame 0 only: still fine
    with pytest.raises(DatasetError, match=problem) as err:
        validate(ds, progress=False)
    assert str(bad) in str(err.value)


def test_unreadable_and_bad_first_file_are_named(cs_release):
    bad = cs_release / "train" / "depth" / "1.npy"
    bad.write_bytes(b"garbage")
    ds = CityScapesDataset(cs_release, "train")
    with pytest.raises(DatasetError, match="cannot read") as err:
        ds[1]
    assert str(bad) in str(err.value)
    first = cs_release / "train" / "image" / "0.npy"
    np.save(first, np.zeros((3, 8, 16), np.float32))  # channels first: caught on open
    with pytest.raises(DatasetError, match="H x W x 3") as err:
        CityScapesDataset(cs_release, "train")
    assert str(first) in str(err.value)


def test_label_out_of_range_caught_on_load(cs_release):
    np.save(cs_release / "val" / "label_7" / "1.npy", np.full((8, 16), 9.0, np.float32))
    with pytest.raises(DatasetError, match=r"label_7/1\.npy"):
        CityScapesDataset(cs_release, "val")[1]


def test_no_root_and_unknown_names():
    with pytest.raises(DatasetError, match="no root folder"):
        build_dataset("cityscapes")
    with pytest.raises(ValueError, match="unknown dataset 'kitti'"):
        build_dataset("kitti")
    with pytest.raises(ValueError, match="unknown option"):
        build_dataset("synthetic", colour=True)


# --------------------------------------------------------------------------------------
# CamVid
# --------------------------------------------------------------------------------------

README_TO_7 = {0: 4, 1: 1, 2: 2, 3: 0, 4: 0, 5: 3, 6: 2, 7: 1, 8: 6, 9: 5, 10: 5, 11: -1}


def test_camvid_counts_and_labels_in_range(camvid_root):
    train = build_dataset("camvid", root=camvid_root, split="train", classes=11)
    val = build_dataset("camvid", root=camvid_root, split="val", classes=7, size=(64, 128))
    assert (len(train), len(val)) == (367, 101)
    assert train.size == (360, 480) and val.size == (64, 128)
    s = val[0]
    assert s["image"].shape == (3, 64, 128) and s["semantic"].shape == (64, 128)
    assert torch.equal(s["depth"], torch.zeros(1, 64, 128))  # no depth: all invalid
    for ds in (train, val):  # every label of every file in range (reading the PNGs only: fast)
        for i in range(len(ds)):
            assert np.array(Image.open(ds.label_path(i))).max() <= 11, ds.label_path(i)
    assert validate(val, progress=False) == 101  # the full check, images included


def test_camvid_seven_category_mapping(camvid_root):
    ds7, ds11 = (CamVidDataset(camvid_root, "train", classes=k) for k in (7, 11))
    seen = set()
    for index in (0, 100, 200):
        raw = torch.from_numpy(np.array(Image.open(ds7.label_path(index)))).long()
        lab7, lab11 = ds7[index]["semantic"], ds11[index]["semantic"]
        for value in raw.unique().tolist():
            assert (lab7[raw == value] == README_TO_7[value]).all()
            assert (lab11[raw == value] == (value if value < 11 else -1)).all()
            seen.add(value)
    assert len(seen) >= 10


def test_camvid_fake_tree_and_missing_label(tmp_path):
    root = tmp_path / "camvid"
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
    raw = np.arange(12, dtype=np.uint8).repeat(4).reshape(1, 48).repeat(36, 0)  # 36 x 48, classes 0..11
    Image.fromarray(np.zeros((36, 48, 3), np.uint8)).save(root / "train" / "images" / "a.jpg")
    Image.fromarray(raw).save(root / "train" / "labels" / "a.png")
    lab = CamVidDataset(root, "train", classes=7)[0]["semantic"]
    np.testing.assert_array_equal(lab[0].numpy(), np.array([README_TO_7[v] for v in raw[0]]))
    crop = CamVidDataset(root, "train", classes=11, size=(12, 48))  # 4:1 -> centre rows, full width
    assert crop[0]["semantic"].shape == (12, 48) and crop[0]["semantic"][0, 0] == 0
    Image.fromarray(np.zeros((36, 48, 3), np.uint8)).save(root / "train" / "images" / "b.jpg")
    with pytest.raises(DatasetError, match=r"no label for .*b\.jpg \(expected .*labels/b\.png\)"):
        CamVidDataset(root, "train")
    Image.fromarray(np.full((36, 48), 12, np.uint8)).save(root / "train" / "labels" / "b.png")
    with pytest.raises(DatasetError, match=r"labels/b\.png: label value\(s\) \[12\]"):
        validate(CamVidDataset(root, "train"), progress=False)


# --------------------------------------------------------------------------------------
# Mixtures and the synthetic dataset
# --------------------------------------------------------------------------------------


def test_mixture_fills_missing_tasks_invalid(cs_release):
    seg_only = CityScapesDataset(cs_release, "train", depth=False)
    full = CityScapesDataset(cs_release, "val")
    mix = MixtureDataset([seg_only, full])
    assert len(mix) == 5 and [t["name"] for t in mix.task_configs] == ["semantic", "depth"]
    first, last = mix[0], mix[4]
    assert torch.equal(first["depth"], torch.zeros(1, 8, 16))  # filled: all invalid
    assert torch.equal(last["depth"][0], torch.from_numpy(cs_depth(1)[..., 0]))
    batch = torch.utils.data.default_collate([first, last])  # batches cleanly
    assert batch["depth"].shape == (2, 1, 8, 16)
    assert validate(mix, progress=False) == 5


def test_mixture_class_sets_and_sizes_must_agree(cs_release, tmp_path):
    write_npy_release(cs_release, "train", {"label_19": cs_label}, 3)
    with pytest.raises(DatasetError, match="class_set: cityscapes-7 vs cityscapes-19"):
        MixtureDataset([CityScapesDataset(cs_release, "train"), CityScapesDataset(cs_release, "train", "label_19")])
    with pytest.raises(DatasetError, match="different image sizes"):
        MixtureDataset([CityScapesDataset(cs_release, "train"), CityScapesDataset(cs_release, "train", size=(4, 8))])


def test_synthetic_rendered_and_mixed_with_camvid(camvid_root):
    syn = build_dataset("synthetic", split="val", size=(32, 64), num_frames=2, seed=3)
    s = syn[1]
    assert s["image"].shape == (3, 32, 64) and s["semantic"].max() <= 6 and (s["depth"] > 0).any()
    assert torch.equal(syn[1]["image"], s["image"])  # cached, deterministic
    mix = build_dataset("synthetic+camvid", root={"camvid": camvid_root}, split="val", size=(32, 64),
                        num_frames=2)
    assert len(mix) == 2 + 101 and mix.task_configs == preset_tasks("cityscapes-7")
    assert torch.equal(mix[2]["depth"], torch.zeros(1, 32, 64)) and mix[2]["semantic"].shape == (32, 64)
    with pytest.raises(DatasetError, match="Class sets must agree"):
        build_dataset("synthetic+camvid", root="+" + str(camvid_root), size=(32, 64), num_frames=2, classes=11)


def test_synthetic_written_release_matches_rendered(tmp_path):
    from mtan.data.synthetic import write_release

    write_release(tmp_path / "syn", 2, 1, 32, 64, seed=5)
    written = build_dataset("synthetic", root=tmp_path / "syn", split="val")
    rendered = build_dataset("synthetic", split="val", size=(32, 64), num_frames=1, seed=5)
    a, b = written[0], rendered[0]
    assert torch.equal(a["semantic"], b["semantic"]) and torch.equal(a["depth"], b["depth"])
    assert torch.allclose(a["image"], b["image"], atol=1e-6)
    assert len(build_dataset("synthetic", root=tmp_path / "syn", num_frames=1, seed=3)) == 1  # first frames


# --------------------------------------------------------------------------------------
# In-memory mode
# --------------------------------------------------------------------------------------


def test_in_memory_round_trip_and_footprint(cs_release):
    ds = CityScapesDataset(cs_release, "train")
    memory = InMemoryDataset.from_dataset(ds, progress=False)
    dtypes = memory.storage_dtypes()
    assert (dtypes["image"], dtypes["semantic"], dtypes["depth"]) == (torch.uint8, torch.int8, torch.int16)
    assert memory.nbytes == 3 * 8 * 16 * (3 + 1 + 2) == 3 * bytes_per_frame(8, 16, ds.task_configs)
    for i in range(3):  # images are k/255 and depth p/65535: everything comes back bit for bit
        for key, value in ds[i].items():
            assert torch.equal(memory[i][key], value), key
    batches = list(memory.iter_batches(2, shuffle=False))
    assert [b["image"].shape[0] for b in batches] == [2, 1]
    assert torch.equal(batches[1]["depth"][0], ds[2]["depth"])
    assert len(list(memory.iter_batches(2, drop_last=True, generator=torch.Generator().manual_seed(0)))) == 1
    # The figure for the documentation: CityScapes 7-class + depth, 3,000 frames at 128x256.
    assert 3000 * bytes_per_frame(128, 256, preset_tasks("cityscapes-7")) == 589_824_000


def test_in_memory_metric_depth_and_normals(tmp_path):
    write_nyuv2(tmp_path / "nyuv2")
    ds = NYUv2Dataset(tmp_path / "nyuv2", "train")
    memory = InMemoryDataset.from_dataset(ds, progress=False)
    assert memory.storage_dtypes()["depth"] == torch.float16  # metres are not p / 65535
    assert memory.nbytes == 2 * bytes_per_frame(8, 16, ds.task_configs) == 2 * 8 * 16 * (3 + 1 + 2 + 3)
    got, want = memory[1], ds[1]
    torch.testing.assert_close(got["depth"], want["depth"], rtol=2**-11, atol=0)
    cos = (got["normal"] * want["normal"]).sum(0)[want["normal"].abs().sum(0) > 0]
    assert cos.min() > np.cos(np.radians(0.5))  # int8 normals: under half a degree
    assert (got["normal"][:, 0, :3] == 0).all()  # invalid stays invalid


def test_in_memory_save_load_and_augment(tmp_path, cs_release):
    memory = InMemoryDataset.from_dataset(CityScapesDataset(cs_release, "train"), progress=False)
    memory.save(tmp_path / "m.safetensors")
    loaded = InMemoryDataset.load(tmp_path / "m.safetensors")
    assert torch.equal(loaded.images, memory.images) and loaded.task_configs == memory.task_configs
    assert all(torch.equal(loaded.targets[k], v) for k, v in memory.targets.items())
    runs = [[b["semantic"] for b in memory.iter_batches(3, generator=torch.Generator().manual_seed(1),
                                                        augment=True)] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))  # reproducible with a generator


def test_camvid_blocks_split_holds_out_time_blocks_with_a_gap(tmp_path):
    """splits=blocks: train and val together, split by time; no tuning frame has a training frame
    within 90 video frames; splits=all trains on everything."""
    from mtan.data.camvid import BLOCK_GAP_FRAMES, _frame_number

    root = tmp_path / "camvid"
    names = {"train": [f"SEQA_{i:05d}" for i in range(0, 9000, 30)] + [f"SEQB_f{i:05d}" for i in range(0, 1800, 30)],
             "val": [f"SEQA_{i:05d}" for i in range(2, 3000, 30)]}  # interleaved with train, 2 frames apart
    label = np.zeros((12, 16), np.uint8)
    for split, stems in names.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for stem in stems:
            Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / split / "images" / f"{stem}.jpg")
            Image.fromarray(label).save(root / split / "labels" / f"{stem}.png")
    train = CamVidDataset(root, "train", splits="blocks")
    val = CamVidDataset(root, "val", splits="blocks")
    everything = names["train"] + names["val"]
    assert not set(train.names) & set(val.names)
    assert set(train.names) | set(val.names) < set(everything)  # the gap's frames are in neither
    for seq in ("SEQA", "SEQB"):
        held = [n for n in val.names if n.startswith(seq)]
        total = sum(n.startswith(seq) for n in everything)
        assert abs(len(held) - 0.15 * total) <= 2, (seq, len(held), total)
    for t in train.names:
        near = [v for v in val.names if v.split("_")[0] == t.split("_")[0]
                and abs(_frame_number(v) - _frame_number(t)) <= BLOCK_GAP_FRAMES]
        assert not near, (t, near)
    assert len(CamVidDataset(root, "train", splits="all")) == len(everything)
    assert CamVidDataset(root, "val", splits="all").names == sorted(names["val"])
    assert train[0]["image"].shape == (3, 12, 16)  # frames are read from either folder
    with pytest.raises(ValueError, match="splits must be one of"):
        CamVidDataset(root, "train", splits="random")


def test_tempered_class_balance_is_the_square_root():
    from mtan.losses import median_frequency_weights

    labels = torch.tensor([0] * 64 + [1] * 16 + [2] * 4 + [-1] * 10)
    full = median_frequency_weights(labels, 3)
    assert torch.allclose(full, torch.tensor([0.25, 1.0, 4.0]))
    assert torch.allclose(median_frequency_weights(labels, 3, power=0.5), full.sqrt())


def test_every_dataset_has_a_spec():
    """The dataset registry and the builders name the same datasets; what differs between them is
    asked of the spec (options a split is built with, its name on a card)."""
    from mtan.data import BUILDERS
    from mtan.data.registry import SPECS, spec
    from mtan.train import TrainConfig
    from mtan.train.datasets import builder_options

    assert set(SPECS) == set(BUILDERS)
    assert spec("camvid").own_size and not spec("synthetic").own_size
    assert spec("camvid").describe({"splits": "blocks"})[0] == "CamVid held-out blocks (real street photos, Cambridge)"
    assert spec("elsewhere").describe() == ("elsewhere val", "elsewhere") and spec("elsewhere").split_options("train") == {}
    config = TrainConfig.from_flags(data="synthetic+cityscapes", labels="label_19", train_frames=12, val_frames=4, seed=3,
                         data_options={"synthetic": {"num_frames": 20}})
    assert builder_options(config, "synthetic", "train") == {"seed": 3, "num_frames": 20}  # --data-option wins
    assert builder_options(config, "synthetic", "val") == {"seed": 0, "num_frames": 20}
    assert builder_options(config, "cityscapes", "val") == {"labels": "label_19"}
    assert spec("synthetic").trained_on(config) == "12 generated street scenes"
