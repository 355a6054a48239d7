"""What the trainer, the evaluator and the app's prediction give on fixed inputs.

    python tests/pinned_outputs.py OUT.json    # writes the figures

``tests/data/pinned_outputs.json`` holds them as this code gave them before its files were
reorganised; ``tests/test_pinned.py`` computes them again and compares, so a change of layout
that changes behaviour shows. Every input is fixed: seeded weights, seeded generated scenes, an
example photo. The trainer's run uses the street recipe's options (zoom both ways with crops,
photometric augmentation, class weights, label smoothing, depth smoothness, AdamW and cosine)
so that each task's training options are exercised.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mtan import MTAN, preset_tasks  # noqa: E402


def _seeded_model(arch: str = "mtan") -> MTAN:
    torch.manual_seed(0)
    model = MTAN(preset_tasks("cityscapes-7"), arch=arch, width=1 / 16)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding them is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def trainer(folder: Path) -> dict:
    from mtan.train import apply_preset, train

    config = apply_preset("street", dict(
        data="synthetic", size="64x96", crop="32x64", train_frames=16, val_frames=8, width=1 / 16, batch_size=4,
        epochs=2, warmup_epochs=0.5, eval_every=1, out=str(folder / "run"), progress=False, amp="off",
        channels_last="off", pseudo_depth=False, data_workers=0))
    history = train(config, log=lambda *a, **k: None)
    return {f"epoch{r['epoch']}.{part}.{k}": v for r in history for part in ("train", "val")
            for k, v in (r[part].items() if part == "train" else r[part]["synthetic"].items())
            if isinstance(v, float) and "." in k and k.split(".")[1] in ("semantic", "depth", "miou", "abs_err",
                                                                          "rel_err", "pixel_acc")}


def evaluator() -> dict:
    from mtan.evaluate import evaluate

    out = {}
    for name, kwargs in (("native", {}), ("app", {"app_resolution": "64x128"}), ("flip", {"flip": True})):
        result = evaluate(_seeded_model(), "synthetic", size="96x128", frames=8, device="cpu", **kwargs)
        out.update({f"{name}.{k}": v for k, v in result.items() if isinstance(v, float)
                    and k in ("semantic.miou", "semantic.pixel_acc", "depth.abs_err", "depth.rel_err")})
    return out


def app_prediction() -> dict:
    from PIL import Image

    from mtan.serve import LoadedModel, predict_photo
    from mtan.serve.downloads import write_downloads

    photo = Image.open(REPO / "examples" / "street_01.jpg").convert("RGB")
    loaded = LoadedModel("pinned", "pinned", _seeded_model())
    out = {}
    for flip in (False, True):
        pred = predict_photo(loaded, photo, (128, 256), stem="street_01", flip=flip)
        labels, depth = pred.labels["semantic"], pred.depth["depth"]
        shares = np.bincount(labels.ravel(), minlength=7) / labels.size
        key = "mirrored" if flip else "plain"
        out.update({f"{key}.share.{i}": float(s) for i, s in enumerate(shares)})
        out[f"{key}.depth.mean"] = float(depth.mean())
        out[f"{key}.depth.std"] = float(depth.std())
        masks = pred.masks["semantic"]["encoder"]
        out[f"{key}.mask.encoder0.mean"] = float(masks[0].astype(np.float64).mean() / 255)
        with tempfile.TemporaryDirectory() as d:
            files, _ = write_downloads(pred, d, "pinned")
            out[f"{key}.files"] = sorted(Path(f).name for f in files)
    return out


def pinned_outputs() -> dict:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        return {"trainer": trainer(Path(d)), "evaluator": evaluator(), "app": app_prediction()}


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(pinned_outputs(), indent=1, sort_keys=True) + "\n")
