"""Shared pytest fixtures: tiny task sets and models, paths to the shared reference material."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from mtan import MTAN, preset_tasks

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(os.environ.get("MTAN_SHARED", REPO.parent / "shared"))
# CamVid: MTAN_CAMVID, else where `python -m mtan.data.camvid download --out data/camvid` puts it, else beside the checkout.
CAMVID = Path(os.environ.get("MTAN_CAMVID") or next(
    (p for p in (REPO / "data" / "camvid", SHARED / "data" / "camvid") if (p / "train" / "images").is_dir()),
    REPO / "data" / "camvid"))

# Tests run on 2 CPU cores: keep torch from oversubscribing them.
torch.set_num_threads(2)
# Measured precision choices (mtan.inference.fast) go to a folder of this test run, never the user's cache;
# the apps the tests start inherit it.
os.environ["MTAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="mtan-test-cache-")
# The apps the tests start run eager: a background torch.compile would take both cores for minutes
# (tests/test_compiled.py checks the warm-up itself).
os.environ["MTAN_COMPILE"] = "off"


# Test files that start the app, a browser or training runs, or take over a few seconds a test:
# `python -m pytest -m "not slow"` leaves them out (the quick subset: 1.5-3 minutes on 2 cores).
SLOW_FILES = {
    "test_app.py", "test_benchmarks.py", "test_browser.py", "test_browser_media.py", "test_compiled.py",
    "test_convert.py", "test_default_model.py", "test_faults.py", "test_hostile_media.py", "test_hostile_requests.py", "test_learning.py",
    "test_load.py", "test_media_app.py", "test_pinned.py", "test_precision.py", "test_recipe.py", "test_release.py",
    "test_secrets.py", "test_synthetic.py", "test_train.py", "test_uploads.py", "test_video.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def cityscapes_tasks():
    return preset_tasks("cityscapes-7")


@pytest.fixture
def nyuv2_tasks():
    return preset_tasks("nyuv2")


@pytest.fixture
def tiny_model(nyuv2_tasks):
    """A 3-task MTAN at 1/16 width: same structure as the paper's, a few thousand parameters."""
    torch.manual_seed(0)
    return MTAN(nyuv2_tasks, arch="mtan", width=1 / 16)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny saved models for the app tests: {"city": folder, "nyu": folder} (see apphelpers.make_models)."""
    from apphelpers import make_models

    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def camvid_root():
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set MTAN_CAMVID)")
    return CAMVID


@pytest.fixture(scope="session")
def camvid_sample(tmp_path_factory):
    """A quarter of CamVid in its own layout: every 4th labelled photo of each sequence in each
    folder (links to the real files), for tests of the release and calibration plumbing, which
    score tiny models many times over. Figures that must match the full set use ``camvid_root``."""
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set MTAN_CAMVID)")
    from mtan.data.camvid import _frame_number

    root = tmp_path_factory.mktemp("camvid-sample")
    for split in ("train", "val"):
        images = sorted((CAMVID / split / "images").iterdir(), key=lambda p: (p.stem.split("_", 1)[0], _frame_number(p.stem)))
        by_sequence: dict[str, list[Path]] = {}
        for image in images:
            by_sequence.setdefault(image.stem.split("_", 1)[0], []).append(image)
        for folder in ("images", "labels"):
            (root / split / folder).mkdir(parents=True)
        for frames in by_sequence.values():
            for image in frames[::4]:
                (root / split / "images" / image.name).symlink_to(image)
                (root / split / "labels" / f"{image.stem}.png").symlink_to(CAMVID / split / "labels" / f"{image.stem}.png")
    return root
