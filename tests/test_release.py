"""mtan.release: a run becomes a model folder whose card numbers the listed commands reproduce."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cardhelpers import card_commands, check_card_against, run_commands

from mtan import MTAN
from mtan.data.camvid import sequence_blocks
from mtan.inference.int8 import int8_available
from mtan.records import ResolutionAdvice

REPO = Path(__file__).resolve().parents[1]


def photo_names(root: Path) -> list[str]:
    """The labelled photos of a CamVid folder, train and val together."""
    return [p.stem for split in ("train", "val") for p in (root / split / "images").iterdir()]


def test_release_of_a_tiny_mixed_run(tmp_path, camvid_sample, monkeypatch):
    monkeypatch.setenv("MTAN_CAMVID", str(camvid_sample))  # the card's commands score the sample too
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--preset", "demo-pretrain", "--epochs", "1", "--size", "32x64", "--train-frames",
           "8", "--val-frames", "4", "--width", "0.0625", "--no-progress", "--data-root", f"+{camvid_sample}",
           "--out", str(run)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "train_config.json").read_text())["data"]["pseudo_depth"] is True

    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "mtan.release", str(run), str(out), "--no-latency"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "precisions.json", "resolutions.json"]
    assert MTAN.from_pretrained(out).width == 0.0625
    # CamVid val as the app sees it at each processing resolution: what mtan.evaluate prints
    record = json.loads((out / "resolutions.json").read_text())
    assert list(record["scores"]) == ["128x256", "256x512", "512x1024"] and record["dataset"].startswith("CamVid val")
    evaluated = tmp_path / "at128.json"
    assert subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(out), "--data", "camvid",
                           "--app-resolution", "128x256", "--out", str(evaluated)], cwd=REPO,
                          capture_output=True, timeout=600).returncode == 0
    assert json.loads(evaluated.read_text())["semantic.miou"] == record["scores"]["128x256"]
    assert "## Processing resolutions" in out.joinpath("README.md").read_text()
    # and with the mirror average at the best resolution, as `mtan.evaluate --flip` scores it; the card says
    # whether the app starts with it on
    best = ResolutionAdvice.from_record(record).default  # the resolution the app starts at
    assert list(record["mirror"]) == [best] and record["mirror_command"].endswith(f"--app-resolution {best} --flip")
    assert subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(out), "--data", "camvid",
                           "--app-resolution", best, "--flip", "--out", str(evaluated)], cwd=REPO,
                          capture_output=True, timeout=600).returncode == 0
    assert json.loads(evaluated.read_text())["semantic.miou"] == record["mirror"][best]
    gain = record["mirror"][best] - record["scores"][best]
    assert (f"With the mirror average (the photo and its mirror image run and their outputs averaged, twice the "
            f"network's time) at {best}: {record['mirror'][best]:.4f} against {record['scores'][best]:.4f}, so the "
            f"app starts with it {'on' if gain >= 0.005 else 'off'}") in " ".join(out.joinpath("README.md").read_text().split())
    # each precision scored as the app runs photos at the best resolution; fp32 figures = mtan.evaluate's
    precisions = json.loads((out / "precisions.json").read_text())
    assert precisions["evaluations"] == [f"synthetic val at {best}", f"camvid val at {best}"]
    assert list(precisions["precisions"]) == ["fp32", "bf16", "bf16-convs"] + ["int8"] * int8_available()
    if int8_available():
        assert precisions["precisions"]["int8"]["calibrated_on"] == (f"4 synthetic training images, 4 camvid "
                                                                     f"training images at {best}")
    fp32 = precisions["precisions"]["fp32"]
    # (through the folded inference copy: the same up to round-off flipping a few near-tied pixels)
    assert fp32["kept"] and fp32["metrics"][f"camvid val at {best}"]["semantic.miou"] == pytest.approx(
        record["scores"][best], abs=0.01)
    assert "## Precision" in out.joinpath("README.md").read_text()
    readme = out / "README.md"
    text = readme.read_text()
    for section in ("## Results", "## Data", "## Training", "## Depth on real photos", "## How to check the results",
                    "## Limits"):
        assert section in text
    assert "--preset demo" in text and "0.000 of the image height" not in text
    reproduced = run_commands(card_commands(readme), tmp_path)
    assert {r["data"] for r in reproduced} == {"synthetic", "camvid"}
    check_card_against(readme, reproduced)


def test_release_refuses_a_folder_without_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mtan.release", str(tmp_path), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train_config.json" in proc.stderr and "Traceback" not in proc.stderr


def test_release_with_calibration_of_a_run_split_by_time(tmp_path, camvid_sample, monkeypatch):
    """--calibrate: the class bias is fitted on the run's real training photos, stored in config.json,
    reported on the card with and without it, and every card figure (the calibrated model's) is
    reproduced by the card's commands, which name the run's data options."""
    monkeypatch.setenv("MTAN_CAMVID", str(camvid_sample))  # the card's commands score the sample too
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--preset", "demo-pretrain", "--epochs", "1", "--size", "32x64", "--train-frames",
           "8", "--val-frames", "4", "--width", "0.0625", "--no-progress", "--data-root", f"+{camvid_sample}",
           "--data-option", "camvid.splits=blocks", "--class-weights", "sqrt-median-frequency", "--out", str(run)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "mtan.release", str(run), str(out), "--no-latency",
                           "--no-precision-check", "--calibrate"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calibration = json.loads((out / "calibration.json").read_text())
    held_out, _ = sequence_blocks(photo_names(camvid_sample))
    assert calibration["fitted_on"]["options"] == {"splits": "blocks"} and calibration["check"]["photos"] == len(held_out)
    assert calibration["fit"]["miou_with"] >= calibration["fit"]["miou_without"]
    bias = MTAN.from_pretrained(out).tasks[0].class_bias
    assert bias == pytest.approx(list(calibration["class_bias"].values()), abs=1e-4)
    readme = out / "README.md"
    text = readme.read_text()
    assert "## Calibration" in text and "not fitted on: without" in text and "--data-option splits=blocks" in text
    reproduced = run_commands([c for c in card_commands(readme) if "camvid" in c], tmp_path)
    check_card_against(readme, reproduced, complete=False)


def test_release_of_a_run_on_every_photo_with_its_twin(tmp_path, camvid_sample, monkeypatch):
    """A run trained on every labelled photo (camvid.splits=all) has no unseen photos of its own:
    --twin scores the same recipe with photos held out on them, averaged with its start and
    calibrated the same way, and the card's twin figures are what the twin's commands print. The
    run's own figures are labelled as seen in training, its calibration has no "not fitted on"
    column, and its weights are the stated average of its own and its start's."""
    monkeypatch.setenv("MTAN_CAMVID", str(camvid_sample))  # the card's commands score the sample too
    from safetensors.torch import load_file

    def train(out, splits, *extra):
        cmd = [sys.executable, "train.py", "--preset", "demo-pretrain", "--epochs", "1", "--size", "32x64",
               "--train-frames", "8", "--val-frames", "4", "--width", "0.0625", "--no-progress", "--data-root",
               f"+{camvid_sample}", "--data-option", f"camvid.splits={splits}", "--out", str(out), *extra]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    start, every, twin = tmp_path / "start", tmp_path / "every", tmp_path / "twin"
    train(start, "blocks")
    train(every, "all", "--init-from", str(start))
    train(twin, "blocks", "--init-from", str(start))
    out = tmp_path / "model"

    def release(*extra):
        return subprocess.run([sys.executable, "-m", "mtan.release", str(every), str(out), "--no-latency",
                               "--no-precision-check", *extra], cwd=REPO, capture_output=True, text=True, timeout=900)

    # a wrong twin is refused before anything is measured or written
    proc = release("--twin", str(every))
    assert proc.returncode == 2 and "holds no real photos out" in proc.stderr and "Traceback" not in proc.stderr
    other = tmp_path / "other"
    shutil.copytree(twin, other)
    config = json.loads((other / "train_config.json").read_text())
    config["optim"]["lr"] *= 2
    (other / "train_config.json").write_text(json.dumps(config))
    proc = release("--twin", str(other))
    assert proc.returncode == 2 and "optim.lr" in proc.stderr and not out.exists()

    proc = release("--twin", str(twin), "--average-start", "1.5")
    assert proc.returncode == 2 and "above 0 and at most 1" in proc.stderr and not out.exists()
    proc = release("--twin", str(twin), "--calibrate", "--average-start", "0.25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = " ".join(out.joinpath("README.md").read_text().split())
    # the released weights: a quarter the run's, three quarters its start's, weight by weight
    released, own, began = (load_file(f / "model.safetensors") for f in (out, every, start))
    assert released.keys() == own.keys() and not torch.equal(own["encoder.stages.0.first.0.weight"], began["encoder.stages.0.first.0.weight"])
    for k, v in released.items():
        expected = 0.25 * own[k] + 0.75 * began[k] if v.is_floating_point() else own[k]
        assert torch.allclose(v, expected, atol=1e-6), k
    assert "0.25 x the last stage's plus 0.75 x those it started from" in text
    assert "CamVid val (real street photos, Cambridge; seen in training)" in text
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["fitted_on"]["photos"] == len(photo_names(camvid_sample)) and "check" not in calibration
    assert "not fitted on" not in text and "--check-split" not in calibration["fitted_on"]["command"]
    # the twin's figures: calibrated by the card's command, scored by the card's commands
    section = text.split("## Held-out figures", 1)[1].split("##", 1)[0]
    commands = re.findall(r"`(python -m mtan\.[^`]+)`", section)
    calibrate, evaluate = next(c for c in commands if "calibrate" in c), next(c for c in commands if "evaluate" in c)
    held_out, _ = sequence_blocks(photo_names(camvid_sample))
    assert "splits=blocks" in evaluate and "--app-resolution" in evaluate and f"{len(held_out)} photos it held out" in section
    twin_model = tmp_path / "twin-model"  # averaged with its start by the card's command
    average = re.search(r"`(python -m mtan\.release TWIN_RUN TWIN --average-start 0\.25[^`]*)`", section).group(1)
    proc = subprocess.run([sys.executable, *shlex.split(average.replace("TWIN_RUN", str(twin)).replace(
        "TWIN", str(twin_model)))[1:]], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = []
    for n, command in enumerate((calibrate, evaluate, evaluate + " --flip")):
        args = shlex.split(command.replace("TWIN", str(twin_model)))[1:] + ["--out", str(tmp_path / f"twin{n}.json")] * (n > 0)
        proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append(json.loads((tmp_path / f"twin{n}.json").read_text()) if n else None)
    plain, mirrored = results[1:]
    row = re.search(r"\| semantic\.miou \| ([\d.]+) \| ([\d.]+) \|", section)
    assert float(row.group(1)) == pytest.approx(plain["semantic.miou"], abs=1e-4)
    assert float(row.group(2)) == pytest.approx(mirrored["semantic.miou"], abs=1e-4)
    assert f"| depth_order.objects_nearer | {plain['depth_order.objects_nearer']:.4f}" in section
