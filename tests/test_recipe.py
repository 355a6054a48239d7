"""The pieces of the street recipe: zoom out as well as in with crops, photometric augmentation,
schedules, label smoothing and depth smoothness, the CPU precision chosen by timing, and the
evaluation that scores photos of any size the way the app sees them."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtan import MTAN, preset_tasks
from mtan.data.augment import AugmentParams, BatchAugment, apply_augment
from mtan.data.photometric import PhotometricConfig, _jpeg, photometric
from mtan.train import TrainConfig, apply_preset
from mtan.train.schedule import build_schedule
from mtan.losses import edge_aware_smoothness, semantic_loss
from mtan.metrics import DepthOrderMetric, SegmentationMetric, laplacian_roughness
from mtan.timing import fastest

REPO = Path(__file__).resolve().parents[1]
TASKS = preset_tasks("cityscapes-7")


def ramp_batch(b=2, h=32, w=48):
    """Images whose red channel is the x coordinate; labels 1..; depth 1."""
    x = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(b, 3, h, w).clone()
    return {"image": x, "semantic": torch.ones(b, h, w, dtype=torch.long) * 3,
            "depth": torch.ones(b, 1, h, w)}


def test_zooming_out_puts_the_image_inside_an_ignored_black_border():
    batch = ramp_batch()
    params = AugmentParams(scale=torch.tensor([0.5, 2.0]), top=torch.tensor([0.5, 0.5]),
                           left=torch.tensor([0.5, 0.5]), flip=torch.tensor([False, False]))
    out = apply_augment(batch, TASKS, params, out_size=(32, 48))
    sem, dep, img = out["semantic"], out["depth"], out["image"]
    # scale 0.5: the whole image fills the middle half of each side; the rest is void
    inside = sem[0] == 3
    assert inside.float().mean() == pytest.approx(0.25, abs=0.02)
    assert (sem[0][~inside] == -1).all() and (dep[0][0][~inside] == 0).all() and (img[0][:, ~inside] == 0).all()
    assert dep[0][0][inside].unique().tolist() == [0.5]  # inverse depth: zoomed out = farther
    # scale 2: a window inside the image, nothing void; inverse depth doubled
    assert (sem[1] == 3).all() and torch.allclose(dep[1], torch.full_like(dep[1], 2.0))


def test_crops_come_out_at_the_crop_size_and_scale_range_draws_both_ways():
    g = torch.Generator().manual_seed(0)
    aug = BatchAugment(TASKS, generator=g, scale_range=(0.5, 2.0), out_size=(32, 32))
    out = aug(ramp_batch(8, 64, 96))
    assert out["image"].shape == (8, 3, 32, 32) and out["semantic"].shape == (8, 32, 32)
    scales = AugmentParams.draw(2000, "cpu", generator=torch.Generator().manual_seed(1), scale_range=(0.5, 2.0)).scale
    assert 0.5 <= float(scales.min()) < 0.55 and 1.9 < float(scales.max()) <= 2.0
    assert float((scales < 1).float().mean()) == pytest.approx(0.5, abs=0.05)  # log-uniform: half zoom out
    with pytest.raises(ValueError, match="scale_range"):
        BatchAugment(TASKS, scale_range=(0, 2))


def test_photometric_changes_only_the_image_repeatably_and_within_range():
    x = torch.rand(6, 3, 40, 56)
    a = photometric(x, torch.Generator().manual_seed(3))
    b = photometric(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, x)
    none = PhotometricConfig(brightness=0, contrast=0, saturation=0, hue=0, gamma=(1, 1), blur_p=0, jpeg_p=0,
                             noise_p=0)
    assert torch.allclose(photometric(x, torch.Generator().manual_seed(3), none), x, atol=1e-5)


def test_jpeg_artefacts_grow_as_the_quality_falls():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 40).clamp(0, 1)
    errors = [float((_jpeg(x, torch.tensor([q])) - x).abs().mean()) for q in (95.0, 60.0, 20.0)]
    assert errors[0] < errors[1] < errors[2]
    assert _jpeg(x, torch.tensor([95.0])).shape == x.shape  # 40 is no multiple of 8: padded and cropped


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_warmup_then_decay_to_zero(schedule):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    cfg = TrainConfig.from_flags(schedule=schedule, warmup_epochs=1, epochs=10, optimizer="adamw")
    sched = build_schedule(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[10] and max(lrs) == pytest.approx(lrs[10], rel=0.05)  # warm-up for 10 steps
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then never rises
    assert lrs[-1] < 0.05
    with pytest.raises(ValueError, match="--schedule 'linear'"):
        TrainConfig.from_flags(schedule="linear")
    with pytest.raises(ValueError, match="--crop .* needs --augment"):
        TrainConfig.from_flags(crop="64x64")
    with pytest.raises(ValueError, match="--scale-range '2,1'"):
        TrainConfig.from_flags(scale_range="2,1", augment=True)
    with pytest.raises(ValueError, match="--focus-crops .* needs --augment"):
        TrainConfig.from_flags(focus_crops=0.5)
    with pytest.raises(ValueError, match="--focus-crops .* between 0 and 1"):
        TrainConfig.from_flags(focus_crops=1.5, augment=True)
    assert TrainConfig.from_flags(focus_crops=0.5, augment=True).data.focus_crops == 0.5
    with pytest.raises(ValueError, match="--copy-paste .* needs --augment"):
        TrainConfig.from_flags(copy_paste="object")
    with pytest.raises(ValueError, match="--copy-paste .* names no class"):
        TrainConfig.from_flags(copy_paste=" , ", augment=True)
    assert TrainConfig.from_flags(copy_paste="object, human", augment=True).data.paste_names() == ("object", "human")
    from mtan.release import augmentation_text  # the card says so
    assert "object and human pixels pasted" in augmentation_text(TrainConfig.from_flags(copy_paste="object,human",
                                                                                        augment=True))
    assert "pasted" not in augmentation_text(TrainConfig.from_flags(augment=True))


def test_label_smoothing_and_depth_smoothness():
    logits = torch.randn(2, 7, 8, 8)
    target = torch.randint(0, 7, (2, 8, 8))
    target[0, 0, 0] = -1
    plain, smooth = semantic_loss(logits, target), semantic_loss(logits, target, label_smoothing=0.1)
    assert plain != smooth and torch.isfinite(smooth)
    image = torch.rand(2, 3, 16, 16)
    flat = torch.ones(2, 1, 16, 16)
    noisy = flat + 0.3 * torch.rand(2, 1, 16, 16)
    assert float(edge_aware_smoothness(flat, image)) == 0.0
    assert float(edge_aware_smoothness(noisy, image)) > 0.01
    assert float(edge_aware_smoothness(noisy * 5, image)) == pytest.approx(float(edge_aware_smoothness(noisy, image)),
                                                                           rel=1e-5)  # scale-free


def test_per_class_iou_and_confusion_table():
    metric = SegmentationMetric(3, class_names=("road", "car", "sky"))
    pred = torch.tensor([[0, 0, 1, 2]])
    target = torch.tensor([[0, 1, 1, -1]])
    metric.update(pred, target)
    result = metric.compute()
    assert result["iou.road"] == pytest.approx(0.5) and result["iou.car"] == pytest.approx(0.5)
    assert math.isnan(result["iou.sky"])  # predicted only on a void pixel: in neither prediction nor labels
    table = metric.confusion_table()
    assert table["classes"] == ["road", "car", "sky"] and table["matrix"][1] == [1, 1, 0]


def test_roughness_sees_grid_texture_not_planes():
    labels = torch.zeros(32, 32, dtype=torch.long)
    rows = torch.linspace(0.2, 1.0, 32).view(-1, 1).expand(32, 32)
    plane = rows.clone()
    grid = rows * (1 + 0.1 * ((torch.arange(32).view(-1, 1) + torch.arange(32)) % 2))
    assert laplacian_roughness(plane.exp(), labels) < 1e-6  # planar in log depth
    assert laplacian_roughness(grid, labels) > 50 * laplacian_roughness(rows, labels)
    metric = DepthOrderMetric(7)
    metric.update(grid[None, None], labels[None])
    assert metric.compute()["roughness"] == pytest.approx(laplacian_roughness(grid, labels))


def test_fastest_keeps_the_reference_unless_another_is_clearly_faster():
    import time

    name, times = fastest({"a": lambda: time.sleep(0.05), "b": lambda: time.sleep(0.049)}, repeats=5)
    assert name == "a" and set(times) == {"a", "b"}  # 2 % faster is noise: the reference stays
    name, _ = fastest({"a": lambda: time.sleep(0.02), "b": lambda: time.sleep(0.002)}, repeats=3)
    assert name == "b"


def test_fastest_stops_timing_an_option_that_cannot_win():
    import time

    calls = {"quick": 0, "slow": 0}

    def run(name, seconds):
        def go():
            calls[name] += 1
            time.sleep(seconds)
        return go

    name, times = fastest({"quick": run("quick", 0.002), "slow": run("slow", 0.03)}, warmup=1, repeats=5)
    assert name == "quick" and set(times) == {"quick", "slow"}
    assert calls == {"quick": 6, "slow": 2}  # warm-up and one timed run, then dropped
    assert times["slow"] > 5 * times["quick"]


def test_amp_auto_is_timed_on_the_cpu_logged_and_kept_on_resume(tmp_path):
    from mtan.checkpoint import list_checkpoints, load_checkpoint
    from mtan.train import train

    out = tmp_path / "run"
    lines = []
    cfg = apply_preset(None, dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625,
                                  batch_size=4, epochs=1, out=str(out), progress=False))
    train(cfg, log=lines.append)
    chosen = next(line for line in lines if line.startswith("amp auto: "))
    # both precisions in both memory layouts timed (an option twice as slow as the fastest is dropped
    # after its first timed step, but still reported)
    timed = chosen.split("seconds per training step on this CPU: ")[1].rstrip(")").split(", ")
    assert [t.rsplit(" ", 1)[0] for t in timed] == ["off", "bf16", "off channels-last", "bf16 channels-last"]
    meta = load_checkpoint(list_checkpoints(out / "checkpoints")[0][1])[1]
    assert chosen.startswith(f"amp auto: {meta['amp']}; channels-last auto: {meta['channels_last']} (")
    resumed = subprocess.run([sys.executable, "train.py", "--resume", str(out), "--epochs", "2", "--no-progress"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"amp {meta['amp']} (as the run being resumed chose on this CPU)" in resumed.stdout
    assert f"channels-last {meta['channels_last']} (as the run being resumed chose on this CPU)" in resumed.stdout
    assert "auto:" not in resumed.stdout


def test_channels_last_auto_times_the_layouts_in_the_precision_given(tmp_path):
    from mtan.train.engine import Engine

    lines = []
    cfg = apply_preset(None, dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625,
                                  batch_size=4, epochs=1, amp="off", out=str(tmp_path / "run"), progress=False))
    engine = Engine(cfg, log=lines.append)
    chosen = next(line for line in lines if "auto: " in line)
    assert chosen.startswith("channels-last auto: ") and "amp auto" not in chosen
    timed = chosen.split("seconds per training step on this CPU: ")[1].rstrip(")").split(", ")
    assert [t.rsplit(" ", 1)[0] for t in timed] == ["off", "off channels-last"]
    assert engine.amp_dtype is None
    layout = torch.channels_last if engine.channels_last else torch.contiguous_format
    convs = [m.weight for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=layout) for w in convs)
    assert chosen.startswith(f"channels-last auto: {'on' if engine.channels_last else 'off'} (")
    batch = next(engine._batches(engine.train_data, 4, 0, False))
    assert batch["image"].is_contiguous(memory_format=layout)
    fixed = apply_preset(None, dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625,
                                    batch_size=4, epochs=1, amp="off", channels_last="off",
                                    out=str(tmp_path / "fixed"), progress=False))
    quiet = []
    assert not Engine(fixed, log=quiet.append).channels_last and not any("auto: " in line for line in quiet)


def test_evaluate_scores_any_size_and_as_the_app_does(tmp_path):
    from mtan.evaluate import evaluate
    from mtan.inference import PhotoView

    torch.manual_seed(0)
    model = MTAN(preset_tasks("cityscapes-7"), width=0.0625).eval()
    x = torch.rand(2, 3, 45, 70)  # no multiple of 32
    native = PhotoView(model)(x)
    assert native["semantic"].shape == (2, 7, 45, 70) and native["depth"].shape == (2, 1, 45, 70)
    padded = model.predict(x)
    assert torch.allclose(native["semantic"], padded["semantic"], atol=1e-5)
    app = PhotoView(model, (32, 32))(x)  # fitted inside 32x32 (20x32), brought back to 45x70
    assert app["semantic"].shape == (2, 7, 45, 70)
    result = evaluate(model, "synthetic", size="40x72", frames=4, batch_size=2)
    assert {"semantic.miou", "semantic.iou.flat", "semantic.iou.vehicle", "depth_order.roughness"} <= set(result)
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "confusion.json"
    cli = subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(tmp_path / "m"), "--data", "synthetic",
                          "--size", "40x72", "--frames", "4", "--app-resolution", "32x64", "--confusion", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    table = json.loads(out.read_text())["semantic"]
    assert 0 < sum(map(sum, table["matrix"])) <= 4 * 40 * 72  # every labelled pixel of the 4 frames, once
    printed = json.loads(cli.stdout)
    assert "semantic.iou.sky" in printed
    matrix = table["matrix"]  # rows: labels, columns: predictions
    for i, name in enumerate(table["classes"]):
        called, labelled = sum(row[i] for row in matrix), sum(matrix[i])
        if called and labelled:
            assert printed[f"semantic.precision.{name}"] == pytest.approx(matrix[i][i] / called)
            assert printed[f"semantic.called_vs_labelled.{name}"] == pytest.approx(called / labelled)


@pytest.mark.slow
def test_gpu_recipe_runs_in_tiny_form_and_writes_a_release_folder(tmp_path):
    run, folder = tmp_path / "run", tmp_path / "model"
    result = subprocess.run([sys.executable, "recipes/street_gpu.py", "--tiny", "--out", str(run), "--release",
                             str(folder)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run / "train_config.json").read_text())
    assert config["preset"] == "street" and config["data"]["photometric"] and config["data"]["scale_range"] == "0.5,2.0"
    assert (folder / "model.safetensors").is_file() and "python recipes/street_gpu.py --tiny" in (
        folder / "README.md").read_text()
    assert MTAN.from_pretrained(folder).width == 0.0625


@pytest.mark.slow
def test_ablation_trains_each_variant_once_and_prints_the_table(tmp_path):
    args = [sys.executable, "recipes/ablation.py", "--tiny", "--only", "full,paper", "--out", str(tmp_path)]
    first = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "| full |" in first.stdout and "| paper |" in first.stdout and "app 128x256" in first.stdout
    paper = json.loads((tmp_path / "paper" / "train_config.json").read_text())
    full = json.loads((tmp_path / "full" / "train_config.json").read_text())
    assert paper["data"]["scale_range"] is None and not paper["data"]["photometric"] and paper["optim"]["schedule"] == "step"
    assert full["data"]["scale_range"] == "0.5,2.0" and full["data"]["photometric"]
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[full]" not in again.stdout  # nothing trained again
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert set(rows) == {"full", "paper"} and "semantic.iou.flat" in rows["full"]["native"]


def test_depth_occlusion_reads_the_segmentation_labels_of_the_batch(tmp_path):
    """``--depth-occlusion W``: the depth loss of a training step is the L1 loss plus W times the
    occlusion term on that batch's segmentation labels; a single-task depth network reads them from
    the data too; data without street classes is refused before training, naming the option."""
    from mtan.losses import depth_loss, occlusion_order_loss
    from mtan.tasks import CITYSCAPES_7
    from mtan.train.engine import Engine

    def engine(**changes):
        settings = dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625, batch_size=4,
                        epochs=1, amp="off", channels_last="off", depth_occlusion=0.5, out=str(tmp_path / "run"),
                        progress=False)
        cfg = apply_preset(None, {**settings, **changes})
        return Engine(cfg, log=lambda *a: None)

    # (--depth-sky alone reads the labels too, and adds the sky pairs with its own weight)
    for e, ids, weight in ((engine(), CITYSCAPES_7.occlusion_ids(), 0.5),
                           (engine(arch="single", task="depth"), CITYSCAPES_7.occlusion_ids(), 0.5),
                           (engine(depth_occlusion=0.0, depth_sky=0.25), CITYSCAPES_7.sky_ids(), 0.25)):
        batch = e._prepare(next(e._batches(e.train_data, 4, 0, False)))
        with torch.no_grad():
            outputs = e.model(batch["image"])
            losses, _ = e._task_losses(outputs, batch)
        pred, target = outputs["depth"], batch["depth"]
        term = occlusion_order_loss(pred, batch["semantic"], *ids, target=target)
        assert float(term) > 0
        assert float(losses["depth"]) == pytest.approx(float(depth_loss(pred, target) + weight * term), rel=1e-5)

    # an indoor dataset (NYUv2's release format, tiny): no class says what stands in front
    root = tmp_path / "nyuv2"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for folder, make in {"image": lambda: rng.random((32, 64, 3), dtype=np.float32),
                             "label": lambda: rng.integers(-1, 13, (32, 64)).astype(np.float32),
                             "depth": lambda: rng.random((32, 64, 1), dtype=np.float32) + 0.5,
                             "normal": lambda: np.tile(np.float32([0, 0, 1]), (32, 64, 1))}.items():
            (root / split / folder).mkdir(parents=True)
            for i in range(4):
                np.save(root / split / folder / f"{i}.npy", make())
    with pytest.raises(ValueError, match="--depth-occlusion needs street segmentation labels"):
        engine(data="nyuv2", data_root=str(root))
    with pytest.raises(ValueError, match="--depth-occlusion and --depth-sky need"):
        engine(data="nyuv2", data_root=str(root), depth_sky=0.1)


def test_copy_paste_runs_in_the_training_batches_and_names_its_classes(tmp_path):
    """``--copy-paste object``: the engine's augmented training batches are those without it but
    for pasted object pixels (labelled object, no depth there); an unknown class name is refused
    before training, with the class set's names."""
    from mtan.train.engine import Engine

    def engine(**changes):
        settings = dict(data="synthetic", size="32x64", train_frames=8, val_frames=4, width=0.0625, batch_size=8,
                        epochs=1, amp="off", channels_last="off", augment=True, out=str(tmp_path / "run"),
                        progress=False)
        return Engine(apply_preset(None, {**settings, **changes}), log=lambda *a: None)

    pasted, plain = engine(copy_paste="object"), engine()
    assert pasted.paste_ids == (2,) and plain.paste_ids == ()
    a = next(pasted._batches(pasted.train_data, 8, 0, True))
    b = next(plain._batches(plain.train_data, 8, 0, True))
    changed = a["semantic"] != b["semantic"]
    assert changed.any()
    assert (a["semantic"][changed] == 2).all() and (a["depth"][:, 0][changed] == 0).all()
    assert torch.equal(a["semantic"][~changed], b["semantic"][~changed])
    with pytest.raises(ValueError, match="--copy-paste lamp: lamp is not a class of cityscapes-7 .*object"):
        engine(copy_paste="lamp")
