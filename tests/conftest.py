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
# Measured precision choices (mtan.fast) go to a folder of this test run, never the user's cache;
# the apps the tests start inherit it.
os.environ["MTAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="mtan-test-cache-")
# The apps the tests start run eager: a background torch.compile would take both cores for minutes
# (tests/test_compiled.py checks the warm-up itself).
os.environ["MTAN_COMPILE"] = "off"


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
