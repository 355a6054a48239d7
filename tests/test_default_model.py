"""The model the app ships with (weights/): its card's numbers are reproduced by the commands on
the card, it clears floors that catch a broken model, and it reads the example photos correctly.

The example photos are generated street scenes (examples/generate.py: seed 2026, frames 0..7),
so their exact labels and depth can be rendered again here and compared with what the app's
own prediction path (``mtan.serve.predict_photo``, at the app's default resolution) returns.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtan import MTAN
from mtan.data.synthetic import render_frame
from mtan.metrics import spearman
from mtan.data.registry import spec
from mtan.records import DEFAULT_RESOLUTION
from mtan.inference import Resolution
from mtan.serve import LoadedModel, predict_photo
from cardhelpers import card_commands, card_values, check_card_against, data_of, run_commands

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"
README = WEIGHTS / "README.md"
EXAMPLE_SEED = 2026  # examples/generate.py

FLAT, SKY = 0, 4


@pytest.fixture(scope="module")
def model():
    return MTAN.from_pretrained(WEIGHTS).eval()


def test_weights_folder_is_small_and_a_street_model(model):
    assert (WEIGHTS / "model.safetensors").stat().st_size < 15e6
    kinds = {t.name: t for t in model.tasks}
    assert kinds["semantic"].class_set.name == "cityscapes-7" and kinds["depth"].depth_kind == "inverse"
    text = README.read_text()
    assert "placeholder" not in text.lower()
    for section in ("## Data", "## Training", "## Depth on real photos", "## How to check the results", "## Speed",
                    "## Limits"):
        assert section in text, section
    assert "--preset street" in text and "/root/" not in text  # its recipe, and no machine paths


def test_card_depth_order_and_accuracy_floor():
    """Floors that catch a broken model (the CPU-trained model reaches 0.50 on CamVid val at its
    own size and 0.63 on generated scenes, README); a real model recedes its ground and puts the
    sky farthest."""
    values = card_values(README)
    camvid = next(name for name, _ in values if name.startswith("CamVid"))  # val, or held-out blocks of it
    synthetic = spec("synthetic").val_name
    assert values[(camvid, "mean_iou")] >= 0.48
    assert values[(synthetic, "mean_iou")] >= 0.60
    # the depth-order figures on CamVid val, from the card's results table
    row = {m.group(1): m.groups()[1:] for m in re.finditer(r"^\| (depth_order\.\w+) \| ([^|]+) \| ([^|]+) \|$",
                                                            README.read_text(), re.M)}
    names = re.search(r"^\| metric \| (.+) \|$", README.read_text(), re.M).group(1).split(" | ")
    col = names.index(camvid)
    assert float(row["depth_order.ground_row_spearman"][col]) > 0.7
    assert float(row["depth_order.sky_farthest"][col]) >= 0.95


def test_card_camvid_numbers_are_reproduced(camvid_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MTAN_CAMVID", str(camvid_root))
    monkeypatch.chdir(REPO)
    commands = [c for c in card_commands(README) if data_of(c) == "camvid"]
    assert len(commands) == 1
    reproduced = run_commands(commands, tmp_path)
    check_card_against(README, reproduced, complete=False)
    result = reproduced[0]["result"]
    assert result["semantic.miou"] >= 0.48
    assert result["depth_order.ground_row_spearman"] > 0.7 and result["depth_order.sky_farthest"] >= 0.95


def test_the_mirror_average_figure_is_reproduced_and_decides_the_apps_default(camvid_root, tmp_path, monkeypatch):
    """resolutions.json's mirror figure is what its command prints, and the app's default follows it."""
    from mtan.records import MIRROR_GAIN, ResolutionAdvice

    monkeypatch.setenv("MTAN_CAMVID", str(camvid_root))
    record = json.loads((REPO / "weights" / "resolutions.json").read_text())
    (at, mirrored), = record["mirror"].items()
    out = tmp_path / "mirror.json"
    command = record["mirror_command"].replace("MODEL", "weights").split()[1:] + ["--out", str(out)]
    proc = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["semantic.miou"] == pytest.approx(mirrored, abs=1e-3)
    advice = ResolutionAdvice.of_folder(REPO / "weights")
    assert advice.default == at and advice.mirror == (mirrored >= record["scores"][at] + MIRROR_GAIN)
    assert f"{mirrored:.4f} against {record['scores'][at]:.4f}" in README.read_text()


def test_card_synthetic_numbers_are_reproduced(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    commands = [c for c in card_commands(README) if data_of(c) == "synthetic"]
    assert len(commands) == 1
    reproduced = run_commands(commands, tmp_path)
    check_card_against(README, reproduced, complete=False)
    assert reproduced[0]["result"]["semantic.miou"] >= 0.60


@pytest.mark.parametrize("index", range(8))
def test_example_photo_through_the_app(model, index):
    """Each example, as the app runs it: labels close to the scene's exact labels, ground depth
    receding towards the horizon, sky the farthest."""
    path = REPO / "examples" / f"street_{index + 1:02d}.jpg"
    photo = Image.open(path).convert("RGB")
    truth = render_frame(EXAMPLE_SEED, index, photo.height, photo.width)
    assert np.abs(np.asarray(photo, np.float32) - truth["image"]).mean() < 8  # the file is that frame (JPEG)
    loaded = LoadedModel(key="weights", source=str(WEIGHTS), model=model, card=README.read_text())
    pred = predict_photo(loaded, photo, Resolution.parse(DEFAULT_RESOLUTION))
    labels = pred.labels["semantic"]
    valid = truth["label"] >= 0
    accuracy = float((labels[valid] == truth["label"][valid]).mean())
    print(f"{path.name}: pixel accuracy {accuracy:.3f}")
    assert accuracy >= 0.7, f"{path.name}: pixel accuracy {accuracy:.3f}"
    depth = torch.from_numpy(pred.depth["depth"])
    h, w = depth.shape
    # the scene's exact labels say where the ground and the sky are: the depth is judged, not the labels
    lab = torch.from_numpy(np.array(Image.fromarray((truth["label"] + 1).astype(np.uint8)).resize(
        (w, h), Image.NEAREST)).astype(np.int64) - 1)
    ground = lab == FLAT
    rows = torch.arange(h).view(-1, 1).expand(h, w)
    assert spearman(depth[ground], rows[ground].double()) > 0.8
    others = [depth[lab == c].mean() for c in range(7) if c != SKY and int((lab == c).sum()) >= 50]
    if int((lab == SKY).sum()) >= 50:
        assert depth[lab == SKY].mean() < min(others)


def test_precision_record_keeps_every_precision_with_int8_calibration():
    """weights/precisions.json: every precision scored on both validation sets (kept or dropped by
    the quality rule); int8's scales cover every quantised block, measured for inputs on 0..127;
    the app offers the kept ones and times them."""
    from mtan.inference.int8 import INT8_INPUT_LEVELS
    from mtan.model import ConvBNReLU
    from mtan.precision import ERROR_TOLERANCE, MIOU_TOLERANCE
    from mtan.records import allowed_precisions, int8_scales, read_record
    from mtan.serve import ModelRegistry

    record = read_record(WEIGHTS)
    assert set(record["precisions"]) == {"fp32", "bf16", "bf16-convs", "int8"}
    kept = allowed_precisions(record)
    assert "fp32" in kept and "int8" in kept
    scales = int8_scales(record)
    blocks = [n for n, m in MTAN.from_pretrained(WEIGHTS).named_modules() if type(m) is ConvBNReLU]
    assert sorted(scales) == sorted(blocks) and all(s[4] == INT8_INPUT_LEVELS and s[0] > 0 for s in scales.values())
    for precision in kept:
        for name in record["evaluations"]:
            fp32, other = (record["precisions"][p]["metrics"][name] for p in ("fp32", precision))
            assert other["semantic.miou"] >= fp32["semantic.miou"] - MIOU_TOLERANCE
            for key in ("depth.abs_err", "depth.rel_err"):
                if key in fp32:
                    assert other[key] <= fp32[key] * (1 + ERROR_TOLERANCE)
    assert f"Kept: {', '.join(kept)}." in README.read_text()
    loaded = ModelRegistry([str(WEIGHTS)]).get()
    assert loaded.precisions == kept and loaded.int8_scales == scales


def test_calibration_is_stored_and_applied():
    """weights/: a per-class bias in config.json, with the record of its fit, reported on the card."""
    import json

    model = MTAN.from_pretrained(WEIGHTS)
    record = json.loads((WEIGHTS / "calibration.json").read_text())
    assert model.tasks[0].class_bias == pytest.approx(list(record["class_bias"].values()), abs=1e-4)
    assert record["fit"]["miou_with"] > record["fit"]["miou_without"]
    text = README.read_text()
    assert "## Calibration" in text
    if "check" in record:  # photos held out from training and from the fit
        assert record["check"]["miou_with"] >= record["check"]["miou_without"]
    else:  # trained and calibrated on every labelled photo: its twin's held-out figures are on the card
        assert record["fitted_on"]["options"] == {"splits": "all"} and "## Held-out figures" in text
        assert "not fitted on" not in text


def test_card_int8_camvid_figure_is_reproduced(camvid_root, monkeypatch, tmp_path):
    """The card's int8 mIoU on CamVid val, run again through the app's int8 network."""
    import json

    from mtan.evaluate import main as evaluate_main
    from mtan.records import read_record

    monkeypatch.setenv("MTAN_CAMVID", str(camvid_root))
    monkeypatch.chdir(REPO)
    out = tmp_path / "int8.json"
    (camvid,) = [c for c in card_commands(README) if data_of(c) == "camvid"]  # the card's data options too
    assert evaluate_main([*camvid, "--app-resolution", "256x512", "--precision", "int8", "--out", str(out)]) == 0
    recorded = read_record(WEIGHTS)["precisions"]["int8"]["metrics"]["camvid val at 256x512"]["semantic.miou"]
    # int8 kernels round their requantisation differently on other CPUs: a few pixels of 101 photos move
    assert json.loads(out.read_text())["semantic.miou"] == pytest.approx(recorded, abs=2e-3)
